"""Ground-truth worlds: a generator of images with known parts, and models trained on it.

:func:`load_world` gives a :class:`World`; ``world.sample(...)`` draws a
:class:`ConceptDataset` (images, labels, per-part masks) and ``world.model()`` loads the shipped
weights of a model trained on that world (safetensors, never pickle).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._torchutils import leaves_global_rng
from .._validation import check_choice, check_int
from ..io import FormatError
from . import _context, _generate, _scales, _textures
from ._architectures import ARCHITECTURES, build_model
from ._dataset import ConceptDataset, check_dataset_memory
from ._parts import CONCEPT_NAMES

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WORLD_WEIGHTS_KIND = "world_model"
#: the format version :func:`train_world_model`'s files are written with: 2 since every such
#: file carries a content digest (version 1, conceptkit 0.1.0 and the shipped files, may lack it)
WORLD_WEIGHTS_VERSION = 2
#: the format versions this conceptkit reads, the newest last
WORLD_WEIGHTS_VERSIONS = (1, 2)
WORLDS: tuple[str, ...] = ("shapes", "textures", "scales", "context")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ModelSpec:
    """One trained model of a world: architecture, its settings, the layer to explain, training."""

    architecture: str
    config: dict[str, Any]
    layer: str
    training: dict[str, Any]

    def is_reference(self, world: str) -> bool:
        """Whether this is the shapes world's reference CNN (its own module, weights, trainer)."""
        return world == "shapes" and self.architecture == "cnn"

    def weights_path(self, world: str) -> Path:
        if self.is_reference(world):
            from ._reference import WEIGHTS_PATH

            return WEIGHTS_PATH
        return WEIGHTS_DIR / f"{world}_{self.architecture}.safetensors"

    def trained_with(self, world: str) -> dict[str, Any]:
        """The training settings the shipped weights were made with: ``epochs``,
        ``n_per_class``, ``lr`` and ``seed`` (the train commands' defaults)."""
        if self.is_reference(world):
            from ._training import _REFERENCE_DEFAULTS

            return {key: _REFERENCE_DEFAULTS[key] for key in ("epochs", "n_per_class", "lr", "seed")}
        return {"epochs": self.training["epochs"], "n_per_class": self.training["n_per_class"],
                "lr": self.training["lr"], "seed": 0}

    def train_command(self, world: str) -> str:
        if self.is_reference(world):
            return "python -m conceptkit.datasets.train_reference"
        return f"python -m conceptkit.datasets.train_world --world {world} --arch {self.architecture}"


@dataclass(frozen=True, eq=False)
class World:
    """A ground-truth world: how its images are drawn, what defines each class, its models.

    Attributes
    ----------
    name : str
        One of :data:`WORLDS`.
    architecture : str
        Architecture of the default model: ``"cnn"``, ``"resnet"`` or ``"vit"``.
    layer : str
        Default layer to explain on the default model, a dotted module name that
        :func:`conceptkit.extraction.split_model` cuts.
    class_names, part_names : list of str
        Human-readable names (``part_names`` are the ``concept_names`` of sampled datasets).
    class_parts : list of list of int
        The causal parts of each class (the class rule is stated in ``description``).
    distractor_parts : list of int
        Parts drawn independently of the class.
    description : str
        The world's rules in words.
    architectures : tuple of str
        Every architecture with shipped weights; the first is the default.
    layers, train_commands : dict
        Per architecture: the layer to explain and the command that reproduces its weights.
    image_size : int
        Side of the square images in pixels.
    """

    name: str
    architecture: str
    layer: str
    class_names: list[str]
    part_names: list[str]
    class_parts: list[list[int]]
    distractor_parts: list[int]
    description: str
    architectures: tuple[str, ...]
    layers: dict[str, str]
    train_commands: dict[str, str]
    image_size: int = 64
    _generate: Callable[..., ConceptDataset] = field(default=None, repr=False)  # type: ignore[assignment]
    _specs: dict[str, ModelSpec] = field(default_factory=dict, repr=False)

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def n_parts(self) -> int:
        """Number of parts (concepts with masks)."""
        return len(self.part_names)

    @property
    def train_command(self) -> str:
        """The shell command that reproduces the default model's weights."""
        return self.train_commands[self.architecture]

    def sample(self, n_per_class: int = 60, seed: int = 0, split: str = "test",
               progress: bool = False) -> ConceptDataset:
        """Draw ``n_per_class`` images of every class (ordered by class), with their masks.

        The same ``(n_per_class, seed, split)`` gives bit-identical tensors; each split draws from
        its own random stream, so splits never share images. In the shapes world the spurious cue
        is correlated with its class in the ``"train"`` and ``"val"`` splits only (as in
        :func:`make_concept_dataset`); the other worlds have no cue.
        """
        n_per_class = check_int(n_per_class, "n_per_class", minimum=1)
        seed = check_int(seed, "seed", minimum=0)
        split = check_choice(split, "split", SPLITS)
        if not isinstance(progress, bool):
            raise TypeError(f"`progress` must be True or False; got {progress!r}.")
        check_dataset_memory(n_per_class, self.n_classes, self.n_parts, self.image_size)
        return self._generate(n_per_class, seed=seed, split=split, progress=progress)

    def spec(self, arch: str | None = None) -> ModelSpec:
        """The :class:`ModelSpec` of ``arch`` (default: the world's default architecture).

        It is this World's own copy: editing its ``config`` or ``training`` changes what this
        World builds and trains, never another World, and :meth:`shipped` then says False."""
        arch = self.architecture if arch is None else check_choice(arch, "arch", self.architectures)
        return self._specs[arch]

    def training_spec(self, arch: str | None = None,
                      config: dict[str, Any] | None = None) -> ModelSpec:
        """The :class:`ModelSpec` to train ``arch`` on this world with: the shipped model's
        settings, or, for an architecture this world does not ship (``"resnet"`` or ``"vit"``),
        the settings of that architecture in the other worlds with this world's class count;
        ``config`` overrides architecture settings (e.g. ``{"patch_size": 4}``)."""
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"`config` must be a dict of architecture settings or None; got "
                            f"{type(config).__name__}.")
        if arch is None or arch in self.architectures:
            spec = self.spec(arch)
        else:
            arch = check_choice(arch, "arch", tuple(_GENERIC))
            generic = _GENERIC[arch]
            spec = ModelSpec(arch, {**generic.config, "n_classes": self.n_classes}, generic.layer,
                             dict(generic.training))
        if config:
            unknown = sorted(set(config) - set(spec.config) - {"n_classes"})
            if unknown or config.get("n_classes", self.n_classes) != self.n_classes:
                raise ValueError(f"`config` may set {sorted(set(spec.config) - {'n_classes'})} "
                                 f"of the {spec.architecture!r} architecture (n_classes is the "
                                 f"world's); got {sorted(config)}.")
            spec = ModelSpec(spec.architecture, {**spec.config, **config}, spec.layer,
                             dict(spec.training))
        return spec

    def shipped(self, arch: str | None, config: dict[str, Any] | None = None, *,
                epochs: int | None = None, n_per_class: int | None = None,
                lr: float | None = None, seed: int | None = 0) -> bool:
        """Whether training ``arch`` with ``config`` and these training settings reproduces a
        shipped model of this world: the same architecture settings and the same ``epochs``,
        ``n_per_class``, ``lr`` and ``seed`` (``None``: this World's setting) as conceptkit's
        record of that model (not this World's copy of the settings, which may be edited)."""
        return not self.unshipped_settings(arch, config, epochs=epochs, n_per_class=n_per_class,
                                           lr=lr, seed=seed)

    def unshipped_settings(self, arch: str | None, config: dict[str, Any] | None = None, *,
                           epochs: int | None = None, n_per_class: int | None = None,
                           lr: float | None = None, seed: int | None = 0) -> list[str]:
        """What differs from a shipped model of this world, in words (empty: nothing does)."""
        if arch is not None and arch not in self.architectures:
            return [f"arch={arch!r} (shipped: {', '.join(self.architectures)})"]
        own, spec = self.spec(arch), self._shipped_spec(arch)
        if spec is None:
            return [f"arch={own.architecture!r} (the {self.name!r} world ships no such model)"]
        made = dict(self.training_spec(arch, config).config)
        differ = [f"{key}={made.get(key)!r} (shipped {spec.config.get(key)!r})"
                  for key in sorted(set(spec.config) | set(made))
                  if made.get(key) != spec.config.get(key)]
        given = {"epochs": epochs, "n_per_class": n_per_class, "lr": lr, "seed": seed}
        this = own.trained_with(self.name)  # this World's settings (its spec may be edited)
        for key, value in spec.trained_with(self.name).items():
            setting = this[key] if given[key] is None else given[key]
            if setting != value:
                differ.append(f"{key}={setting!r} (shipped {value!r})")
        for key in sorted(set(spec.training) | set(own.training)):  # batch size, weight decay...
            if key not in given and own.training.get(key) != spec.training.get(key):
                differ.append(f"{key}={own.training.get(key)!r} (shipped "
                              f"{spec.training.get(key)!r})")
        return differ

    def _shipped_spec(self, arch: str | None) -> ModelSpec | None:
        """The settings the shipped model of ``arch`` was made with: the module's own (never a
        World's copy, which a user may edit), or this World's for a world conceptkit does not
        register (one built for a check)."""
        arch = self.architecture if arch is None else arch
        if self.name not in _TABLE:
            return self._specs.get(arch)
        return next((s for s in _TABLE[self.name][2] if s.architecture == arch), None)

    @leaves_global_rng
    def model(self, arch: str | None = None, pretrained: bool = True,
              weights: str | os.PathLike | None = None) -> nn.Module:
        """The model trained on this world, in eval mode, loaded from the shipped safetensors.

        Parameters
        ----------
        arch : str, optional
            One of :attr:`architectures`; default :attr:`architecture`.
        pretrained : bool
            With False, a freshly (randomly) initialised model of the same architecture.
        weights : path, optional
            A file written by ``python -m conceptkit.datasets.train_world --out PATH`` for this
            world (e.g. an architecture or settings it does not ship), loaded instead of the
            shipped weights; its architecture and settings are read from the file
            (:meth:`info` with ``weights`` gives its layer and record).
        """
        if not isinstance(pretrained, bool):
            raise TypeError(f"`pretrained` must be True or False; got {pretrained!r}.")
        if weights is not None:
            if not pretrained:
                raise ValueError("pass `weights` with pretrained=True (a file is a trained model).")
            if self._reference_file(weights, arch):  # train_world --world shapes (a width)
                from ._reference import reference_model

                self._reference_record(weights)  # checked before the model is built
                return reference_model(path=weights)
            state, meta = self._weights_file(weights, arch)
        else:
            spec = self.spec(arch)
            if spec.is_reference(self.name):
                from ._reference import reference_model

                if pretrained:
                    return reference_model(pretrained=True)
            if not pretrained:  # the same initial weights on every call (on the generator
                # this method forks, see @leaves_global_rng; the reference CNN seeds itself)
                if spec.is_reference(self.name):
                    return reference_model(pretrained=False)
                torch.manual_seed(0)
                return build_model(spec.architecture, dict(spec.config)).eval()
            state, meta = _load(spec.weights_path(self.name), spec.train_command(self.name))
        model = build_model(meta["architecture"], meta["config"])
        model.load_state_dict(state, strict=True)
        return model.eval()

    def info(self, arch: str | None = None,
             weights: str | os.PathLike | None = None) -> dict[str, Any]:
        """What the shipped weights (or the file ``weights``) record: settings, layer, held-out
        accuracy, part reliance, versions, timing. The shapes world's CNN (and a file of
        ``train_reference``) has the reference CNN's record instead (:func:`reference_info`:
        architecture, dataset, training, accuracy, spurious-cue effects; no reliance, versions
        or layer)."""
        if weights is not None:
            if self._reference_file(weights, arch):  # what model(weights=...) loads, too
                return self._reference_record(weights)
            return self._weights_file(weights, arch)[1]
        spec = self.spec(arch)
        if spec.is_reference(self.name):
            from ._reference import reference_info

            return reference_info()
        return _load(spec.weights_path(self.name), spec.train_command(self.name))[1]

    def _reference_file(self, weights: Any, arch: str | None) -> bool:
        """Whether ``weights`` is a reference-CNN file (``train_reference``, which ``train_world
        --world shapes`` runs) for this world's reference architecture."""
        from ..io import peek_kind
        from ._reference import WEIGHTS_KIND

        if not isinstance(weights, (str, os.PathLike)):
            return False
        try:
            if not self.spec(arch).is_reference(self.name):
                return False
        except ValueError:  # an architecture the world does not ship: not the reference CNN
            return False
        try:
            return peek_kind(weights)[0] == WEIGHTS_KIND
        except (OSError, ValueError):
            return False  # not a readable conceptkit file: _weights_file says why

    def _reference_record(self, weights: str | os.PathLike) -> dict[str, Any]:
        """The record of a reference-CNN file, once its tensors are known to be what the record
        describes (on the meta device) and the model to have this world's class count."""
        from ._reference import _load as load_reference
        from ._reference import checked_architecture

        state, meta = load_reference(weights, "weights")
        architecture = checked_architecture(weights, state, meta, "weights")
        classes = architecture.get("n_classes", _default_classes("cnn"))
        if classes != self.n_classes:
            raise ValueError(f"`weights` {os.fspath(weights)!r} holds a model with {classes} "
                             f"classes; the {self.name!r} world has {self.n_classes}.")
        return meta

    def _weights_file(self, weights: Any, arch: str | None) -> tuple[dict[str, torch.Tensor],
                                                                    dict[str, Any]]:
        if not isinstance(weights, (str, os.PathLike)):
            raise TypeError(f"`weights` must be a path or None; got {type(weights).__name__}.")
        path = Path(weights)
        state, meta = _load(path, f"python -m conceptkit.datasets.train_world --world {self.name} "
                                  f"--arch ARCH --out {os.fspath(path)}" if self.name in WORLDS
                            else "conceptkit.datasets.train_world_model(world, arch) and "
                                 "conceptkit.io.save_file", "weights")
        if (meta.get("architecture") not in ARCHITECTURES or not isinstance(meta.get("config"), dict)
                or not isinstance(meta.get("layer"), str)):
            raise FormatError(f"`weights` {os.fspath(path)!r} is not a world model file: its record "
                              f"lacks an architecture, settings or layer.")
        if meta.get("world") != self.name:
            raise ValueError(f"`weights` {os.fspath(path)!r} holds a model of the world "
                             f"{meta.get('world')!r}, not of {self.name!r}.")
        if arch is not None and meta.get("architecture") != arch:
            raise ValueError(f"`weights` {os.fspath(path)!r} holds a {meta.get('architecture')!r} "
                             f"model, not `arch` {arch!r}.")
        try:
            # the record's settings are checked against the tensors on the meta device, so a
            # tampered record cannot make :meth:`model` allocate a model of any size
            with torch.device("meta"):
                skeleton = build_model(meta["architecture"], dict(meta["config"]))
            made = skeleton.state_dict()
            if {k: tuple(v.shape) for k, v in made.items()} != {k: tuple(v.shape)
                                                                 for k, v in state.items()}:
                raise ValueError("its tensors are not the ones its settings make")
            if meta["layer"] not in dict(skeleton.named_modules()):
                raise ValueError(f"its layer {meta['layer']!r} is not a module of the model")
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise FormatError(f"`weights` {os.fspath(path)!r} does not hold a model its record "
                              f"describes: {err}") from None
        classes = meta["config"].get("n_classes", _default_classes(meta["architecture"]))
        if classes != self.n_classes:
            raise ValueError(f"`weights` {os.fspath(path)!r} holds a model with {classes} "
                             f"classes; the {self.name!r} world has {self.n_classes}.")
        return state, meta


def _default_classes(architecture: str) -> int:
    """The class count a model of ``architecture`` has when its settings do not give one."""
    import inspect

    from ._architectures import SmallResNet, small_vit
    from ._reference import ReferenceCNN

    builder = {"resnet": SmallResNet, "vit": small_vit, "cnn": ReferenceCNN}[architecture]
    return inspect.signature(builder).parameters["n_classes"].default


@lru_cache(maxsize=8)
def _read(path: str, key: tuple[int, ...], name: str = "path"
          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    # keyed on the path and file_key (times in ns, size, inode): a replaced file is read again
    from ._shipped import load_weights_file

    return load_weights_file(path, kind=WORLD_WEIGHTS_KIND, versions=WORLD_WEIGHTS_VERSIONS,
                             name=name)


def _load(path: Path, command: str, name: str = "path"
          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"world model weights not found at {str(path)!r}. Recreate them "
                                f"with `{command}`.")
    from ._reference import file_key

    tensors, meta = _read(str(path), file_key(path), name)
    return {k: v.clone() for k, v in tensors.items()}, copy.deepcopy(meta)


def _shapes_generate(n_per_class: int, seed: int, split: str, progress: bool) -> ConceptDataset:
    return _generate.make_concept_dataset(n_per_class, 64, seed=seed, split=split, progress=progress)


_RESNET = ModelSpec("resnet", {"n_classes": 4, "width": 16, "n_blocks": 1}, "layer3",
                    {"epochs": 8, "n_per_class": 500, "lr": 3e-3, "weight_decay": 1e-4,
                     "batch_size": 64, "warmup_epochs": 0})
_VIT = ModelSpec("vit", {"n_classes": 4, "embed_dim": 64, "depth": 4, "num_heads": 4,
                         "patch_size": 8, "mlp_ratio": 2.0, "image_size": 64}, "blocks.2",
                 {"epochs": 20, "n_per_class": 500, "lr": 1e-3, "weight_decay": 0.05,
                  "batch_size": 64, "warmup_epochs": 1})
# The same ViT on the shapes world (six classes): a transformer on a world whose classes are the
# joint presence of parts, so that a ViT's explanations are measured apart from the context
# world's relations.
_SHAPES_VIT = ModelSpec("vit", {**_VIT.config, "n_classes": 6}, _VIT.layer, dict(_VIT.training))
# The same ViT on the textures world, with 4 px patches: with 8 px patches it does not learn the
# textures (41.6 % held out); with 4 px patches and 120 epochs it reaches 95.8 %. Its patch tokens
# do not hold the textures (its CLS token does; BENCHMARKS.md), the kind of model issue 13 found
# token explanations weakest on.
_TEXTURES_VIT = ModelSpec("vit", {**_VIT.config, "patch_size": 4}, _VIT.layer,
                          {**_VIT.training, "epochs": 120})

# the settings of an architecture a world does not ship (train_world --arch ... --out PATH)
_GENERIC: dict[str, ModelSpec] = {"resnet": _RESNET, "vit": _VIT}

# name -> (module or constants, description, specs in order: the first is the default)
_TABLE: dict[str, tuple[Any, str, tuple[ModelSpec, ...]]] = {
    "shapes": (None, (
        "Six classes of coloured shapes and textured squares; class c is the joint presence of "
        "parts c and c+1 mod 6 (a cycle); three distractors; a magenta square correlated with "
        "class 0 in the train/val splits (the spurious cue); parts 12-22 px (down to 9 px when "
        "crowded). Model: the reference "
        "CNN (default) and a small ViT."),
        (ModelSpec("cnn", {"n_classes": 6, "width": 16}, "block4", {}), _SHAPES_VIT)),
    "textures": (_textures, (
        "Four classes defined by textured blobs of one shared outline and colour distribution "
        "(no shape or colour cue); class c is the joint presence of textures c and c+1 mod 4 "
        "(stripes, checkerboard, dots, zigzag); three distractor textures; blobs in 18-26 px "
        "boxes (14 px when crowded), 11-26 px across. "
        "Model: a small ResNet (default) and a small ViT with 4 px patches."),
        (_RESNET, _TEXTURES_VIT)),
    "scales": (_scales, (
        "Four classes of coloured shapes whose size varies log-uniformly from 9 to 30 px; class c "
        "is the joint presence of parts c and c+1 mod 4 (red disk, blue triangle, green ring, "
        "yellow cross); three distractors share a colour with a causal part (red square, blue bar, "
        "yellow diamond)."), (_RESNET,)),
    "context": (_context, (
        "Four classes defined by a spatial relation: the red disk above or below the blue square "
        "or the green triangle (every image shows the disk and one partner, with a 3-row gap); "
        "two distractors (yellow ring, purple cross); parts 10-16 px."), (_VIT,)),
}


def load_world(name: str) -> World:
    """The ground-truth world ``name`` (one of :data:`WORLDS`), a fresh :class:`World` each call.

    Examples
    --------
    >>> world = load_world("textures")
    >>> data = world.sample(n_per_class=20, seed=1)        # doctest: +SKIP
    >>> model = world.model()                               # doctest: +SKIP
    """
    name = check_choice(name, "name", WORLDS)
    module, description, specs = _TABLE[name]
    if name == "shapes":
        generate = _shapes_generate
        class_names, part_names = list(_generate.CLASS_NAMES), list(CONCEPT_NAMES)
        class_parts = [list(p) for p in _generate.CLASS_CONCEPTS]
        distractors = list(_generate.DISTRACTOR_CONCEPTS)
    else:
        generate = getattr(module, f"make_{name}")
        class_names, part_names = list(module.CLASS_NAMES), list(module.PART_NAMES)
        class_parts = [list(p) for p in module.CLASS_PARTS]
        distractors = list(module.DISTRACTOR_PARTS)
    # each World gets its own copies: editing one World's settings changes no other World and
    # not the module's record of what was shipped (World.shipped compares with the latter)
    specs_by_arch = {s.architecture: copy.deepcopy(s) for s in specs}
    return World(
        name=name, architecture=specs[0].architecture, layer=specs[0].layer,
        class_names=class_names, part_names=part_names, class_parts=class_parts,
        distractor_parts=distractors, description=description,
        architectures=tuple(specs_by_arch), layers={a: s.layer for a, s in specs_by_arch.items()},
        train_commands={a: s.train_command(name) for a, s in specs_by_arch.items()},
        _generate=generate, _specs=specs_by_arch)


def world_weights_path(name: str, arch: str | None = None) -> str:
    """Path of the shipped weights of world ``name`` and architecture ``arch``."""
    world = load_world(name)
    return os.fspath(world.spec(arch).weights_path(world.name))
