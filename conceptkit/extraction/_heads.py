"""Small wrappers around ``h``: keep its input intact, pick the logits out of a richer output.

``h`` is called on activations the caller keeps using (the class activations, reconstructions
shared between masks). A model whose first operation after the cut is in place (VGG's
``ReLU(inplace=True)`` right after ``features.15``) would clip those activations through ``h``:
:func:`guard_input` clones the input first, for heads that contain an in-place operation.

Models that return a dict (Hugging Face ``{"logits": ...}``) or a tuple (logits and auxiliary
outputs) give ``h`` the same output; :func:`select_output` returns the element holding the class
logits (``ConceptExplainer(..., output="logits")`` does it for the pipeline).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._validation import describe

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand,
                      operator.ior, operator.ixor, operator.ilshift, operator.irshift}


def has_inplace_ops(module: nn.Module) -> bool:
    """Whether ``module`` may write into a tensor it is given.

    Submodules with ``inplace=True`` (ReLU, Hardswish, Dropout ...) count, and for a torch.fx
    graph, in-place methods (``x.relu_()``), augmented assignments (``x += y``) and functions
    called with ``inplace=True``. Any such operation anywhere counts, also one that only touches
    intermediate values: the cost of the clone it triggers is one copy of the activations.
    """
    if any(getattr(m, "inplace", False) is True for m in module.modules()):
        return True
    for graph_module in (m for m in module.modules() if isinstance(m, fx.GraphModule)):
        for node in graph_module.graph.nodes:
            if node.op == "call_method" and isinstance(node.target, str) and (
                    node.target.endswith("_") and not node.target.endswith("__")):
                return True
            if node.op == "call_function" and (node.target in _INPLACE_FUNCTIONS
                                               or node.kwargs.get("inplace") is True):
                return True
    return False


class InputGuard(nn.Module):
    """``h`` called on a copy of its input, so that in-place operations cannot change it."""

    def __init__(self, h: nn.Module):
        super().__init__()
        self.h = h

    def forward(self, activations: Any, *rest: Any) -> Any:
        if isinstance(activations, torch.Tensor):
            activations = activations.clone()
        return self.h(activations, *rest)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["h"], name)


def guard_input(h: nn.Module, *, always: bool = False) -> nn.Module:
    """``h`` wrapped in :class:`InputGuard` when it may modify its input (or ``always``)."""
    return InputGuard(h) if always or has_inplace_ops(h) else h


class SelectOutput(nn.Module):
    """``module(x)[key]``: the element of a tuple, list or dict output that holds the logits."""

    def __init__(self, module: nn.Module, key: int | str):
        super().__init__()
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise TypeError(f"`output` must be an int index or a str key; got {describe(key)}.")
        self.module = module
        self.key = key

    def forward(self, *args: Any) -> torch.Tensor:
        return pick_output(self.module(*args), self.key)


def pick_output(out: Any, key: int | str) -> Any:
    """``out[key]`` with an error naming ``output`` when ``key`` is not there."""
    if isinstance(out, dict) or hasattr(out, "keys") and callable(out.keys):
        if key not in out.keys():
            raise ValueError(f"`output` {key!r} is not a key of the model's output; its keys are "
                             f"{list(out.keys())}.")
        return out[key]
    if isinstance(out, (tuple, list)):
        if not isinstance(key, int) or not -len(out) <= key < len(out):
            raise ValueError(f"`output` {key!r} is not an index of the model's output, a "
                             f"{type(out).__name__} of {len(out)} elements.")
        return out[key]
    raise ValueError(f"`output` {key!r} was given but the model returns {describe(out)}, "
                     f"not a tuple, list or dict.")


def select_output(module: nn.Module, key: int | str) -> SelectOutput:
    """A module returning ``module(x)[key]`` (``key``: a tuple index or a dict key such as
    ``"logits"``), for models whose output is not the logits tensor itself."""
    return SelectOutput(module, key)


def describe_output(out: Any) -> str:
    """What a non-tensor model output holds, and how to pick the logits out of it."""
    if isinstance(out, dict) or hasattr(out, "keys") and callable(getattr(out, "keys", None)):
        keys = list(out.keys())
        example = "logits" if "logits" in keys else (keys[0] if keys else "logits")
        return (f"a {type(out).__name__} with keys {keys[:8]}; say which holds the class logits "
                f"with output={example!r}")
    if isinstance(out, (tuple, list)):
        shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                  for o in out[:8]]
        return (f"a {type(out).__name__} of {len(out)} elements with shapes {shapes}; say which "
                f"holds the class logits with output=0 (or another index)")
    return describe(out)
