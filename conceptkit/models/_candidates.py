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

    The model runs once on a grey ``input_size`` image (no gradients, flags and hooks restored).
    Returns ``[]`` when the model cannot run on such an image.
    """
    from .._torchutils import model_device, preserved_model_state

    seen: list[str] = []
    handles = []

    def record(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)) and output:
                output = output[0]
            if not isinstance(output, torch.Tensor):
                return
            spatial = output.ndim == 4 and min(output.shape[2:]) > 1
            tokens = output.ndim == 3 and output.shape[1] > 1
            if (spatial or tokens) and name not in seen:
                seen.append(name)
        return hook

    for name, module in model.named_modules():
        if name and name.count(".") < max_depth and not isinstance(module, (nn.Dropout, nn.Identity)):
            handles.append(module.register_forward_hook(record(name)))
    try:
        with preserved_model_state(model), torch.no_grad():
            device = model_device(model)
            model(torch.full((1, 3, input_size, input_size), 0.5, device=device))
    except Exception:  # noqa: BLE001 - a hint only: a model that does not run gets no list
        return []
    finally:
        for handle in handles:
            handle.remove()
    # A module and its last child often give the same output: keep the outer (shorter) name.
    ordered = list(reversed(seen))
    kept: list[str] = []
    for name in ordered:
        if any(other.startswith(name + ".") for other in kept):
            kept = [other for other in kept if not other.startswith(name + ".")]
        if not any(name.startswith(other + ".") for other in kept):
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


def class_index(value: Any, class_names: list[str], flag: str = "`class_id`") -> int:
    """A class given by index or by name: the index, or an error with close names.

    Names match exactly first, then ignoring case and surrounding spaces, then as the first
    entry of a comma-separated ImageNet-style label (``"tiger cat"`` in ``"tiger cat"``,
    ``"espresso"``).
    """
    from .._validation import check_int

    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if text.lstrip("+-").isdigit() and text not in class_names:  # "-1": a number, not a name
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
    if class_names and index >= len(class_names):
        raise ValueError(f"{flag} {index} is out of range: this model has {len(class_names)} "
                         f"classes (0 to {len(class_names) - 1}).")
    return index
