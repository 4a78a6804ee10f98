"""The way through a model from a sub-concept layer up to its parent's layer (CRAFT recursion).

:class:`ParentCode` is the function whose inputs the sub-concepts perturb: activations at the
earlier layer go through the part of the model up to the parent layer (``mid``), are pooled
as the parent bank's rows were, and are encoded with the parent bank. ``mid`` is cut from a
torch.fx graph of the model in which both layers are kept as leaves; models that cannot be
traced are replayed instead (the earlier layer's output replaced, the forward stopped at the
parent layer), which is checked not to depend on the replayed input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._torchutils import capture_output
from ..concepts import ConceptBank
from ..extraction import CutError
from ..extraction._extractor import infer_prefix_tokens
from ..extraction._layers import get_layer
from ..extraction._split import NotInGraph, graph_cuts


def _fx_mid(model: nn.Module, layer: str, target: str) -> nn.Module | None:
    """The part of the model from ``layer``'s output to ``target``'s output (one torch.fx cut,
    :func:`~conceptkit.extraction._split.graph_cuts`), or None when the model cannot be traced
    with both as single calls (it is replayed instead). A skip connection that crosses ``layer``
    on the way raises :class:`CutError`."""
    try:
        (mid,) = graph_cuts(model, [(layer, target)])
    except NotInGraph:
        return None
    except CutError:
        raise
    except Exception:  # noqa: BLE001 - untraceable models are replayed instead
        return None
    return mid


class ParentCode(nn.Module):
    """``f(A) = encode(pool(mid(A)))[:, [concept]]``: the parent coefficient, shape ``(n, 1)``.

    Parameters
    ----------
    model : nn.Module
    layer : str
        The earlier layer; ``A`` are its activations.
    bank : ConceptBank
        The parent bank (``bank.layer`` is the parent layer).
    concept : int
        The parent concept.
    example : tensor of shape (1, C, H, W)
        One (preprocessed) model input, used to check the path against the model itself.
    example_acts : tensor
        The activations of ``example`` at ``layer``.
    """

    def __init__(self, model: nn.Module, layer: str, bank: ConceptBank, concept: int,
                 example: torch.Tensor, example_acts: torch.Tensor):
        super().__init__()
        self.model = model
        self.mid = _fx_mid(model, layer, bank.layer)
        self._modules_at = [get_layer(model, layer)[1], get_layer(model, bank.layer)[1]]
        self._bank, self._concept = bank, int(concept)
        self._input_shape = tuple(example.shape[1:])
        with torch.no_grad():
            acts = example_acts.to(example)
            got = self._parent_output(acts)
            if self.mid is None:
                noise = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
                if not _close(got, self._parent_output(acts, noise.to(example))):
                    raise CutError(f"`layer` {layer!r} is not a valid cut on the way to "
                                   f"`bank.layer` {bank.layer!r}: the parent layer also depends on "
                                   f"values computed before `layer`.")
            expected = capture_output(model, self._modules_at[1], example)
        if not _close(got, expected):
            raise CutError(f"running the model from `layer` {layer!r} does not reproduce its "
                           f"activations at `bank.layer` {bank.layer!r}; choose another layer.")

    def _parent_output(self, acts: torch.Tensor, dummy: torch.Tensor | None = None) -> Any:
        if self.mid is not None:
            return self.mid(acts)
        if dummy is None:
            dummy = torch.zeros((acts.shape[0], *self._input_shape), dtype=acts.dtype,
                                device=acts.device)
        # the earlier layer's output replaced by `acts`, the forward stopped at the parent layer
        return capture_output(self.model, self._modules_at[1], dummy,
                              replace={self._modules_at[0]: acts})

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        pooled = pool(self._parent_output(acts), self.model)
        return self._bank.encode_differentiable(pooled)[:, self._concept:self._concept + 1]


def _close(a: Any, b: Any) -> bool:
    a, b = _first(a), _first(b)
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.detach(), b.detach(), rtol=1e-4, atol=1e-5))


def _first(output: Any) -> Any:
    return output[0] if isinstance(output, (tuple, list)) else output


def pool(output: Any, model: nn.Module) -> torch.Tensor:
    """Spatial mean ``(n, C)`` of a layer output, as a bank's crop rows were pooled."""
    output = _first(output)
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    if output.ndim == 3:   # transformer tokens (n, T, C): average the patch tokens only
        prefix = infer_prefix_tokens(model, output.shape[1])
        return output[:, prefix:].mean(dim=1)
    return output.reshape(output.shape[0], -1)


def check_cuts(model: nn.Module, names: list[str]) -> None:
    """Raise :class:`CutError` early when a skip connection crosses one of the levels on the
    way to the level above it (traceable models; replayed ones are checked when they run)."""
    for above, below in zip(names, names[1:]):
        _fx_mid(model, below, above)


def previous_block(model: nn.Module, name: str) -> str:
    """The previous sibling with parameters of ``name``, else of its parent, and so on."""
    modules = dict(model.named_modules())
    parts = name.split(".")
    while parts:
        parent_name = ".".join(parts[:-1])
        siblings = list(modules[parent_name]._modules.items())
        index = [key for key, _ in siblings].index(parts[-1])
        for key, module in reversed(siblings[:index]):
            if module is not None and next(module.parameters(), None) is not None:
                return f"{parent_name}.{key}" if parent_name else key
        parts = parts[:-1]
    raise ValueError(f"no block with parameters runs before {name!r}; pass `child_layers` to "
                     f"choose the layers of the deeper levels.")


def check_levels(model: nn.Module, names: list[str], example: torch.Tensor, auto: bool) -> None:
    """Each layer of ``names`` must run once, before the previous one, and give maps or vectors.

    ``names`` is ``[bank.layer, layer, *child_layers]``; ``auto`` says the child layers were
    picked automatically (the error messages say so).
    """
    order: dict[str, int] = {}
    calls: dict[str, int] = dict.fromkeys(names, 0)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in dict.fromkeys(names):
        def record(_module, _inputs, output, name=name):
            calls[name] += 1
            if name not in order:
                order[name] = len(order)
                output = _first(output)
                shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        handles.append(get_layer(model, name)[1].register_forward_hook(record))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    labels = ["`bank.layer`", "`layer`"] + [
        "the automatically picked child layer" if auto else f"`child_layers[{i}]`"
        for i in range(len(names) - 2)]
    hint = " Pass `child_layers` to choose the deeper layers." if auto else ""
    for i, name in enumerate(names):
        if name not in order:
            raise ValueError(f"{labels[i]} {name!r} is never called in the forward pass of "
                             f"{type(model).__name__}.{hint}")
        if i == 0:
            continue
        if names[i - 1] == name or order[name] > order[names[i - 1]]:
            raise ValueError(f"{labels[i]} {name!r} must run before {labels[i - 1]} "
                             f"{names[i - 1]!r} in the forward pass: sub-concepts are found at an "
                             f"earlier layer than their parent.{hint}")
        if calls[name] > 1:
            raise ValueError(f"{labels[i]} {name!r} is called {calls[name]} times in one forward "
                             f"pass (a reused module); there is no single point to cut.")
        if len(shapes[name]) not in (2, 4):
            raise ValueError(f"{labels[i]} {name!r} outputs shape {shapes[name]}; sub-concepts "
                             f"need feature maps (N, C, h, w) or vectors (N, C) (transformer "
                             f"token layers are not supported below the parent layer).{hint}")
