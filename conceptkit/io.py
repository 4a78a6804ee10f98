"""Save and load conceptkit objects without pickle.

Every saved object is one ``.safetensors`` file: the tensors in the safetensors body, and
everything else as JSON in the safetensors header's ``__metadata__`` under the key
``"conceptkit"``. Loading parses a JSON header and copies raw little-endian buffers; it never
unpickles and never executes code. The JSON carries ``kind`` (what was saved) and
``format_version`` so that a file from another format version is refused with a clear message.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

FORMAT_NAME = "conceptkit"


class JsonLimits(NamedTuple):
    """What :func:`parse_json` accepts before it parses: bytes, containers (lists and objects)
    and values (every list item, key and value; containers included)."""

    max_bytes: int
    max_containers: int
    max_values: int


#: The safetensors header of a conceptkit file and the conceptkit metadata inside it (each).
#: The largest headers conceptkit writes, measured: a label-free CBM over a 20,000-word
#: vocabulary and 1,000 classes 1.6 MB, 108 containers, 52,000 values (its metadata); a CBM
#: with 20,000 concept names 1.0 MB, 23 containers, 21,000 values; an atlas grows by 405 bytes,
#: 12 containers and 49 values per concept (4 exemplar tensors), so 1,000 concepts over 1,000
#: classes make 0.45 MB, 12,000 containers, 52,000 values; an explanation by 390 bytes, 9
#: containers and 51 values per concept; the shipped weights at most 18 KB. The limits are 10
#: times those (an atlas of up to about 16,000 concepts) and bound what a hostile header costs
#: before it is refused: at most 2 s and +130 MB measured just under them, where 30 MiB of
#: empty lists took 11.7 s and +1.2 GB.
HEADER_LIMITS = JsonLimits(max_bytes=16 * 1024 * 1024, max_containers=200_000,
                           max_values=1_000_000)
_MAX_HEADER = HEADER_LIMITS.max_bytes  # a header larger than this is certainly not ours


class FormatError(ValueError):
    """A file is not a valid conceptkit save (wrong kind, version, truncated or tampered)."""


#: What rebuilding an object from the parts of a damaged file raises: missing keys, parts of the
#: wrong type, shape or value, out-of-range indices and numbers.
DAMAGE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


@contextlib.contextmanager
def loading(path: str | os.PathLike, what: str,
            also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """The one loader wrapper: errors raised while an object is rebuilt from the file at
    ``path`` become a :class:`FormatError` naming the file (``"`path` ... is not a valid
    {what}: ..."``). Every conceptkit loader rebuilds its object inside this block, so that a
    tampered file is always reported the same way. ``also`` adds error types of that loader
    (``RuntimeError`` of ``load_state_dict`` for weights files)."""
    try:
        yield
    except FormatError:
        raise
    except DAMAGE_ERRORS + tuple(also) as err:
        raise FormatError(f"`path` {str(path)!r} is not a valid {what}: {err}") from err


def json_ready(value: Any, *, strict: bool = False, finite: bool = True) -> Any:
    """``value`` as plain JSON types: dicts with string keys, lists, numbers, strings, None.

    Arrays and tensors become (nested) lists, numpy scalars plain numbers and devices strings. With
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
    if isinstance(value, torch.device):
        return str(value)
    if strict:
        hint = ""
        if isinstance(value, (np.random.Generator, np.random.RandomState, torch.Generator)):
            hint = " (a random generator cannot be saved: pass an int seed instead)"
        raise TypeError(f"cannot store a {type(value).__name__} in JSON metadata{hint}: {value!r}")
    return str(value)


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented UTF-8 JSON; non-finite numbers become ``null``
    (``allow_nan=False`` guarantees the file is valid JSON)."""
    path = Path(path)
    text = json.dumps(json_ready(payload), indent=2, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def file_state(path: str | os.PathLike) -> tuple[int, int, int, int, int]:
    """``(size, mtime_ns, ctime_ns, inode, device)`` of a file: what caches and fingerprints of
    files are keyed on. A file replaced with its modification time kept (``cp -p``, ``rsync
    -t``, ``os.utime``) or rewritten in place still changes its change time, size or inode."""
    stat = os.stat(path)
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


def as_path(path: Any, name: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path`, or a clear error for bytes and other types."""
    if isinstance(path, (bytes, bytearray)):
        raise TypeError(f"`{name}` is a bytes path ({bytes(path)[:60]!r}); pass a str, e.g. "
                        f"os.fsdecode(path).")
    try:
        return Path(path)
    except TypeError as err:
        raise TypeError(f"`{name}` must be a str or os.PathLike file path; got "
                        f"{type(path).__name__}.") from err


def resolve_target(path: Path, name: str = "path") -> Path:
    """The file a path names: a symbolic link is followed to the file it points to (saving
    replaces that file and keeps the link); a link loop is a clear ``OSError``."""
    if not path.is_symlink():
        return path
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as err:  # "Symlink loop" (RuntimeError before Python 3.13)
        raise OSError(errno.ELOOP, f"`{name}` {str(path)!r} is a symbolic link loop (it points, "
                      f"through links, back to itself); remove or fix the link.") from err


def write_atomic(target: Path, write: Any, *, where: str, exclusive: bool = False,
                 mode: int | None = None) -> bool:
    """Write ``target`` through a temporary file in its directory, then rename it into place.

    The temporary file is created with ``O_EXCL`` under a random name (a planted symlink is never
    followed); ``write(fh)`` fills it; it gets permission bits ``mode`` (default: a new file's
    under the umask) and replaces ``target`` (``exclusive``: is linked to ``target`` only when
    no file of that name exists, returning False otherwise). Any failure removes the temporary
    file; an ``OSError`` (a full disk, a read-only directory) is re-raised with ``where`` (the
    destination, as the user knows it) and the reason, keeping its errno.
    """
    import contextlib
    import tempfile

    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        with contextlib.suppress(OSError):
            os.fchmod(fd, mode)  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, target)
            tmp = None
            return True
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: check, then rename
            if target.exists() or target.is_symlink():
                return False
            os.replace(tmp, target)
            tmp = None
        return True
    except OSError as err:
        if isinstance(err, FileExistsError):
            raise
        raise OSError(err.errno or errno.EIO, f"cannot write {where}: "
                      f"{err.strerror or err}") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


#: The format versions, per kind, that conceptkit wrote before every file carried a content
#: digest (0.1.0, and the weights shipped in ``datasets/weights``): a file of one of these may
#: lack its digest and is then checked by its loader alone (the shipped weights by the SHA-256
#: that ``conceptkit.datasets._shipped`` pins). A file of any other kind or version (an atlas, a
#: discovered CBM, an explanation of version 2, a world model or reference CNN of version 2 as
#: ``train_world`` and ``train_reference`` write them, and every version to come) was always
#: saved with one, so a missing digest means that it was removed.
_WRITTEN_WITHOUT_DIGEST: dict[str, tuple[int, ...]] = {
    "ConceptBank": (1,), "ClassConcepts": (1,), "concept_bottleneck_model": (1,),
    "label_free_cbm": (1,), "posthoc_cbm": (1,), "clip_text_embeddings": (1,),
    "reference_cnn": (1,), "world_model": (1,)}


def _content_digest(info: dict, body: dict[str, torch.Tensor]) -> str:
    """BLAKE2b of the metadata (canonical JSON, without the digest) and every tensor's name,
    dtype, shape and bytes: a loaded file whose digest differs was damaged or edited."""
    digest = hashlib.blake2b(digest_size=16)
    plain = {key: value for key, value in info.items() if key != "digest"}
    digest.update(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(body):
        tensor = body[key].detach().cpu().contiguous()
        digest.update(f"|{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        digest.update(memoryview(tensor.reshape(-1).numpy()).cast("B"))
    return digest.hexdigest()


def save_file(path: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any], *,
              kind: str, version: int) -> Path:
    """Write ``tensors`` and JSON ``meta`` to ``path`` atomically (temp file + rename).

    An existing file is replaced only if it may be written: a read-only file is refused (a
    ``PermissionError``), a replaced file keeps its permission bits, and a symbolic link is
    followed (the file it points to is replaced, the link stays). A read-only directory or a
    full disk gives an ``OSError`` naming ``path``, and leaves no temporary file behind.
    """
    import stat

    from safetensors.torch import save as _serialise

    path = as_path(path)
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"`path` {str(path)!r} is a directory; give a file name such as "
                                f"'{path / (kind + '.safetensors')}'.")
    target = resolve_target(path)
    mode = None
    if target.exists():
        current = stat.S_IMODE(target.stat().st_mode)
        if not os.access(target, os.W_OK) or not current & 0o222:
            raise PermissionError(errno.EACCES, f"`path` {str(path)!r} is read-only; conceptkit "
                                  f"does not replace it. Make it writable (chmod u+w) or choose "
                                  f"another file name.")
        mode = current
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the folder of `path` {str(path)!r}: "
                      f"{err.strerror or err}") from err
    body = {}
    for key, value in tensors.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.array(value))  # np.array copies: no shared storage
        body[key] = value.detach().cpu().contiguous().clone()
    header = {"format": FORMAT_NAME, "kind": kind, "format_version": int(version),
              "meta": json_ready(meta, strict=True, finite=False)}
    header["digest"] = _content_digest(header, body)
    data = _serialise(body, metadata={FORMAT_NAME: json.dumps(header)})
    write_atomic(target, lambda fh: fh.write(data), where=f"`path` {str(path)!r}", mode=mode)
    return path


_MAX_DEPTH = 64  # JSON nesting deeper than this is not something conceptkit writes


_LONG_INTEGER = re.compile(rb"(?<![\d.])\d{20,}(?![\d.eE])")  # digits of a float do not count


def _outside_strings(data: bytes) -> np.ndarray:
    """The bytes of the JSON text ``data`` outside its strings, each string kept as its two
    quotes. Escaped backslashes, then escaped quotes, are blanked (``bytes.replace`` pairs them
    left to right as JSON does), so every quote left opens or closes a string; a running XOR of
    the quotes marks what lies inside. Linear in the length and a few bytes of memory per byte
    (a regular expression over the strings kept ~100 bytes per character)."""
    plain = data.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    codes = np.frombuffer(plain, dtype=np.uint8)
    quotes = codes == 34
    inside = np.logical_xor.accumulate(quotes)  # True from an opening quote to its closing one
    inside &= ~quotes
    return codes[~inside]


def _json_counts(codes: np.ndarray) -> tuple[int, int]:
    """``(containers, values)`` of JSON text given as its bytes outside strings."""
    containers = max(int(np.count_nonzero((codes == 91) | (codes == 123))),   # '[' '{'
                     int(np.count_nonzero((codes == 93) | (codes == 125))))   # ']' '}'
    # every item after a list's first follows a comma, every key a comma or a brace and every
    # value of an object a colon: containers + commas + colons bounds the values parsed
    values = containers + int(np.count_nonzero(codes == 44)) + int(np.count_nonzero(codes == 58))
    return containers, values


def json_size(value: Any, indent: int | None = None) -> tuple[int, int, int]:
    """``(bytes, containers, values)`` of ``value`` written as JSON (with ``indent``), counted
    as :func:`parse_json` counts them (so that a writer can refuse what a reader would)."""
    data = json.dumps(value, indent=indent, default=str).encode("utf-8", "surrogatepass")
    return (len(data), *_json_counts(_outside_strings(data)))


def parse_json(raw: bytes | str, path: Path, what: str, *,
               limits: JsonLimits = HEADER_LIMITS) -> Any:
    """Parse JSON from a file; anything malformed, larger than ``limits`` (bytes, containers,
    values), nested deeper than 64 levels or holding an integer of more than 19 digits becomes
    a :class:`FormatError` naming the file (never a RecursionError, a ValueError about integer
    digits or gigabytes of Python objects). The checks are a numpy scan and a regular
    expression over what lies outside strings, linear in the text's length, and run before
    anything is parsed."""
    if not isinstance(raw, (bytes, str)):
        raise FormatError(f"`path` {str(path)!r} has a corrupted {what} (not JSON text).")
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if len(data) > limits.max_bytes:
        raise FormatError(f"`path` {str(path)!r} has a corrupted {what}: {len(data)} bytes of "
                          f"JSON, more than the {limits.max_bytes} conceptkit reads.")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as err:
        raise FormatError(f"`path` {str(path)!r} has a corrupted {what} (not UTF-8).") from err
    codes = _outside_strings(data)  # numbers, brackets, separators, literals and ""
    opened = (codes == 91) | (codes == 123)   # '[' '{'
    closed = (codes == 93) | (codes == 125)   # ']' '}'
    containers, values = _json_counts(codes)
    if containers > limits.max_containers or values > limits.max_values:
        raise FormatError(f"`path` {str(path)!r} has a corrupted {what}: {containers} JSON lists "
                          f"and objects holding {values} values, more than conceptkit writes "
                          f"(at most {limits.max_containers} lists and objects and "
                          f"{limits.max_values} values).")
    brackets = np.flatnonzero(opened | closed)
    steps = np.where(opened[brackets], 1, -1)
    if brackets.size > _MAX_DEPTH and int(np.cumsum(steps).max()) > _MAX_DEPTH:
        raise FormatError(f"`path` {str(path)!r} has a corrupted {what}: JSON nested more than "
                          f"{_MAX_DEPTH} levels deep.")
    if _LONG_INTEGER.search(codes.tobytes()):
        raise FormatError(f"`path` {str(path)!r} has a corrupted {what}: an integer of 20 or "
                          f"more digits.")
    try:
        return json.loads(text)
    except (ValueError, RecursionError, TypeError) as err:
        raise FormatError(f"`path` {str(path)!r} has a corrupted {what} (not valid JSON: "
                          f"{type(err).__name__}).") from err


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise FormatError(f"`path` {str(path)!r} is truncated: {size} bytes, too short for a "
                              f"safetensors header.")
        (n,) = struct.unpack("<Q", prefix)
        if 8 + n > size:
            raise FormatError(f"`path` {str(path)!r} is truncated or not a safetensors file: its header "
                              f"claims {n} bytes but the file has {size}.")
        if n > _MAX_HEADER:
            raise FormatError(f"`path` {str(path)!r} has a corrupted header: {n} bytes of JSON, "
                              f"more than the {_MAX_HEADER} conceptkit reads.")
        raw = fh.read(n)
    header = parse_json(raw, path, "header")
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
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
                raise TypeError("non-integer shape")
            nbytes = math.prod(shape) * sizes[dtype]  # Python ints: no overflow
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"`path` {str(path)!r}: tensor {key!r} has a malformed header entry.") from err
        if (any(s < 0 for s in shape) or not all(isinstance(v, int) for v in (start, end))
                or not (0 <= start <= end <= body) or end - start != nbytes):
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
    path = resolve_target(path)
    if not path.exists():
        raise FileNotFoundError(f"`path` {str(path)!r} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"`path` {str(path)!r} is a directory, not a saved conceptkit file.")
    if not path.is_file():  # a pipe or a device: opening it could wait forever
        raise FormatError(f"`path` {str(path)!r} is not a regular file (a pipe, a socket or a "
                          f"device); conceptkit reads saved files only.")
    try:
        return _read_header(path)
    except PermissionError as err:
        raise PermissionError(f"`path` {str(path)!r} cannot be read: permission denied.") from err


def load_file(path: str | os.PathLike, *, kind: str,
              version: int | tuple[int, ...]) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_file`; check its kind and format version (one, or
    a tuple of the versions this conceptkit reads, the newest last)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as _load

    path = as_path(path)
    header, data_start = _header_of(path)
    meta_raw = header.get("__metadata__", {}) or {}
    if not isinstance(meta_raw, dict) or FORMAT_NAME not in meta_raw:
        raise FormatError(f"`path` {str(path)!r} is a safetensors file but not a conceptkit save "
                          f"(no '{FORMAT_NAME}' metadata).")
    if not isinstance(meta_raw[FORMAT_NAME], str):
        raise FormatError(f"`path` {str(path)!r} has corrupted conceptkit metadata.")
    info = parse_json(meta_raw[FORMAT_NAME], path, "conceptkit metadata")
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise FormatError(f"`path` {str(path)!r} has corrupted conceptkit metadata.")
    if info.get("kind") != kind:
        raise FormatError(f"`path` {str(path)!r} holds a {info.get('kind')!r}, not a {kind!r}.")
    versions = version if isinstance(version, tuple) else (version,)
    if info.get("format_version") not in versions or isinstance(info.get("format_version"), bool):
        readable = (f"version {versions[0]}" if len(versions) == 1
                    else f"versions {', '.join(map(str, versions))}")
        raise FormatError(f"`path` {str(path)!r} was written with {kind} format version "
                          f"{info.get('format_version')!r}; this conceptkit reads {readable}. "
                          f"Re-create it with this version of conceptkit.")
    _check_layout(path, header, data_start)
    try:
        tensors = _load(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise FormatError(f"`path` {str(path)!r} is damaged: {err}") from err
    meta = info.get("meta", {})
    if not isinstance(meta, dict):
        raise FormatError(f"`path` {str(path)!r} has corrupted conceptkit metadata.")
    if "digest" not in info:
        if info["format_version"] not in _WRITTEN_WITHOUT_DIGEST.get(kind, ()):
            raise FormatError(f"`path` {str(path)!r} is damaged: its content digest is missing, "
                              f"but every {kind} file of format version "
                              f"{info['format_version']} is saved with one (the file was edited "
                              f"after it was saved).")
    elif info["digest"] != _content_digest(info, tensors):
        raise FormatError(f"`path` {str(path)!r} is damaged: its content does not match the "
                          f"digest written with it (the file was altered after it was saved).")
    return tensors, meta


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the bytes of the file ``path``, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def carries_digest(path: str | os.PathLike) -> bool:
    """Whether a saved file carries a content digest (which :func:`load_file` then checks),
    without loading its tensors; False where its metadata cannot be read."""
    path = as_path(path)
    header, _ = _header_of(path)
    meta_raw = header.get("__metadata__", {}) or {}
    try:
        info = parse_json(meta_raw[FORMAT_NAME], path, "conceptkit metadata")
    except (FormatError, KeyError, TypeError):
        return False
    return isinstance(info, dict) and isinstance(info.get("digest"), str)


def peek_kind(path: str | os.PathLike) -> tuple[str, int]:
    """Return ``(kind, format_version)`` of a saved file without loading its tensors."""
    path = as_path(path)
    header, _ = _header_of(path)
    meta_raw = header.get("__metadata__", {}) or {}
    try:
        info = parse_json(meta_raw[FORMAT_NAME], path, "conceptkit metadata")
        return str(info["kind"]), int(info["format_version"])
    except FormatError:
        raise  # it says what is wrong (malformed, too large, too deep)
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise FormatError(f"`path` {str(path)!r} is not a conceptkit save.") from err
