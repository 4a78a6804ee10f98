"""Which layers of a model are worth explaining, and a model bundle from what users hold.

:func:`likely_layers` runs the model once on a blank image and lists the last modules that give
feature maps ``(N, C, h, w)`` or transformer tokens ``(N, T, C)`` — what an error names when a
model comes without a default layer. :func:`as_bundle` turns a :class:`ModelBundle` or the
offline EfficientNet-Lite0 of :mod:`conceptkit.datasets` into a bundle.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from .._deprecation import renamed_arguments
from ._bundle import ModelBundle, from_pretrained


@renamed_arguments(n="n_layers")
def likely_layers(model: nn.Module, input_size: int = 224, n_layers: int = 5,
                  max_depth: int = 2) -> list[str]:
    """The last ``n_layers`` modules (at most ``max_depth`` dots deep) whose output is a feature map
    ``(N, C, h, w)`` with ``h, w > 1`` or transformer tokens ``(N, T, C)``, last first.

    Channels-last maps ``(N, H, W, C)`` (Swin stages) are left out. A module whose output is
    the very output of a listed module that contains it (a container's last child) is left
    out too; its other descendants stay when they are the blocks (modules with children) of
    an ``nn.Sequential`` (``features``, ``features.11``, ``features.10`` ...).
    The model runs once on a grey ``input_size`` image in its own dtype and device (no
    gradients, flags and hooks restored). Returns ``[]`` when the model cannot run on such an
    image.
    """
    from .._torchutils import channel_leaf, model_device, model_dtype, preserved_model_state
    from ..extraction._layout import is_channels_last

    seen: dict[str, torch.Tensor] = {}  # name -> its output, in the order the modules finished
    last: list = [None]  # what the last channel-bearing leaf said of its output
    handles = []

    def leaf(module, _inputs, output):
        said = channel_leaf(module, output)
        if said is not None:
            last[0] = said

    def record(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)) and output:
                output = output[0]
            if not isinstance(output, torch.Tensor) or name in seen:
                return
            spatial = (output.ndim == 4 and min(output.shape[2:]) > 1
                       and not is_channels_last(tuple(output.shape), last[0]))
            tokens = output.ndim == 3 and output.shape[1] > 1
            if spatial or tokens:
                seen[name] = output
        return hook

    for module in model.modules():  # registered first: a leaf speaks before it is recorded
        handles.append(module.register_forward_hook(leaf))
    for name, module in model.named_modules():
        if name and name.count(".") < max_depth and not isinstance(module, (nn.Dropout, nn.Identity)):
            handles.append(module.register_forward_hook(record(name)))
    try:
        with preserved_model_state(model), torch.no_grad():
            model(torch.full((1, 3, input_size, input_size), 0.5, device=model_device(model),
                             dtype=model_dtype(model)))
    except Exception:  # noqa: BLE001 - a hint only: a model that does not run gets no list
        return []
    finally:
        for handle in handles:
            handle.remove()
    # A container and its last child give the same output: keep the outer (shorter) name.
    # Other descendants stay when they run one after the other in a sequential container (the
    # stages of `features`, the blocks of `blocks`), not when they run side by side (the
    # branches of an Inception block, concatenated: no one of them is a cut of the model).
    modules = dict(model.named_modules())
    kept: list[str] = []
    for name in reversed(list(seen)):
        inside = [other for other in kept if name.startswith(other + ".")]
        if any(seen[name] is seen[other] for other in inside):
            continue
        parent = modules.get(name.rpartition(".")[0])
        if inside and (type(parent).forward is not nn.Sequential.forward
                       or not any(True for _ in modules[name].children())):
            continue  # side by side, or a single operation of a block (its conv, its norm)
        kept = [other for other in kept
                if not (other.startswith(name + ".") and seen[other] is seen[name])]
        kept.append(name)
    return kept[:n_layers]


def missing_layer_message(model: nn.Module, input_size: int = 224, flag: str = "`layer`") -> str:
    """``flag`` is required: the message lists the likely layers of ``model``."""
    candidates = likely_layers(model, input_size)
    listed = (f" Likely layers (last first): {', '.join(repr(c) for c in candidates)}; the last "
              f"convolutional block or transformer block before pooling is the usual choice."
              if candidates else "")
    return (f"{flag} is required for {type(model).__name__}: no default layer is known for this "
            f"model.{listed}")


def as_bundle(value: Any) -> ModelBundle | None:
    """``value`` as a :class:`ModelBundle` when it is one (or the
    :func:`conceptkit.datasets.efficientnet_lite0` object), else None."""
    if isinstance(value, ModelBundle):
        return value
    model = getattr(value, "model", None)
    if (isinstance(model, nn.Module) and hasattr(value, "mean") and hasattr(value, "std")
            and hasattr(value, "labels") and hasattr(value, "input_size")):
        return from_pretrained(value)
    return None


def class_index(value: Any, class_names: list[str], flag: str = "`class_id`",
                n_outputs: int | None = None) -> int:
    """A class given by index or by name: the index, or an error with close names.

    An index is checked against ``n_outputs``, the model's number of outputs, when the caller
    knows it (the error then says how many classes the model has), else against the names.

    Names match exactly first, then ignoring case and surrounding spaces, then as the first
    entry of a comma-separated ImageNet-style label (``"tiger cat"`` in ``"tiger cat"``,
    ``"espresso"``).
    """
    from .._validation import check_int

    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only: str.isdigit also takes "²" (int() refuses it) and "٣" (int() reads 3)
        if text.isascii() and text.isdigit():
            return int(text)
        signless = text.lstrip("+-")
        if signless.isascii() and signless.isdigit() and text not in class_names:  # "-1": a number
            raise ValueError(f"{flag} must be a class index >= 0 or a class name; got {text}.")
        if not class_names:
            where = ("" if flag.startswith("`--") else
                     ", or pass the names by output index as `class_names=[...]` (e.g. "
                     "ConceptExplainer(model, layer, class_names=names))")
            raise ValueError(f"{flag} {value!r} is a name, but this model has no class names; "
                             f"give the class index instead{where}.")
        if text in class_names:
            return class_names.index(text)
        folded = [c.strip().lower() for c in class_names]
        if text.lower() in folded:
            return folded.index(text.lower())
        firsts = [c.split(",")[0].strip() for c in folded]
        if text.lower() in firsts:
            return firsts.index(text.lower())
        close = difflib.get_close_matches(text.lower(), folded, n=5, cutoff=0.6)
        hint = (" Did you mean " + ", ".join(repr(class_names[folded.index(c)]) for c in close)
                + "?") if close else ""
        raise ValueError(f"{flag} {value!r} is not a class name of this model "
                         f"({len(class_names)} classes).{hint}")
    index = check_int(value, flag.strip("`"), minimum=0)
    if n_outputs is not None and index >= n_outputs:
        raise ValueError(f"{flag} {index} is out of range: this model has {n_outputs} classes "
                         f"(0 to {n_outputs - 1}).")
    if n_outputs is None and class_names and index >= len(class_names):
        # said of the names: only the model's outputs say how many classes it has
        raise ValueError(f"{flag} {index} is out of range: the {len(class_names)} class names "
                         f"name classes 0 to {len(class_names) - 1}.")
    return index
