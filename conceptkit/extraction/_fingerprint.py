"""Fingerprints of what determines an activation store's content.

A store written by :func:`~conceptkit.extraction.write_store` records a fingerprint of the model
weights, the model's structure (every submodule's type and plain settings), the layer, the preprocessing, the inputs, the number of inputs, the chunk size, the
layout and the dtype. A rerun into the same directory resumes only when the fingerprint matches;
anything else would mix the chunks of two different extractions.

Digests are BLAKE2b over raw tensor bytes (with names, shapes and dtypes), so they cost one pass
over the weights and, for tensor inputs, over the images; both are small next to the forward
passes that fill the store. A Dataset is identified by its ``fingerprint`` attribute when it has
one (a string or a method returning one); a dataset that lists its files (torchvision's
``ImageFolder``: ``samples``) by every file's path, size, modification and change times, inode and device, its
transforms
and a digest of three items; torch's ``Subset`` by its dataset's identity and its indices; any
other Dataset by its type, its length and a digest of its first, middle and last items — which
cannot see a change elsewhere, so :func:`~conceptkit.extraction.write_store` warns when it
reuses chunks of such a store.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import os
import types
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io import file_state

_BLOCK = 1 << 24  # hash big tensors in 16 MiB slices: no second full copy in memory


def _update_tensor(digest: Any, tensor: torch.Tensor | np.ndarray) -> None:
    if isinstance(tensor, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    tensor = tensor.detach()
    digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    if tensor.device.type == "meta":
        digest.update(b"meta")
        return
    flat = tensor.reshape(-1)
    step = max(1, _BLOCK // max(1, flat.element_size()))
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step].cpu().contiguous()
        if part.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bits as int16
            part = part.view(torch.int16)
        digest.update(part.numpy().tobytes())


def tensor_digest(tensor: torch.Tensor | np.ndarray) -> str:
    """A hex digest of a tensor's shape, dtype and values."""
    digest = hashlib.blake2b(digest_size=16)
    _update_tensor(digest, tensor)
    return digest.hexdigest()


def module_digest(module: nn.Module, *, state_dict_only: bool = False) -> str:
    """A hex digest of a module's class and every parameter and buffer (names, shapes, values),
    non-persistent buffers included (they change the output but not the ``state_dict``).
    ``state_dict_only``: the digest conceptkit wrote before it read non-persistent buffers
    (the same for a model without any)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}|".encode())
    state = module.state_dict(keep_vars=True)
    for name, tensor in state.items():
        digest.update(name.encode() + b"|")
        if isinstance(tensor, torch.Tensor):
            _update_tensor(digest, tensor)
    for name, tensor in ([] if state_dict_only else module.named_buffers(remove_duplicate=False)):
        if name not in state:  # only where there are any: other digests stay as they were
            digest.update(b"non-persistent|" + name.encode() + b"|")
            _update_tensor(digest, tensor)
    return digest.hexdigest()


# settings that do not change what a module computes, or that differ between two copies of one
# model: the train/eval flag, in-place execution, where a model was loaded from, checkpointing and
# fused-attention switches (numerically the same), bookkeeping a library mutates while it runs
_NOT_SETTINGS = frozenset({"training", "inplace", "name_or_path", "warnings_issued",
                           "gradient_checkpointing", "grad_checkpointing", "fused_attn",
                           # timm's record of where the weights came from (a checkpoint's path,
                           # hub id, licence, tag): the same model loaded from a copied file
                           "pretrained_cfg", "default_cfg", "pretrained_cfg_overlay"})


def structure_digest(module: nn.Module, other: Any = None) -> str:
    """A hex digest of a module's structure: every submodule's name, type (qualified name) and
    plain settings (see :func:`module_settings`: a convolution's stride, a norm's ``eps``, a
    user's ``self.scale = 0.2``), which change the output without showing in the weights (a
    ``MaxPool2d`` swapped for an ``AvgPool2d``, a ``ReLU`` for a ``Sigmoid``).

    The same for a model and its ``copy.deepcopy``, in train or eval mode, with or without
    hooks, in every process: private attributes (hooks, caches, torch's bookkeeping), the
    ``training`` flag and ``inplace`` never enter it, nor does any memory address.
    ``other`` describes the attributes that are not plain settings (see
    :func:`module_settings`; a preprocess module's description passes one)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules(remove_duplicate=False):
        kind = type(sub)
        digest.update(f"{name}|{kind.__module__}.{kind.__qualname__}|"
                      f"{module_settings(sub, other)}\n".encode())
    return digest.hexdigest()


def model_identity(module: nn.Module) -> dict[str, str]:
    """``{"model_digest", "model_structure"}``: :func:`module_digest` (the weights) and
    :func:`structure_digest` (the structure) of a model, as a saved explanation records them."""
    return {"model_digest": module_digest(module), "model_structure": structure_digest(module)}


def module_settings(module: nn.Module, other: Any = None) -> str:
    """A module's own public attributes that are plain settings (numbers, strings, ``None``,
    dtypes, enums, tensors, functions by their code, and lists, tuples, sets and dicts of
    them), sorted by name; names holding a ``cache`` and the attributes in ``_NOT_SETTINGS``
    are left out. ``other(value)`` describes any other value; without it they are left out."""
    parts = []
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key in _NOT_SETTINGS or "cache" in key.lower():
            continue
        text = _plain(value, 0)
        if text is None and other is not None:
            text = other(value)
        if text is not None:
            parts.append(f"{key}={text}")
    return ",".join(parts)


def _plain(value: Any, depth: int) -> str | None:
    """A plain setting's description, the same in every process; None for anything else."""
    import enum

    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__module__}.{type(value).__qualname__}.{value.name}"
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"tensor:{tensor_digest(value)}"
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v, depth + 1) for v in value]
        if any(item is None for item in items):
            return None
        if isinstance(value, (set, frozenset)):
            items = sorted(items)
        return f"{type(value).__name__}[" + ",".join(items) + "]"
    if isinstance(value, dict):
        pairs = [(_plain(k, depth + 1), _plain(v, depth + 1)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return "{" + ",".join(sorted(f"{k}={v}" for k, v in pairs)) + "}"
    if isinstance(value, functools.partial):
        parts = [_plain(value.func, depth + 1), _plain(value.args, depth + 1),
                 _plain(value.keywords, depth + 1)]
        return None if None in parts else "partial:" + ":".join(parts)  # type: ignore[arg-type]
    if isinstance(value, types.MethodType):  # by name: its object may be this very module
        return f"method:{value.__func__.__module__}.{value.__func__.__qualname__}"
    if isinstance(value, types.FunctionType):  # by its code and plain values it closes over
        cells = [_plain(cell.cell_contents, depth + 1) or type(cell.cell_contents).__qualname__
                 for cell in (value.__closure__ or ()) if _has_contents(cell)]
        defaults = [_plain(v, depth + 1) or type(v).__qualname__ for v in value.__defaults__ or ()]
        return (f"function:{value.__module__}.{value.__qualname__}:"
                f"{_code_identity(value.__code__, 0)}:{cells}:{defaults}")
    if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return f"builtin:{getattr(value, '__module__', '')}.{value.__qualname__}"
    return None


def callable_identity(obj: Any, *, legacy: bool = False) -> str | None:
    """A stable description of a preprocessing callable (``None`` for no preprocessing).

    Modules are identified by class, weights and structure (:func:`structure_digest`, with
    their other attributes described), functions by their code and the values they close over,
    ``functools.partial`` by its function and arguments, other objects (torchvision transforms)
    by their ``repr`` and their attributes (a ``Lambda`` prints as ``Lambda()``: its function is
    what tells two apart). Memory addresses never enter a description, so it is the same in every
    process. ``legacy``: the description conceptkit recorded before modules' structure and
    objects' attributes were read (what explanation files saved by then hold).
    """
    return None if obj is None else _describe(obj, 0, legacy)


_MAX_DEPTH = 6


def _describe(value: Any, depth: int, legacy: bool = False) -> str:
    if depth > _MAX_DEPTH:
        return f"<{type(value).__qualname__}>"
    deeper = depth + 1
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"tensor:{tensor_digest(value)}"
    if isinstance(value, nn.Module):
        described = f"module:{module_digest(value)}:{_strip_addresses(repr(value))}"
        if legacy:
            return described
        # its structure, with its other attributes described too
        structure = structure_digest(value, lambda v: _describe(v, deeper, legacy))
        return f"{described}:{structure}"
    if isinstance(value, dict):
        items = sorted((str(k), _describe(v, deeper, legacy)) for k, v in value.items())
        return "{" + ",".join(f"{k}={v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_describe(v, deeper, legacy) for v in value) + "]"
    if isinstance(value, (set, frozenset)):  # in an order that is the same in every process
        return "{" + ",".join(sorted(_describe(v, deeper, legacy) for v in value)) + "}"
    if isinstance(value, functools.partial):
        return (f"partial:{_describe(value.func, deeper, legacy)}:"
                f"{_describe(value.args, deeper, legacy)}:"
                f"{_describe(value.keywords, deeper, legacy)}")
    if isinstance(value, types.MethodType):
        return (f"method:{_describe(value.__func__, deeper, legacy)}:"
                f"{_describe(value.__self__, deeper, legacy)}")
    if isinstance(value, types.FunctionType):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(_code_identity(value.__code__, 0).encode())
        cells = [cell.cell_contents for cell in (value.__closure__ or ()) if _has_contents(cell)]
        digest.update(_describe(cells, deeper, legacy).encode())
        digest.update(_describe(value.__defaults__ or (), deeper, legacy).encode())
        read = _globals_read(value, depth)
        if read:  # only then: the digests of functions that read no global stay as they were
            digest.update(_describe(read, deeper, legacy).encode())
        return f"function:{value.__module__}.{value.__qualname__}:{digest.hexdigest()}"
    if isinstance(value, (types.BuiltinFunctionType, types.ModuleType, type)):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', value.__name__)}"
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    text = repr(value)
    attributes = getattr(value, "__dict__", {})
    if " at 0x" in text:
        return f"object:{name}:{_describe(attributes, deeper, legacy)}"
    if legacy or not attributes:  # a repr alone may hide what it does (Lambda())
        return f"object:{name}:{text}"
    return f"object:{name}:{text}:{_describe(attributes, depth, legacy)}"


def _globals_read(function: types.FunctionType, depth: int) -> dict[str, Any]:
    """The module globals a function's code names (a model, a scale, a helper function),
    except modules and classes (named by ``_describe`` anyway). Below the second level a global
    function is named, not described, so that helpers calling helpers stay cheap."""
    names = dict.fromkeys(ins.argval for ins in dis.get_instructions(function.__code__)
                          if ins.opname == "LOAD_GLOBAL")  # not attribute names (x.DATA)
    found = {}
    for name in names:
        if name not in function.__globals__:
            continue
        value = function.__globals__[name]
        if isinstance(value, (types.ModuleType, type)):
            continue
        if isinstance(value, types.FunctionType) and (depth >= 2 or value is function):
            value = f"{value.__module__}.{value.__qualname__}"
        found[name] = value
    return found


def _strip_addresses(text: str) -> str:
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _code_identity(code: types.CodeType, depth: int) -> str:
    consts = [_code_identity(c, depth + 1) if isinstance(c, types.CodeType) and depth < _MAX_DEPTH
              else repr(c) for c in code.co_consts]
    digest = hashlib.blake2b(code.co_code, digest_size=16)
    digest.update(repr((consts, code.co_names)).encode())
    return digest.hexdigest()


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises ValueError
    except ValueError:
        return False
    return True


def estimator_identity(estimator: Any) -> str:
    """A digest of an estimator's class, its settings (``get_params``) and its fitted state
    (every public attribute ending in ``_``: arrays by their values, lists and dicts item by
    item): what its ``transform`` reads, so that codes cached from it are not served after a
    ``set_params``, a refit or an in-place edit of its dictionary."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(estimator).__module__}.{type(estimator).__qualname__}|".encode())
    get_params = getattr(estimator, "get_params", None)
    if callable(get_params):
        digest.update(_describe(get_params(deep=False), 0).encode())
    for key, value in sorted(vars(estimator).items()):
        if key.endswith("_") and not key.startswith("_"):
            digest.update(f"|{key}=".encode() + _describe(value, 0).encode())
    return digest.hexdigest()


def inputs_identity(inputs: Any) -> str:
    """A digest of a tensor of inputs, or the identity of a Dataset (see the module docstring)."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return f"tensor:{tensor_digest(inputs)}"
    own = getattr(inputs, "fingerprint", None)
    if callable(own):
        own = own()
    if isinstance(own, str):
        return f"dataset:{type(inputs).__qualname__}:{own}"
    kind = f"{type(inputs).__module__}.{type(inputs).__qualname__}"
    subset = _subset_parts(inputs)
    if subset is not None:  # torch's Subset: the dataset's identity and which of its items
        dataset, indices = subset
        return f"subset:{kind}:{inputs_identity(dataset)}:{_describe(indices, 0)}"
    listing = file_listing(inputs)
    if listing is not None:  # a folder dataset: every file, not three of its items
        digest = hashlib.blake2b(digest_size=16)
        for entry in listing:
            path, rest = os.fspath(entry[0]), entry[1:]
            try:
                # a file replaced with its mtime kept: new inode, ctime
                state = ":".join(map(str, file_state(path)))
            except OSError:
                state = "missing"
            digest.update(f"{path}|{state}|{rest!r}\n".encode())
        for name in ("transform", "target_transform", "transforms", "loader"):
            digest.update(f"{name}={callable_identity(getattr(inputs, name, None))}|".encode())
        digest.update(_sampled_items(inputs).encode())  # what a transform does to them
        return f"files:{kind}:{len(inputs)}:{len(listing)}:{digest.hexdigest()}"
    return f"dataset:{kind}:{len(inputs)}:{_sampled_items(inputs)}"


def identity_is_sampled(inputs: Any) -> bool:
    """Whether :func:`inputs_identity` reads only three items of ``inputs`` (a Dataset with no
    ``fingerprint`` and no file listing), so that a change elsewhere goes unseen."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return False
    own = getattr(inputs, "fingerprint", None)
    if isinstance(own() if callable(own) else own, str):
        return False
    subset = _subset_parts(inputs)
    if subset is not None:
        return identity_is_sampled(subset[0])
    return file_listing(inputs) is None


def _sampled_items(inputs: Any) -> str:
    """A digest of a Dataset's first, middle and last items."""
    n = len(inputs)
    digest = hashlib.blake2b(digest_size=16)
    for index in sorted({0, n // 2, n - 1} if n else set()):
        item = inputs[index]
        item = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(item, (torch.Tensor, np.ndarray)):
            _update_tensor(digest, torch.as_tensor(item))
        else:
            digest.update(repr(item).encode())
    return digest.hexdigest()


def _subset_parts(inputs: Any) -> tuple[Any, list[int]] | None:
    if isinstance(inputs, torch.utils.data.Subset):
        return inputs.dataset, [int(i) for i in inputs.indices]
    return None


def file_listing(inputs: Any) -> list | None:
    """The ``(path, ...)`` entries of a dataset that lists its files, as torchvision's
    ``ImageFolder`` / ``DatasetFolder`` do (``samples``, or ``imgs``); None otherwise."""
    for name in ("samples", "imgs"):
        listing = getattr(inputs, name, None)
        if (isinstance(listing, (list, tuple)) and listing
                and all(isinstance(entry, (list, tuple)) and entry
                        and isinstance(entry[0], (str, os.PathLike)) for entry in listing)):
            return list(listing)
    return None


def extractor_identity(extractor: Any) -> dict[str, Any]:
    """Model digest (weights and structure), layer, preprocessing and settings of an extractor
    (or any callable)."""
    model = getattr(extractor, "model", None)
    if isinstance(model, nn.Module) and hasattr(extractor, "layer"):
        dtype = next((t.dtype for t in list(model.parameters()) + list(model.buffers())
                      if t.is_floating_point()), torch.float32)
        return {"model": module_digest(model), "model_structure": structure_digest(model),
                "layer": str(extractor.layer),
                "preprocess": callable_identity(getattr(extractor, "preprocess", None)),
                "model_dtype": str(dtype).replace("torch.", ""),
                "settings": _describe({key: getattr(extractor, key, None) for key in
                                       ("tokens", "prefix_tokens", "output_index", "reduce")}, 0)}
    return {"extractor": callable_identity(extractor)}
