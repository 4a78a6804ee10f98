"""Find a layer by its dotted name, with helpful errors."""

from __future__ import annotations

from torch import nn

from .._validation import close_names


def layer_names(model: nn.Module) -> list[str]:
    """All dotted submodule names of ``model`` (excluding the root)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, layer: str | nn.Module, name: str = "layer") -> tuple[str, nn.Module]:
    """Resolve ``layer`` (a dotted name or a submodule of ``model``) to ``(name, module)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
    if isinstance(layer, nn.Module):
        for dotted, module in model.named_modules():
            if module is layer and dotted:
                return dotted, module
        raise ValueError(f"`{name}` is a module that is not a submodule of `model`.")
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"`{name}` must be a dotted submodule name such as 'layer4' or "
                        f"'blocks.3'; got {layer!r}.")
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = layer_names(model)
        close = close_names(layer, names)
        hint = f" Close names: {close}." if close else ""
        top = [n for n in names if "." not in n][:12]
        raise ValueError(f"`{name}` {layer!r} is not a submodule of {type(model).__name__}.{hint} "
                         f"Top-level names: {top}. List all with "
                         f"conceptkit.extraction.layer_names(model).")
    return layer, modules[layer]
