"""Find a layer by its dotted name, with helpful errors.

Wrappers that only forward to the model they hold are looked through: ``nn.DataParallel`` and
``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``) compute what
the wrapped model computes, so layers are named, hooked and cut on the wrapped model (names
with or without the ``module.`` / ``_orig_mod.`` prefix are accepted). TorchScript modules
(``torch.jit.script`` / ``torch.jit.trace``) run compiled code that no Python hook can observe,
so they are refused with an error that says what to pass instead.
"""

from __future__ import annotations

from torch import nn

from .._validation import close_names


def layer_names(model: nn.Module) -> list[str]:
    """All dotted submodule names of ``model`` (excluding the root)."""
    return [name for name, _ in unwrap_model(model)[0].named_modules() if name]


def enclosing_modules(model: nn.Module, layer: str) -> list[nn.Module]:
    """The modules of ``model`` that hold the submodule named ``layer`` (itself included, the
    root last), deepest first: where to read what a model says about one of its layers."""
    return [module for name, module in model.named_modules()
            if name == "" or layer == name or layer.startswith(name + ".")][::-1]


def unwrap_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers, and the
    prefix its submodule names carry in the wrapper (``"module."``, ``"_orig_mod."``)."""
    prefix = ""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model, prefix = model.module, prefix + "module."
        elif (type(model).__name__ == "OptimizedModule"
              and isinstance(getattr(model, "_orig_mod", None), nn.Module)):
            model, prefix = model._orig_mod, prefix + "_orig_mod."
        else:
            return model, prefix


def check_not_scripted(model: nn.Module, name: str = "model") -> None:
    """Refuse TorchScript modules: their layers cannot be hooked or cut."""
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"`{name}` is a TorchScript module ({type(model).__name__}, made by "
                        f"torch.jit.script or torch.jit.trace): its forward is compiled code that "
                        f"conceptkit cannot hook or cut at a layer. Pass the Python nn.Module it "
                        f"was made from instead (its weights load with "
                        f"python_model.load_state_dict(scripted.state_dict())).")


def _uses(model: nn.Module, target: nn.Module) -> list[str]:
    return [dotted for dotted, module in model.named_modules(remove_duplicate=False)
            if module is target and dotted]


def get_layer(model: nn.Module, layer: str | nn.Module, name: str = "layer") -> tuple[str, nn.Module]:
    """Resolve ``layer`` (a dotted name or a submodule of ``model``) to ``(name, module)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
    check_not_scripted(model)
    model, prefix = unwrap_model(model)
    if isinstance(layer, nn.Module):
        uses = _uses(model, layer)
        if not uses:
            raise ValueError(f"`{name}` is a module that is not a submodule of `model`.")
        dotted = uses[0]
    elif not isinstance(layer, str) or not layer:
        raise TypeError(f"`{name}` must be a dotted submodule name such as 'layer4' or "
                        f"'blocks.3'; got {layer!r}.")
    else:
        dotted = layer[len(prefix):] if prefix and layer.startswith(prefix) else layer
        modules = dict(model.named_modules(remove_duplicate=False))
        if dotted not in modules or dotted == "":
            names = layer_names(model)
            close = close_names(dotted, names)
            hint = f" Close names: {close}." if close else ""
            top = [n for n in names if "." not in n][:12]
            raise ValueError(f"`{name}` {layer!r} is not a submodule of {type(model).__name__}.{hint} "
                             f"Top-level names: {top}. List all with "
                             f"conceptkit.extraction.layer_names(model).")
        uses = _uses(model, modules[dotted])
    if len(uses) > 1:
        raise ValueError(f"`{name}` {layer if isinstance(layer, str) else dotted!r} is one module "
                         f"object used twice in {type(model).__name__} (registered as {uses}): its "
                         f"two calls cannot be told apart, so the model cannot be cut or hooked "
                         f"there. Give each place its own module (copy.deepcopy) or choose "
                         f"another layer.")
    return dotted, dict(model.named_modules(remove_duplicate=False))[dotted]
