"""Load a model by name, with its preprocessing, class names and a default layer:
``reference``, ``efficientnet_lite0``, ``world:NAME[:ARCH]`` (the models of the ground-truth
worlds), ``torchvision:NAME``, ``timm:NAME``, ``open_clip:NAME``.

Weights come from a local file (``--weights PATH``: safetensors, or a torch checkpoint read with
``weights_only=True``), from a package that ships them (the reference CNN, EfficientNet-Lite0),
or — for a user who is online — from the library's hub (``--weights DEFAULT`` for torchvision,
``--weights pretrained`` for timm, an open_clip tag such as ``openai``). A hub request that
fails offline raises an error that says how to pass a local file instead. ``weights='random'``
builds a torchvision/timm/open_clip network as initialised, on purpose; without ``weights`` those
models are refused (a randomly initialised network's explanation means nothing). A local copy of a torchvision ImageNet classifier gets
torchvision's class names (shipped with torchvision, no download).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._torchutils import leaves_global_rng
from ._bundle import IMAGENET_MEAN, IMAGENET_STD, ModelBundle, Normalize, from_pretrained

#: ``weights`` that asks for a torchvision/timm/open_clip network as initialised (random).
RANDOM_WEIGHTS = "random"

#: How each hub family's own weights are asked for (downloaded), for messages.
HUB_WEIGHTS = {"torchvision": "`weights='DEFAULT'` (torchvision's, downloaded)",
               "timm": "`weights='pretrained'` (timm's, downloaded)",
               "open_clip": "an open_clip tag such as `weights='openai'` (downloaded)"}


def _require_weights(family: str, name: str, weights: str | None) -> None:
    """Refuse a hub model without ``weights``: it would be randomly initialised, and explaining
    it means nothing unless that is asked for (``weights='random'``)."""
    if weights is None:
        raise ValueError(f"`weights` is required for '{family}:{name}': without it the network "
                         f"is randomly initialised and its explanation means nothing. Give a "
                         f"local weights file (.safetensors or a .pt/.pth state dict), "
                         f"{HUB_WEIGHTS[family]}, or `weights='random'` for the random network "
                         f"on purpose.")


class OfflineWeightsError(ConnectionError):
    """Hub weights were requested but could not be downloaded."""


def _offline_error(what: str, err: Exception) -> OfflineWeightsError:
    return OfflineWeightsError(
        f"could not download the weights of {what} ({type(err).__name__}: {str(err)[:200]}). "
        f"This machine looks offline. Download the weights on a machine with internet access, "
        f"copy the file here and pass it with `--weights /path/to/file` (.safetensors, or a "
        f".pt/.pth state dict); for open_clip a local checkpoint path works the same way.")


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` file or a torch checkpoint (no pickle code).

    A file that holds a pickled object rather than tensors (a whole ``nn.Module`` saved with
    ``torch.save(model)``, or any other pickle) is refused without being unpickled, and so is a
    state dict with NaN or Inf values (a model with them computes NaN).
    """
    path = existing_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return _finite(load_file(str(path)), path)
        state = _torch_load(path)
    except _NonFinite:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors, pickle and zip errors alike
        raise _unreadable(path, err) from err
    for key in ("state_dict", "model"):  # training checkpoints: {"model": ..., "epoch": 3}
        if isinstance(state, dict) and isinstance(state.get(key), dict) and all(
                isinstance(v, torch.Tensor) for v in state[key].values()):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"`weights` {str(path)!r} does not hold a state dict.")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    return _finite(state, path)


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (no pickle code runs), without torch's own
    warnings about the file (its pickle protocol ...): an error says what matters, in the
    library's words (:func:`_unreadable`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=True)


#: How torch says that ``weights_only=True`` refused what a checkpoint holds.
_WEIGHTS_ONLY_FAILED = "Weights only load failed"


def _unreadable(path: Path, err: Exception) -> ValueError:
    """The error for a weights file that cannot be read, in the library's words: a pickled
    object (which torch's safe loader refuses) is said as such, without torch's advice to load
    it unsafely; any other failure names its cause on one line."""
    import pickle

    if path.suffix != ".safetensors" and (isinstance(err, pickle.UnpicklingError)
                                          or _WEIGHTS_ONLY_FAILED in str(err)):
        if _pickled(path):
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            holds = f", here a `{found.group(1)}`" if found else ""
            return ValueError(
                f"`weights` {str(path)!r} is not a plain state dict (a pickled object{holds}, "
                f"which conceptkit does not unpickle: it can run code); save "
                f"`model.state_dict()` with torch.save, or a .safetensors file.")
        return ValueError(f"`weights` {str(path)!r} cannot be read as a torch state dict: it is "
                          f"neither a file written by torch.save nor a .safetensors file "
                          f"(damaged, or another format).")
    kind = "a .safetensors file" if path.suffix == ".safetensors" else "a torch state dict"
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            return ValueError(f"`weights` {str(path)!r} is an empty file; give {kind}.")
    cause = " ".join(_ANSI.sub("", str(err)).split())
    cause = f"{type(err).__name__}: {cause}" if cause else type(err).__name__
    if len(cause) > 300:
        cause = cause[:300].rsplit(" ", 1)[0] + " ..."
    return ValueError(f"`weights` {str(path)!r} cannot be read as {kind} ({cause}).")


#: Terminal escape sequences (torch's errors embolden their advice).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _pickled(path: Path) -> bool:
    """Whether ``path`` is a file of ``torch.save`` (a zip archive) or a pickle (protocol 2 or
    later): what holds a pickled object, rather than garbage."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return False
    return head.startswith((b"PK\x03\x04", b"\x80"))


class _NonFinite(ValueError):
    """Weights with NaN or Inf values (see :func:`_finite`)."""


def _finite(state: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """``state`` itself, after checking that its floating-point tensors hold no NaN or Inf: a
    model with such weights computes NaN, and every error after loading would blame something
    else (the images, the split of the model, a training set)."""
    bad = [key for key, value in state.items() if isinstance(value, torch.Tensor)
           and (value.is_floating_point() or value.is_complex())
           and not bool(torch.isfinite(value).all())]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise _NonFinite(f"`weights` {str(path)!r} holds NaN or Inf values in {bad[0]!r}{more}: "
                         f"a model with them computes NaN or Inf, and its explanation would mean "
                         f"nothing. Give weights with finite values (a training run that "
                         f"diverged saves such weights).")
    return state


def load_weights(model: nn.Module, weights: str | os.PathLike, spec: str) -> None:
    """Load a local weights file into ``model``; a file for another architecture is refused
    with a message naming ``--weights``."""
    state = load_state(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"`--weights` {str(weights)!r} does not fit {spec}: "
                         f"{' '.join(first[:3])[:300]}") from err


def _torchvision(name: str, weights: str | None) -> ModelBundle:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {name!r}; see torchvision.models.list_models().")
    _require_weights("torchvision", name, weights)
    labels: list[str] = []
    if weights is not None and weights.upper() == "DEFAULT":
        try:
            enum = torchvision.models.get_model_weights(name).DEFAULT
            model = torchvision.models.get_model(name, weights=enum)
            labels = list(enum.meta.get("categories", []))
        except Exception as err:  # noqa: BLE001 - any download failure
            raise _offline_error(f"torchvision:{name}", err) from err
    else:
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None and not _random(weights):
            load_weights(model, weights, f"torchvision:{name}")
            # a local copy of torchvision's classifier: the class names ship with torchvision
            # (no download); only when they fit the network's outputs
            labels = _torchvision_categories(torchvision, name, model)
    return ModelBundle(model.eval(), f"torchvision:{name}", 224, Normalize(IMAGENET_MEAN, IMAGENET_STD),
                       labels, _torchvision_layer(model))


def _random(weights: str | None) -> bool:
    """``weights='random'`` (not an existing file): the network as initialised, asked for on
    purpose."""
    return weights is not None and weights.lower() == RANDOM_WEIGHTS and not Path(weights).exists()


def _torchvision_categories(torchvision: Any, name: str, model: nn.Module) -> list[str]:
    """The class names of torchvision's weights for ``name`` (in the weights enum, offline),
    when there are as many as the model has outputs; else none."""
    try:
        categories = list(torchvision.models.get_model_weights(name).DEFAULT.meta
                          .get("categories") or [])
    except Exception:  # noqa: BLE001 - a model without registered weights
        return []
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not categories or not last or last[-1].out_features != len(categories):
        return []
    return categories


def _torchvision_layer(model: nn.Module) -> str | None:
    """The default layer of a torchvision model: ``layer4`` (ResNets), ``permute`` for the Swin
    transformers (their ``features`` are channels-last (N, H, W, C); ``permute`` gives the
    normalised last stage as (N, C, H, W)), else ``features`` (VGG, MobileNet, EfficientNet,
    ConvNeXt, DenseNet ...)."""
    if hasattr(model, "layer4"):
        return "layer4"
    permute = getattr(model, "permute", None)
    if type(permute).__name__ == "Permute" and list(getattr(permute, "dims", [])) == [0, 3, 1, 2]:
        return "permute"
    return "features" if hasattr(model, "features") else None


def _timm(name: str, weights: str | None) -> ModelBundle:
    import timm
    from timm.data import resolve_data_config

    pretrained = weights is not None and weights.lower() == "pretrained"
    if ":" not in name and not timm.is_model(name):  # a typo is not a network problem
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models().")
    _require_weights("timm", name, weights)
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as err:  # noqa: BLE001
        if pretrained:
            raise _offline_error(f"timm:{name}", err) from err
        raise
    if weights is not None and not pretrained and not _random(weights):
        load_weights(model, weights, f"timm:{name}")
    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    layer = "layer4" if hasattr(model, "layer4") else ("bn2" if hasattr(model, "bn2") else None)
    return ModelBundle(model.eval(), f"timm:{name}", size, Normalize(config["mean"], config["std"]),
                       [], layer)


def _open_clip(name: str, weights: str | None) -> ModelBundle:
    import open_clip

    _require_weights("open_clip", name, weights)
    if _random(weights):
        weights = None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
    except RuntimeError as err:
        if weights is not None and not Path(weights).exists():
            raise _offline_error(f"open_clip:{name} ({weights})", err) from err
        raise
    visual = model.visual
    if weights is not None and Path(weights).is_file():  # a local checkpoint open_clip read
        _finite(visual.state_dict(), weights)
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    layer = "layer4" if hasattr(visual, "layer4") else None
    return ModelBundle(visual.eval(), f"open_clip:{name}", int(size), Normalize(mean, std), [], layer)


@leaves_global_rng
def load(spec: str, weights: str | None = None) -> ModelBundle:
    """Load the model named ``spec`` (see the module docstring) with optional local ``weights``.

    Returns a :class:`ModelBundle`: model, preprocessing, class names and a default layer.
    """
    from ..datasets import CLASS_NAMES, reference_model

    if not isinstance(spec, str):
        raise TypeError(f"`spec` must be a model name such as 'reference' or "
                        f"'timm:vit_tiny_patch16_224'; got {type(spec).__name__}.")
    if weights is not None:
        weights = check_weights_path(weights)
    if spec == "reference":
        from ..io import FormatError

        model = None
        if weights is not None:
            existing_file(weights)
            try:  # a file of train_reference records its architecture (e.g. --width 8)
                model = reference_model(path=weights)
            except FormatError:
                model = None  # a plain state dict for the shipped architecture
            else:
                _finite(model.state_dict(), weights)
        if model is None:
            model = reference_model()
            if weights is not None:
                load_weights(model, weights, "the reference CNN")
        return ModelBundle(model, "reference CNN", 64, None, list(CLASS_NAMES), "block4")
    if spec == "efficientnet_lite0":
        from ..datasets import efficientnet_lite0

        bundle = from_pretrained(efficientnet_lite0())
        if weights is not None:  # a fine-tuned copy of the packaged network
            load_weights(bundle.model, weights, "efficientnet_lite0")
        return bundle
    family, _, name = spec.partition(":")
    if family == "world" and name:
        return _world(name, weights)
    loaders = {"torchvision": _torchvision, "timm": _timm, "open_clip": _open_clip}
    if family not in loaders or not name:
        raise ValueError(f"`spec` must be 'reference', 'efficientnet_lite0', 'world:NAME' (a "
                         f"ground-truth world: shapes, textures, scales, context; "
                         f"'world:NAME:ARCH' for another of its models), 'torchvision:NAME', "
                         f"'timm:NAME' or 'open_clip:NAME'; got {spec!r}.")
    return loaders[family](name, weights)


def _world(spec: str, weights: str | None) -> ModelBundle:
    """The model trained on a ground-truth world (``textures`` or ``textures:resnet``), with the
    world's class names and layer; the worlds' models take images in [0, 1] as they are."""
    from ..datasets import load_world
    from ..io import FormatError

    name, _, arch = spec.partition(":")
    world = load_world(name)
    record = None
    if weights is not None:
        existing_file(weights)  # load() has made it a path string
        if world._reference_file(weights, arch or None):  # train_world --world shapes
            record = {"architecture": world.spec(arch or None).architecture,
                      "layer": world.spec(arch or None).layer}
        else:
            try:  # a file of train_world records its world, architecture, settings and layer
                record = world.info(arch or None, weights=weights)
            except FormatError:
                if _is_world_file(weights):
                    raise  # a world-model file whose record is damaged is not a plain state dict
                record = None  # a plain state dict for the world's (or the named) architecture
    if record is not None:  # the file says what it is (another world's file is refused)
        model = world.model(arch or None, weights=weights)
        if weights is not None:
            _finite(model.state_dict(), weights)
        arch, layer = record["architecture"], record["layer"]
    else:
        arch = arch or world.architecture
        model = world.model(arch)
        layer = world.spec(arch).layer
        if weights is not None:
            load_weights(model, weights, f"world:{name}:{arch}")
    return ModelBundle(model, f"{name} world {arch}", int(world.image_size), None,
                       list(world.class_names), layer)


def _is_world_file(weights: str | os.PathLike) -> bool:
    """Whether ``weights`` is a conceptkit world-model file (``train_world``), damaged or not."""
    from ..datasets._world import WORLD_WEIGHTS_KIND
    from ..io import FormatError, peek_kind

    try:
        return peek_kind(weights)[0] == WORLD_WEIGHTS_KIND
    except (FormatError, OSError, ValueError):
        return False


def existing_file(weights: str | os.PathLike) -> Path:
    """``weights`` as the path of an existing file, or an error naming ``weights``."""
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"`weights` {str(path)!r} does not exist.")
    if not path.is_file():
        raise ValueError(f"`weights` {str(path)!r} is not a file (a .safetensors file or a "
                         f".pt/.pth state dict).")
    return path


def check_weights_path(weights: Any) -> str:
    """``weights`` as a path string: a str or os.PathLike (a number or other object is
    refused, naming the argument)."""
    if isinstance(weights, os.PathLike):
        return os.fspath(weights)
    if not isinstance(weights, str):
        raise TypeError(f"`weights` must be a path (str or os.PathLike) or None; got "
                        f"{type(weights).__name__}.")
    return weights

