"""Small wrappers around ``h``: keep its input intact, pick the logits out of a richer output.

``h`` is called on activations the caller keeps using (the class activations, reconstructions
shared between masks). A model whose first operation after the cut is in place (VGG's
``ReLU(inplace=True)`` right after ``features.15``, ``torch.relu_``, a user's block doing
``x.add_(1)``) would change those activations through ``h``: :func:`guard_input` clones the
input first, for every head not proven free of in-place operations.

Models that return a dict (Hugging Face ``{"logits": ...}``) or a tuple (logits and auxiliary
outputs) give ``h`` the same output; :func:`select_output` returns the element holding the class
logits (``ConceptExplainer(..., output="logits")`` does it for the pipeline).
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._validation import describe

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.imatmul,
                      operator.itruediv, operator.ifloordiv, operator.imod, operator.ipow,
                      operator.iand, operator.ior, operator.ixor, operator.ilshift,
                      operator.irshift, operator.setitem, operator.delitem}
_INPLACE_METHODS = {"__setitem__", "__delitem__", "__iadd__", "__isub__", "__imul__",
                    "__imatmul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
                    "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}
#: Packages whose modules' own ``forward`` is known not to write into its input unless the
#: module says so with ``inplace=True`` (their submodules are checked too).
_TRUSTED_CODE = ("torch.nn.", "conceptkit.")
#: Where the functions a torch.fx graph calls must come from to be read by their name and
#: arguments alone; any other function (a user's, wrapped with ``torch.fx.wrap``) may do
#: anything.
_TRUSTED_FUNCTIONS = ("torch", "_operator", "operator", "builtins", "math")


def has_inplace_ops(module: nn.Module) -> bool:
    """Whether ``module`` may write into a tensor it is given: True unless it is proven not to.

    Proven not to means: every module in it (``module`` included) runs code of ``torch.nn``
    (or conceptkit's own wrappers) without ``inplace=True``, or is a torch.fx graph whose nodes
    call no in-place function or method (a name ending in ``_`` such as ``torch.relu_`` or
    ``x.add_``, an augmented assignment ``x += y``, an item assignment ``x[i] = v``, an
    ``out=`` or ``inplace=True`` argument) and whose called modules are proven so too. A
    module with a ``forward`` of its own (a user's block, a torchvision or timm block left
    whole), a ``forward`` set on the instance, a forward hook present when ``h`` is made, or a
    function of the user's called in a graph (``torch.fx.wrap``) may do anything, so it
    counts. Any such operation anywhere counts, also one that
    only touches intermediate values: the cost of the clone it triggers is one copy of the
    activations.
    """
    return not _proven_pure(module, set())


def _proven_pure(module: nn.Module, seen: set[int]) -> bool:
    if id(module) in seen:
        return True
    seen.add(id(module))
    if getattr(module, "inplace", False):
        return False
    # a forward set on the instance, or a hook, runs code of its own that may do anything
    if "forward" in vars(module) or module._forward_pre_hooks or module._forward_hooks:
        return False
    if isinstance(module, fx.GraphModule):
        if not all(_node_is_pure(node) for node in module.graph.nodes):
            return False
    elif not _trusted_forward(type(module)):
        return False
    return all(_proven_pure(child, seen) for child in module.children())


def _trusted_forward(cls: type) -> bool:
    """Whether the ``forward`` that ``cls`` runs is code of ``torch.nn`` or of conceptkit."""
    forward = getattr(cls, "forward", None)
    where = getattr(forward, "__module__", None) or ""
    return where.startswith(_TRUSTED_CODE)


def _node_is_pure(node: fx.Node) -> bool:
    if node.op not in ("call_function", "call_method"):
        return True  # placeholders, attributes, outputs; called modules are checked as modules
    if "out" in node.kwargs or node.kwargs.get("inplace") is True:
        return False
    if node.op == "call_method":
        name = node.target if isinstance(node.target, str) else ""
        return not (name in _INPLACE_METHODS or name.endswith("_") and not name.endswith("__"))
    target = node.target
    if target in _INPLACE_FUNCTIONS:
        return False
    name = getattr(target, "__name__", "") or ""
    if name.endswith("_") and not name.endswith("__"):  # torch.relu_, F.relu_, torch.exp_
        return False
    where = getattr(target, "__module__", None) or ""
    if where.split(".")[0] not in _TRUSTED_FUNCTIONS:
        return False
    try:  # F.relu(x, True): ``inplace`` given by position
        bound = inspect.signature(target).bind(*node.args, **node.kwargs).arguments
    except (TypeError, ValueError):  # builtins without a signature, or another binding
        return True
    return bound.get("inplace") is not True


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
    """``h`` wrapped in :class:`InputGuard` unless it is proven not to modify its input
    (:func:`has_inplace_ops`), or always with ``always``."""
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
