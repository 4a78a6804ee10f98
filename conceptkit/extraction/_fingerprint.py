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

import contextvars
import dis
import functools
import hashlib
import os
import sys
import types
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io import file_state
from ._store_read import check_store_inputs

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
    """``{"model_digest", "model_structure", "model_code"}``: :func:`module_digest` (the
    weights), :func:`structure_digest` (the structure) and :func:`code_digest` (its own code and
    the settings kept in plain objects) of a model, as a saved explanation records them."""
    return {"model_digest": module_digest(module), "model_structure": structure_digest(module),
            "model_code": code_digest(module)}


# code of these packages (and of Python's standard library, and of anything installed in
# site-packages) is named, not described: an upgrade of torch must not make every model another
_LIBRARIES = frozenset({"torch", "torchvision", "timm", "open_clip", "transformers", "numpy",
                        "scipy", "sklearn", "PIL", "safetensors", "conceptkit"})
# bookkeeping of plain objects (a Hugging Face config records the version that wrote it)
_NOT_OBJECT_SETTINGS = _NOT_SETTINGS | {"transformers_version"}
_OBJECT_DEPTH = 3


def _is_library(module_name: Any) -> bool:
    """Whether code of the module named ``module_name`` belongs to an installed library."""
    if not isinstance(module_name, str) or not module_name:
        return True
    root = module_name.split(".")[0]
    if root in _LIBRARIES or root in sys.stdlib_module_names or root == "builtins":
        return True
    file = getattr(sys.modules.get(module_name), "__file__", None) or ""
    return "site-packages" in file or "dist-packages" in file


def code_digest(module: nn.Module) -> str:
    """A hex digest of what a model computes that neither its weights nor its structure show:
    the code of every method of its module classes defined outside the libraries (a
    ``forward`` that calls ``torch.sigmoid`` instead of ``F.relu``), with the constants,
    class attributes and helper functions that code reads, and the settings each submodule
    keeps in plain objects (``self.cfg.scale``, a Hugging Face style config: their plain-valued
    attributes, a few levels deep).

    The same for a model and its ``copy.deepcopy``, in every process; it changes with the
    Python version (bytecode), not with an upgrade of torch, torchvision, timm or open_clip
    (their classes are named by :func:`structure_digest`, not described)."""
    digest = hashlib.blake2b(digest_size=16)
    classes: dict[type, str] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        kind = type(sub)
        if kind not in classes:
            classes[kind] = _class_code(kind)
        digest.update(f"{name}|{classes[kind]}|{_object_settings(sub)}\n".encode())
    return digest.hexdigest()


def _class_code(kind: type) -> str:
    """The code of a module class's own methods (and its non-library bases'), what they read
    and its plain class attributes; empty for a library class."""
    parts: list[str] = []
    seen: set = set()
    for cls in kind.__mro__:
        if cls is object or _is_library(cls.__module__):
            continue
        for attr, value in sorted(vars(cls).items()):
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            if isinstance(value, types.FunctionType):
                defaults = [_plain(v, 0) or type(v).__qualname__ for v in value.__defaults__ or ()]
                cells = [_object_text(cell.cell_contents, 1) or type(cell.cell_contents).__qualname__
                         for cell in (value.__closure__ or ()) if _has_contents(cell)
                         and not isinstance(cell.cell_contents, type)]  # __class__ of super()
                parts.append(f"{cls.__qualname__}.{attr}:{_code_text(value.__code__, 0)}:"
                             f"{defaults}:{cells}")
                _reads(value, 1, seen, parts)
            elif not attr.startswith("__"):
                text = _plain(value, 0)
                if text is not None:
                    parts.append(f"{cls.__qualname__}.{attr}={text}")
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest() if parts else ""


def _object_settings(module: nn.Module) -> str:
    """A module's public attributes that hold plain objects (a config), by their plain-valued
    attributes (what :func:`module_settings` leaves out)."""
    parts = []
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key in _NOT_SETTINGS or "cache" in key.lower():
            continue
        if _plain(value, 0) is not None:
            continue  # a plain setting: in the structure
        text = _object_text(value, 0)
        if text is not None:
            parts.append(f"{key}={text}")
    return ",".join(parts)


def _object_text(value: Any, depth: int) -> str | None:
    """A plain value, or a plain object (a config) by its plain-valued public attributes,
    ``_OBJECT_DEPTH`` levels deep; None for modules, functions, classes and the like."""
    plain = _plain(value, _MAX_DEPTH - 2)
    if plain is not None:
        return plain
    if depth >= _OBJECT_DEPTH or isinstance(value, (nn.Module, types.ModuleType, type,
                                                    types.FunctionType, types.MethodType)):
        return None
    if isinstance(value, dict):
        items = [(str(k), _object_text(v, depth + 1)) for k, v in value.items()]
        return "{" + ",".join(sorted(f"{k}={t}" for k, t in items if t is not None)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(_object_text(v, depth + 1)) for v in value) + "]"
    attributes = getattr(value, "__dict__", None)
    if not isinstance(attributes, dict):
        return None
    inner = []
    for key, item in sorted(attributes.items(), key=lambda pair: str(pair[0])):
        if (not isinstance(key, str) or key.startswith("_") or key in _NOT_OBJECT_SETTINGS
                or "cache" in key.lower()):
            continue
        text = _object_text(item, depth + 1)
        if text is not None:
            inner.append(f"{key}={text}")
    return f"object:{type(value).__qualname__}{{" + ",".join(inner) + "}"


def _code_text(code: types.CodeType, depth: int) -> str:
    """:func:`_code_identity`, with constant sets in an order that is the same in every
    process."""
    return _code_identity(code, depth, const=_const_text)


def _const_text(value: Any, depth: int) -> str:
    if isinstance(value, types.CodeType):
        return _code_text(value, depth + 1) if depth < _MAX_DEPTH else "<code>"
    if isinstance(value, frozenset):
        return "frozenset{" + ",".join(sorted(_const_text(v, depth) for v in value)) + "}"
    if isinstance(value, tuple):
        return "(" + ",".join(_const_text(v, depth) for v in value) + ")"
    return repr(value)


def _codes(code: types.CodeType, depth: int = 0) -> list[types.CodeType]:
    """A code object and those nested in it (lambdas, comprehensions), a few levels deep."""
    found = [code]
    if depth < _MAX_DEPTH:
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.extend(_codes(const, depth + 1))
    return found


def _library_object(value: Any) -> bool:
    name = value.__name__ if isinstance(value, types.ModuleType) else value.__module__
    return _is_library(name)


def _reads(function: types.FunctionType, depth: int, seen: set, out: list[str]) -> None:
    """Append to ``out`` what ``function`` reads from its module beyond its own code: plain
    globals (``SCALE``), the attributes it reads through modules and classes of its own
    (``Cfg.scale``, ``mycfg.SCALE``, ``helpers.normalize``), and the code of the global
    functions it calls, and what they read, down to ``_MAX_DEPTH`` calls."""
    if depth > _MAX_DEPTH or function in seen:
        return
    seen.add(function)
    namespace = function.__globals__
    for code in _codes(function.__code__):
        instructions = list(dis.get_instructions(code))
        for i, ins in enumerate(instructions):
            if ins.opname != "LOAD_GLOBAL" or ins.argval not in namespace:
                continue
            name, value = ins.argval, namespace[ins.argval]
            j = i + 1
            while (isinstance(value, (types.ModuleType, type)) and not _library_object(value)
                   and j < len(instructions)
                   and instructions[j].opname in ("LOAD_ATTR", "LOAD_METHOD")):
                try:
                    value = getattr(value, instructions[j].argval)
                except Exception:  # noqa: BLE001 - an attribute set later, a failing property
                    break
                name, j = f"{name}.{instructions[j].argval}", j + 1
            _read_value(name, value, depth, seen, out)


def _read_value(name: str, value: Any, depth: int, seen: set, out: list[str]) -> None:
    if isinstance(value, (types.ModuleType, type)):
        return  # named by the code that reads it
    if isinstance(value, types.FunctionType):
        if not _is_library(value.__module__) and value not in seen:
            out.append(f"{name}:{_code_text(value.__code__, 0)}")
            _reads(value, depth + 1, seen, out)
        return
    if isinstance(value, nn.Module):
        return  # a model: described (weights, structure) where it is an attribute or global
    text = _object_text(value, 1)
    if text is not None:
        out.append(f"{name}={text}")


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

# while preprocess_identity describes a callable: (functions seen, what their code reads)
_READS: contextvars.ContextVar[tuple[set, list[str]] | None] = contextvars.ContextVar(
    "conceptkit_reads", default=None)


def preprocess_identity(obj: Any) -> tuple[str | None, str | None]:
    """:func:`callable_identity` of a preprocessing callable, and a digest of what its code
    reads beyond what that description holds (``None``, ``None`` for no preprocessing): the
    attributes read through modules and classes of the user's own (``x * Cfg.scale``,
    ``x * mycfg.SCALE``), the code of helper functions however deep they call each other
    (down to ``_MAX_DEPTH`` calls) and what they read, and the code of its modules' own
    classes (:func:`code_digest`). Recorded as a field of its own (``preprocess_reads``), so
    that the description, and with it every file and store recorded before, stays as it was."""
    if obj is None:
        return None, None
    sink: tuple[set, list[str]] = (set(), [])
    token = _READS.set(sink)
    try:
        described = _describe(obj, 0)
    finally:
        _READS.reset(token)
    reads = hashlib.blake2b("\n".join(sink[1]).encode(), digest_size=16).hexdigest()
    return described, reads


def _describe(value: Any, depth: int, legacy: bool = False) -> str:
    if depth > _MAX_DEPTH:
        return f"<{type(value).__qualname__}>"
    deeper = depth + 1
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"tensor:{tensor_digest(value)}"
    if isinstance(value, nn.Module):
        sink = _READS.get()
        if sink is not None:
            sink[1].append(f"module:{code_digest(value)}")
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
        sink = _READS.get()
        if sink is not None:
            sink[1].append(f"{value.__qualname__}:{_code_text(value.__code__, 0)}")
            _reads(value, 0, sink[0], sink[1])
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


def _code_identity(code: types.CodeType, depth: int, const: Any = None) -> str:
    """A digest of a code object's bytecode, constants (nested code objects by their own
    digest, a few levels deep; the rest by ``const(value, depth)``, ``repr`` by default, which
    the records written so far use) and the names it reads."""
    if const is None:
        consts = [_code_identity(c, depth + 1) if isinstance(c, types.CodeType)
                  and depth < _MAX_DEPTH else repr(c) for c in code.co_consts]
    else:
        consts = [const(c, depth) for c in code.co_consts]
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
    check_store_inputs(inputs)  # a DataLoader has no items to identify it by
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
        preprocess, reads = preprocess_identity(getattr(extractor, "preprocess", None))
        # model_code and preprocess_reads: recorded since conceptkit reads them, compared
        # only where a store records them (see write_store)
        return {"model": module_digest(model), "model_structure": structure_digest(model),
                "model_code": code_digest(model), "layer": str(extractor.layer),
                "preprocess": preprocess, "preprocess_reads": reads,
                "model_dtype": str(dtype).replace("torch.", ""),
                "settings": _describe({key: getattr(extractor, key, None) for key in
                                       ("tokens", "prefix_tokens", "output_index", "reduce")}, 0)}
    return {"extractor": callable_identity(extractor)}


def recorded_identity(model: nn.Module, preprocess: Any) -> dict[str, Any]:
    """What a saved object fitted over ``model`` records of it (its ``fitted_with``):
    :func:`model_identity` and the preprocessing's description and what it reads
    (:func:`preprocess_identity`). :func:`identity_differences` compares a model with it."""
    described, reads = preprocess_identity(preprocess)
    return {**model_identity(model), "preprocess": described, "preprocess_reads": reads}


def identity_differences(known: dict[str, Any], model: Any, preprocess: Any,
                         fitted: str) -> tuple[list[str], bool]:
    """How ``model`` and ``preprocess`` differ from what ``known`` (a file's ``fitted_with``, or
    :func:`recorded_identity`) records of what ``fitted`` ("the explanation", "the atlas") was
    fitted with, as far as it is known: the model's differences (weights, structure) in words,
    and whether the given preprocessing differs from the recorded one (False when it matches or
    none is recorded)."""
    differences = []
    if "model_digest" in known and known["model_digest"] != module_digest(model):
        differences.append(f"the model's weights differ from those {fitted} was fitted with "
                           f"(another digest of the parameters and buffers: other values, "
                           f"shapes or dtype)")
    # recorded since the structure is read (earlier files: weights only, compared above)
    if "model_structure" in known and known["model_structure"] != structure_digest(model):
        differences.append(f"the model's structure differs from the one {fitted} was fitted "
                           f"with (a submodule of another type, or other settings: a pooling, "
                           f"an activation, a stride, an eps)")
    # recorded since the model's own code is read (earlier files: not compared)
    if "model_code" in known and known["model_code"] != code_digest(model):
        differences.append(f"the model's code differs from the one {fitted} was fitted with "
                           f"(the code of a module class of its own, such as its forward, or "
                           f"a setting kept in a plain object, such as a config)")
    # files saved before modules' structure and objects' attributes were read hold the
    # description of then: the same preprocessing matches it
    described, reads = preprocess_identity(preprocess)
    differs = "preprocess" in known and known["preprocess"] not in (
        described, callable_identity(preprocess, legacy=True))
    # recorded since what the preprocessing reads is (earlier files: not compared)
    differs = differs or ("preprocess_reads" in known and known["preprocess_reads"] != reads)
    return differences, differs


#: Why a preprocessing with the recorded code differs: what it reads does.
READS_DIFFER = ("its code is the same, but a value it reads through a module or a class "
                "(a constant such as Cfg.scale or config.SCALE) or a helper function it calls "
                "differs")


def shown_identity(identity: str | None) -> str:
    """A preprocessing identity as a message shows it."""
    if identity is None:
        return "no preprocessing"
    return repr(identity if len(identity) <= 120 else identity[:117] + "...")


def preprocess_difference(known: dict[str, Any], preprocess: Any, given: str = "given") -> str:
    """In words, how ``preprocess`` differs from the preprocessing ``known`` records (for a
    ``preprocess`` that :func:`identity_differences` found to differ)."""
    if known.get("preprocess") == callable_identity(preprocess):
        return f"the preprocessing differs: {READS_DIFFER}"
    return (f"the preprocessing differs: fitted with {shown_identity(known.get('preprocess'))}, "
            f"{given} {shown_identity(callable_identity(preprocess))}")
