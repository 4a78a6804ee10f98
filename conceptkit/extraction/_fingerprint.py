"""Fingerprints of what determines an activation store's content.

A store written by :func:`~conceptkit.extraction.write_store` records a fingerprint of the model
weights, the layer, the preprocessing, the inputs, the number of inputs, the chunk size, the
layout and the dtype. A rerun into the same directory resumes only when the fingerprint matches;
anything else would mix the chunks of two different extractions.

Digests are BLAKE2b over raw tensor bytes (with names, shapes and dtypes), so they cost one pass
over the weights and, for tensor inputs, over the images; both are small next to the forward
passes that fill the store. A Dataset is identified by its ``fingerprint`` attribute when it has
one (a string or a method returning one); a dataset that lists its files (torchvision's
``ImageFolder``: ``samples``) by every file's path, size and modification time, its transforms
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


def callable_identity(obj: Any) -> str | None:
    """A stable description of a preprocessing callable (``None`` for no preprocessing).

    Modules are identified by class and weights, functions by their code and the values they
    close over, ``functools.partial`` by its function and arguments, other objects (torchvision
    transforms) by their ``repr`` when it lists parameters, else by their attributes. Memory
    addresses never enter a description, so it is the same in every process.
    """
    return None if obj is None else _describe(obj, 0)


_MAX_DEPTH = 6


def _describe(value: Any, depth: int) -> str:
    if depth > _MAX_DEPTH:
        return f"<{type(value).__qualname__}>"
    deeper = depth + 1
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"tensor:{tensor_digest(value)}"
    if isinstance(value, nn.Module):
        return f"module:{module_digest(value)}:{_strip_addresses(repr(value))}"
    if isinstance(value, dict):
        items = sorted((str(k), _describe(v, deeper)) for k, v in value.items())
        return "{" + ",".join(f"{k}={v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_describe(v, deeper) for v in value) + "]"
    if isinstance(value, (set, frozenset)):  # in an order that is the same in every process
        return "{" + ",".join(sorted(_describe(v, deeper) for v in value)) + "}"
    if isinstance(value, functools.partial):
        return (f"partial:{_describe(value.func, deeper)}:{_describe(value.args, deeper)}:"
                f"{_describe(value.keywords, deeper)}")
    if isinstance(value, types.MethodType):
        return f"method:{_describe(value.__func__, deeper)}:{_describe(value.__self__, deeper)}"
    if isinstance(value, types.FunctionType):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(_code_identity(value.__code__, 0).encode())
        cells = [cell.cell_contents for cell in (value.__closure__ or ()) if _has_contents(cell)]
        digest.update(_describe(cells, deeper).encode())
        digest.update(_describe(value.__defaults__ or (), deeper).encode())
        read = _globals_read(value, depth)
        if read:  # only then: the digests of functions that read no global stay as they were
            digest.update(_describe(read, deeper).encode())
        return f"function:{value.__module__}.{value.__qualname__}:{digest.hexdigest()}"
    if isinstance(value, (types.BuiltinFunctionType, types.ModuleType, type)):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', value.__name__)}"
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    text = repr(value)
    if " at 0x" not in text:
        return f"object:{name}:{text}"
    return f"object:{name}:{_describe(getattr(value, '__dict__', {}), deeper)}"


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
                stat = os.stat(path)
                state = f"{stat.st_size}:{stat.st_mtime_ns}"
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
    """Model digest, layer, preprocessing and settings of an extractor (or any callable)."""
    model = getattr(extractor, "model", None)
    if isinstance(model, nn.Module) and hasattr(extractor, "layer"):
        dtype = next((t.dtype for t in list(model.parameters()) + list(model.buffers())
                      if t.is_floating_point()), torch.float32)
        return {"model": module_digest(model), "layer": str(extractor.layer),
                "preprocess": callable_identity(getattr(extractor, "preprocess", None)),
                "model_dtype": str(dtype).replace("torch.", ""),
                "settings": _describe({key: getattr(extractor, key, None) for key in
                                       ("tokens", "prefix_tokens", "output_index", "reduce")}, 0)}
    return {"extractor": callable_identity(extractor)}
