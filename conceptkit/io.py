"""Save and load conceptkit objects without pickle.

Every saved object is one ``.safetensors`` file: the tensors in the safetensors body, and
everything else as JSON in the safetensors header's ``__metadata__`` under the key
``"conceptkit"``. Loading parses a JSON header and copies raw little-endian buffers; it never
unpickles and never executes code. The JSON carries ``kind`` (what was saved) and
``format_version`` so that a file from another format version is refused with a clear message.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_NAME = "conceptkit"
_MAX_HEADER = 100 * 1024 * 1024  # a header larger than this is certainly not ours


class FormatError(ValueError):
    """A file is not a valid conceptkit save (wrong kind, version, truncated or tampered)."""


def json_ready(value: Any, *, strict: bool = False, finite: bool = True) -> Any:
    """``value`` as plain JSON types: dicts with string keys, lists, numbers, strings, None.

    Arrays and tensors become (nested) lists and numpy scalars plain numbers. With
    ``finite=True`` (reports) NaN and infinities become ``None`` so that the output is strict
    JSON; ``finite=False`` keeps them (file metadata, read back by Python's ``json``). Values of
    any other type raise a ``TypeError`` with ``strict=True`` and become ``str(value)`` otherwise.
    """
    if isinstance(value, dict):
        return {str(key): json_ready(item, strict=strict, finite=finite)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item, strict=strict, finite=finite) for item in value]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist(), strict=strict, finite=finite)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) or not finite else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return value.as_posix() if not strict else str(value)
    if strict:
        raise TypeError(f"cannot store a {type(value).__name__} in JSON metadata: {value!r}")
    return str(value)


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented UTF-8 JSON; non-finite numbers become ``null``
    (``allow_nan=False`` guarantees the file is valid JSON)."""
    path = Path(path)
    text = json.dumps(json_ready(payload), indent=2, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def save_file(path: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any], *,
              kind: str, version: int) -> Path:
    """Write ``tensors`` and JSON ``meta`` to ``path`` atomically (temp file + rename)."""
    from safetensors.torch import save_file as _save

    path = Path(path)
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"`path` {str(path)!r} is a directory; give a file name such as "
                                f"'{path / (kind + '.safetensors')}'.")
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {}
    for key, value in tensors.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.array(value))  # np.array copies: no shared storage
        body[key] = value.detach().cpu().contiguous().clone()
    header = {"format": FORMAT_NAME, "kind": kind, "format_version": int(version), "meta": json_ready(meta, strict=True, finite=False)}
    tmp = path.with_name(path.name + ".tmp")
    _save(body, str(tmp), metadata={FORMAT_NAME: json.dumps(header)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the writer creates the file 0600; give it normal permissions
    os.replace(tmp, path)
    return path


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise FormatError(f"`path` {str(path)!r} is truncated: {size} bytes, too short for a "
                              f"safetensors header.")
        (n,) = struct.unpack("<Q", prefix)
        if n > _MAX_HEADER or 8 + n > size:
            raise FormatError(f"`path` {str(path)!r} is truncated or not a safetensors file: its header "
                              f"claims {n} bytes but the file has {size}.")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"`path` {str(path)!r} has a corrupted header (not valid JSON).") from err
    if not isinstance(header, dict):
        raise FormatError(f"`path` {str(path)!r} has a corrupted header (not a JSON object).")
    return header, 8 + n


def _check_layout(path: Path, header: dict, data_start: int) -> None:
    """Refuse headers whose tensor entries lie about dtypes, shapes or offsets."""
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1}
    body = path.stat().st_size - data_start
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = int(np.prod(shape)) if len(shape) else 1
            nbytes = count * sizes[dtype]
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"`path` {str(path)!r}: tensor {key!r} has a malformed header entry.") from err
        if any(int(s) < 0 for s in shape) or not (0 <= start <= end <= body) or end - start != nbytes:
            raise FormatError(f"`path` {str(path)!r}: the header of tensor {key!r} does not match the "
                              f"file (offsets {start}..{end}, {nbytes} bytes expected, body {body}); "
                              f"the file is truncated or was tampered with.")
        spans.append((start, end))
    spans.sort()
    for (_, e0), (s1, _) in zip(spans, spans[1:]):
        if s1 < e0:
            raise FormatError(f"`path` {str(path)!r}: tensors overlap in the file; it was tampered with.")


def _header_of(path: Path) -> tuple[dict, int]:
    """The safetensors header of an existing, readable file, with clear errors otherwise."""
    if not path.exists():
        raise FileNotFoundError(f"`path` {str(path)!r} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"`path` {str(path)!r} is a directory, not a saved conceptkit file.")
    try:
        return _read_header(path)
    except PermissionError as err:
        raise PermissionError(f"`path` {str(path)!r} cannot be read: permission denied.") from err


def load_file(path: str | os.PathLike, *, kind: str, version: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_file`; check its kind and format version."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as _load

    path = Path(path)
    header, data_start = _header_of(path)
    meta_raw = header.get("__metadata__", {}) or {}
    if not isinstance(meta_raw, dict) or FORMAT_NAME not in meta_raw:
        raise FormatError(f"`path` {str(path)!r} is a safetensors file but not a conceptkit save "
                          f"(no '{FORMAT_NAME}' metadata).")
    try:
        info = json.loads(meta_raw[FORMAT_NAME])
    except (TypeError, json.JSONDecodeError) as err:
        raise FormatError(f"`path` {str(path)!r} has corrupted conceptkit metadata.") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise FormatError(f"`path` {str(path)!r} has corrupted conceptkit metadata.")
    if info.get("kind") != kind:
        raise FormatError(f"`path` {str(path)!r} holds a {info.get('kind')!r}, not a {kind!r}.")
    if info.get("format_version") != version:
        raise FormatError(f"`path` {str(path)!r} was written with {kind} format version "
                          f"{info.get('format_version')!r}; this conceptkit reads version {version}. "
                          f"Re-create it with this version of conceptkit.")
    _check_layout(path, header, data_start)
    try:
        tensors = _load(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise FormatError(f"`path` {str(path)!r} is damaged: {err}") from err
    meta = info.get("meta", {})
    if not isinstance(meta, dict):
        raise FormatError(f"`path` {str(path)!r} has corrupted conceptkit metadata.")
    return tensors, meta


def peek_kind(path: str | os.PathLike) -> tuple[str, int]:
    """Return ``(kind, format_version)`` of a saved file without loading its tensors."""
    path = Path(path)
    header, _ = _header_of(path)
    meta_raw = header.get("__metadata__", {}) or {}
    try:
        info = json.loads(meta_raw[FORMAT_NAME])
        return str(info["kind"]), int(info["format_version"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise FormatError(f"`path` {str(path)!r} is not a conceptkit save.") from err
