"""Writing an activation store: the fingerprinted manifest, exclusive temporary files, chunks.

See :mod:`conceptkit.extraction._store_read` for the layout and the guarantees; this module is
also the one import path for everything about stores (it re-exports the reading side).

While a store is being written, each chunk has an *origin* file beside it
(``.chunk-000001.origin``: a tag of the fingerprint it was computed under and the digest of the
bytes its writer wrote), written after the chunk. A writer reuses a chunk it finds only when
its origin records the writer's own fingerprint and the chunk's bytes are those the origin
records (or, for a finished store of the same fingerprint, those its manifest records), and
:func:`finalize_store` refuses a chunk that passes neither: a writer that was still running
when another replaced the store (``overwrite=True``) can never slip its chunks into the new
store. Finalizing removes the origin files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_choice, check_int
from ..io import file_state, json_size, write_atomic
from ._fingerprint import extractor_identity, identity_is_sampled, inputs_identity
from ._store_read import (
    _CHUNK,
    _FIELDS,
    LAYOUTS,
    MANIFEST,
    MANIFEST_LIMITS,
    STORE_FORMAT,
    STORE_VERSION,
    ActivationStore,
    StorePlan,
    _check_chunk_file,
    check_store_inputs,
    chunk_digest,
    chunk_name,
    manifest_digest,
    read_manifest,
    shard_chunks,
    slice_inputs,
    to_layout,
)

_ORIGIN = re.compile(r"\.chunk-(\d{6,})\.origin")

__all__ = ["LAYOUTS", "MANIFEST", "STORE_FORMAT", "STORE_VERSION", "ActivationStore", "StorePlan",
           "chunk_name", "clear_store", "finalize_store", "manifest_digest", "prepare_store",
           "read_manifest", "shard_chunks", "slice_inputs", "to_layout", "write_chunks",
           "write_store"]


def _write_file(target: Path, write: Callable[[BinaryIO], None], *, store: Path,
                exclusive: bool = False) -> bool:
    """:func:`conceptkit.io.write_atomic` with errors that name the store."""
    return write_atomic(target, write, exclusive=exclusive,
                        where=f"{target.name!r} into the activation store {str(store)!r}")


def _save_npy(target: Path, array: np.ndarray, store: Path) -> None:
    _write_file(target, lambda fh: np.save(fh, array, allow_pickle=False), store=store)


def _manifest(plan: StorePlan, layout: str, n_features: int, dtype: str, chunks: list[dict],
              meta: dict, fingerprint: dict) -> dict:
    return {"format": STORE_FORMAT, "version": STORE_VERSION, "n_inputs": plan.n_inputs,
            "chunk_size": plan.chunk_size, "n_chunks": plan.n_chunks, "layout": layout,
            "n_features": n_features, "dtype": dtype, "fingerprint": fingerprint,
            "chunks": chunks, "meta": meta}


#: What a manifest holds besides ``meta``: 161 bytes, 2 lists or objects and 13 values per
#: chunk (measured; see ``MANIFEST_LIMITS``), and at most this much for the rest (the
#: fingerprint and the store's settings take a few kB).
_PER_CHUNK = (161, 2, 13)
_FIXED = (64 * 1024, 1_000, 10_000)


def check_meta(meta: dict | None, n_inputs: int, chunk_size: int) -> None:
    """Refuse, before anything is computed, a ``meta`` too large for the manifest of a store
    of ``n_inputs`` in chunks of ``chunk_size``: a reader refuses manifests over
    ``MANIFEST_LIMITS`` (a hostile manifest must not cost gigabytes), and a store whose every
    chunk was computed and whose manifest could then not be read would be lost."""
    if not meta:
        return
    n_chunks = StorePlan(n_inputs, chunk_size).n_chunks
    size = json_size({"meta": meta}, indent=1)  # as the manifest writes it, one level down
    limits = tuple(MANIFEST_LIMITS)
    room = [limit - fixed - per * n_chunks
            for limit, fixed, per in zip(limits, _FIXED, _PER_CHUNK)]
    if any(used > free for used, free in zip(size, room)):
        raise ValueError(f"`meta` is too large to record in the store's manifest: "
                         f"{size[0]} bytes of JSON, {size[1]} lists and objects, {size[2]} "
                         f"values, beside {n_chunks} chunks; conceptkit reads manifests of at "
                         f"most {limits[0]} bytes, {limits[1]} lists and objects and "
                         f"{limits[2]} values. Keep per-input records out of `meta` (save them "
                         f"beside the store, e.g. labels as a .npy file for `conceptkit atlas "
                         f"--labels`), or record less.")


def _write_manifest(path: Path, manifest: dict, *, exclusive: bool = False) -> bool:
    manifest = {**manifest, "digest": manifest_digest(manifest)}
    data = json.dumps(manifest, indent=1).encode()
    return _write_file(path / MANIFEST, lambda fh: fh.write(data), store=path, exclusive=exclusive)


#: Fingerprint fields recorded since conceptkit reads them, compared only where a store
#: records them: a store written before (without them) is reused as it was, its fingerprint kept.
_WHEN_RECORDED = ("model_code", "preprocess_reads")


def _as_recorded(full: dict, old: dict) -> dict:
    """``full`` without the fields of :data:`_WHEN_RECORDED` that ``old`` does not record."""
    return {key: value for key, value in full.items() if key not in _WHEN_RECORDED or key in old}


def _same_extraction(old: Any, full: dict) -> dict | None:
    """The fingerprint to keep when a store recording ``old`` holds the extraction ``full``
    (``old`` itself, which may lack the fields of :data:`_WHEN_RECORDED`); None otherwise."""
    if not isinstance(old, dict):
        return None
    return old if old == _as_recorded(full, old) else None


def _differences(old: Any, new: dict) -> list[str]:
    if not isinstance(old, dict):
        return ["everything (the store was written without a fingerprint)"]
    new = _as_recorded(new, old)
    keys = [key for key in dict.fromkeys([*new, *old]) if old.get(key) != new.get(key)]
    out = []
    if "model" in old and "model_structure" not in old and "model_structure" in new:
        out.append("how it is fingerprinted: an earlier conceptkit wrote it, recording the "
                   "model's weights but not its structure and describing preprocessing and "
                   "image files less precisely, so it has to be recomputed once")
        keys = [key for key in keys if key != "model_structure"]
    for key in keys:
        name = _FIELDS.get(key, key)
        if isinstance(new.get(key), int) or key in ("layer", "layout", "model_dtype"):
            out.append(f"{name} ({old.get(key)!r} in the store, {new.get(key)!r} now)")
        else:
            out.append(name)
    return out


def _stale(path: Path, why: str) -> ValueError:
    return ValueError(f"`path` {str(path)!r} already holds {why}; its chunks cannot be reused. "
                      f"Pass overwrite=True (on the command line --overwrite) to replace the "
                      f"store, or choose another directory.")


def clear_store(path: str | os.PathLike) -> None:
    """Delete a store's own files (manifest, chunks, temporary files); nothing else."""
    path = Path(path)
    if not path.is_dir():
        return
    for item in path.iterdir():
        name = item.name
        ours = (name == MANIFEST or _CHUNK.fullmatch(name) is not None
                or _ORIGIN.fullmatch(name) is not None
                or (name.endswith(".tmp") and (name.startswith(".chunk-")
                                               or name.startswith("..chunk-")
                                               or name.startswith(f".{MANIFEST}."))))
        if ours and (item.is_symlink() or item.is_file()):
            item.unlink()


def prepare_store(path: str | os.PathLike, n_inputs: int, *, chunk_size: int, layout: str,
                  fingerprint: dict | None = None, overwrite: bool = False) -> dict:
    """Create the store directory and its pending manifest, or check the existing one.

    Returns the full fingerprint. A directory that holds chunks of another extraction (another
    fingerprint, or chunks without a manifest) is refused unless ``overwrite`` is true, in which
    case the store's own files are deleted first.
    """
    check_choice(layout, "layout", LAYOUTS)
    plan = StorePlan(check_int(n_inputs, "n_inputs", minimum=1),
                     check_int(chunk_size, "chunk_size", minimum=1))
    if fingerprint is not None and not isinstance(fingerprint, dict):
        raise TypeError(f"`fingerprint` must be a dict of JSON values; got {type(fingerprint).__name__}.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"`path` {str(path)!r} is a file; an activation store is a "
                                 f"directory. Choose a directory name.")
    full = {**(fingerprint or {}), "n_inputs": plan.n_inputs, "chunk_size": plan.chunk_size,
            "layout": layout}
    full = json.loads(json.dumps(full))  # compare what a manifest stores (lists, not tuples)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the activation store {str(path)!r}: "
                      f"{err.strerror or err}") from err
    if overwrite:
        clear_store(path)
    pending = _manifest(plan, layout, 0, "float32", [], {}, full)
    for _ in range(3):  # another writer may replace the manifest between our steps
        try:
            existing = read_manifest(path)
        except ValueError as err:
            raise _stale(path, f"a damaged store ({err})") from err
        if existing is not None:
            old = existing.get("fingerprint")
            same = _same_extraction(old, full)
            if same is None:
                raise _stale(path, "the activation store of another extraction (it differs in "
                             + ", ".join(_differences(old, full)) + ")")
            return same
        if any(_CHUNK.fullmatch(item.name) for item in path.iterdir()):
            raise _stale(path, "chunk files without a manifest (their origin is unknown)")
        if _write_manifest(path, pending, exclusive=True):
            return full
    raise OSError(errno.EBUSY, f"the activation store {str(path)!r} keeps changing while it is "
                  f"being prepared; is another extraction writing it?")


def write_chunks(compute: Callable[[int, int], torch.Tensor], n_inputs: int, path: str | os.PathLike,
                 *, chunk_size: int = 1024, layout: str = "pooled", indices: list[int] | None = None,
                 progress: bool = True, fingerprint: dict | None = None,
                 overwrite: bool = False) -> list[int]:
    """Compute and write the chunks of ``indices`` (default all) that do not exist yet.

    ``compute(start, stop)`` returns the activations of inputs ``[start, stop)``. Returns the
    indices of the chunks this call computed (the rest already existed and were skipped).
    ``fingerprint`` (a dict of JSON values) identifies what ``compute`` computes; with the
    number of inputs, the chunk size and the layout it is recorded in the manifest, and a store
    with another fingerprint is refused unless ``overwrite`` is true (see :func:`prepare_store`).
    """
    path = Path(path)
    full = prepare_store(path, n_inputs, chunk_size=chunk_size, layout=layout,
                         fingerprint=fingerprint, overwrite=overwrite)
    tag, finished = _tag(full), _finished_digests(path, full)
    plan = StorePlan(n_inputs, chunk_size)
    todo = list(range(plan.n_chunks)) if indices is None else list(indices)
    written = []
    for index in tqdm(todo, disable=not progress, desc="store chunks", leave=False):
        target = path / chunk_name(index)
        _check_chunk_file(path, target)
        if target.exists() and _computed_here(path, index, tag, finished) is not None:
            continue  # another chunk there (another writer's, of old) is recomputed
        start, stop = plan.inputs(index)
        rows = np.ascontiguousarray(to_layout(compute(start, stop), layout))
        _save_npy(target, rows, path)
        # then its origin: a chunk found without one (a crash in between) is recomputed
        _write_origin(path, index, tag, _npy_digest(rows))
        written.append(index)
    return written


def _tag(fingerprint: dict) -> str:
    """A short digest of a full fingerprint (what a chunk's origin file records)."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _origin_name(index: int) -> str:
    return f".chunk-{index:06d}.origin"


class _HashingSink:
    """A write-only file that keeps only the digest of what is written to it."""

    def __init__(self) -> None:
        self.digest = hashlib.blake2b(digest_size=16)

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return len(data)


def _npy_digest(array: np.ndarray) -> str:
    """:func:`chunk_digest` of the file ``np.save`` writes for ``array`` (the digest of what
    this writer wrote, whatever another writer renames over it meanwhile)."""
    sink = _HashingSink()
    np.lib.format.write_array(sink, array, allow_pickle=False)  # what np.save writes
    return sink.digest.hexdigest()


def _write_origin(path: Path, index: int, tag: str, digest: str) -> None:
    data = json.dumps({"fingerprint": tag, "digest": digest}).encode()
    _write_file(path / _origin_name(index), lambda fh: fh.write(data), store=path)


def _read_origin(path: Path, index: int) -> dict | None:
    file = path / _origin_name(index)
    if file.is_symlink() or not file.is_file():
        return None
    try:
        with open(file, "rb") as fh:
            origin = json.loads(fh.read(4096))
    except (OSError, ValueError):
        return None
    return origin if isinstance(origin, dict) else None


_DIGESTS: dict[tuple, str] = {}  # chunk digests of this process, by the file's state


def _file_digest(file: Path) -> str:
    """:func:`chunk_digest`, read once per file state (size, times, inode) in a process: a
    writer checks the chunks it reuses, then :func:`finalize_store` the same chunks."""
    key = (str(file), *file_state(file))
    if key not in _DIGESTS:
        if len(_DIGESTS) > 65536:
            _DIGESTS.clear()
        _DIGESTS[key] = chunk_digest(file)
    return _DIGESTS[key]


def _finished_digests(path: Path, full: dict) -> dict[int, str]:
    """The chunk digests the manifest at ``path`` records, if it is a finished store of the
    fingerprint ``full``; empty otherwise."""
    try:
        manifest = read_manifest(path)
    except ValueError:
        return {}
    if not manifest or manifest.get("fingerprint") != full:
        return {}
    return {entry["index"]: entry["digest"] for entry in manifest.get("chunks") or []
            if isinstance(entry, dict) and isinstance(entry.get("index"), int)
            and isinstance(entry.get("digest"), str)}


def _computed_here(path: Path, index: int, tag: str, finished: dict[int, str]) -> str | None:
    """The digest of chunk ``index`` if it holds what was computed under the fingerprint
    ``tag`` (its origin file says so and its bytes are the ones recorded there, or in the
    manifest of a finished store of that fingerprint); None otherwise. A chunk without an
    origin in an unfinished store (of an earlier conceptkit) is not known to be."""
    origin = _read_origin(path, index)
    expected = [finished[index]] if index in finished else []
    if origin is not None and origin.get("fingerprint") == tag:
        expected.append(origin.get("digest"))
    if not expected:
        return None
    try:
        digest = _file_digest(path / chunk_name(index))
    except OSError:
        return None
    return digest if digest in expected else None


def finalize_store(path: str | os.PathLike, n_inputs: int, *, chunk_size: int, layout: str,
                   meta: dict | None = None, fingerprint: dict | None = None) -> ActivationStore:
    """Write ``manifest.json`` once every chunk exists (reads each chunk's header, and its
    bytes once for the digest the manifest records).

    The fingerprint recorded by :func:`write_chunks` is kept; ``fingerprint``, when given, must
    match it, and so must ``n_inputs``, ``chunk_size`` and ``layout``.
    """
    path = Path(path)
    if fingerprint is not None:  # the writer's own: the store must still hold its extraction
        _check_still_ours(path, n_inputs, chunk_size, layout, fingerprint)
    full = prepare_store(path, n_inputs, chunk_size=chunk_size, layout=layout,
                         fingerprint=fingerprint if fingerprint is not None else
                         _recorded(path))
    check_meta(meta, n_inputs, chunk_size)
    plan = StorePlan(n_inputs, chunk_size)
    tag, finished = _tag(full), _finished_digests(path, full)
    chunks, n_features, dtype = [], None, None
    for index in range(plan.n_chunks):
        file = path / chunk_name(index)
        _check_chunk_file(path, file)
        if not file.exists():
            raise ValueError(f"cannot finalize {str(path)!r}: chunk {index} is missing.")
        digest = _computed_here(path, index, tag, finished)
        if digest is None:
            raise ValueError(f"cannot finalize {str(path)!r}: chunk {index} was not computed by "
                             f"this extraction (another writer replaced it while this one ran, "
                             f"or an earlier conceptkit wrote it into an unfinished store); rerun "
                             f"the extraction to recompute it.")
        array = np.load(file, mmap_mode="r", allow_pickle=False)
        features = int(array.shape[1]) if array.ndim >= 2 else 1
        if (n_features, dtype) not in ((None, None), (features, str(array.dtype))):
            raise ValueError(f"cannot finalize {str(path)!r}: chunk {index} holds {features} "
                             f"features of {array.dtype}, the chunks before it {n_features} of "
                             f"{dtype}.")
        n_features, dtype = features, str(array.dtype)
        chunks.append({"index": index, "file": file.name, "rows": int(array.shape[0]),
                       "inputs": list(plan.inputs(index)), "digest": digest})
    manifest = _manifest(plan, layout, n_features or 0, dtype or "float32", chunks, meta or {}, full)
    _write_manifest(path, manifest)
    for index in range(plan.n_chunks):  # the manifest vouches for the chunks from now on
        try:
            (path / _origin_name(index)).unlink()
        except OSError:
            pass
    return ActivationStore(path)


def _check_still_ours(path: Path, n_inputs: int, chunk_size: int, layout: str,
                      fingerprint: dict) -> None:
    """Refuse to finalize a store whose manifest now records another extraction: another
    writer replaced it (``overwrite=True``) while this one ran, and finalizing would return
    that writer's activations and overwrite its ``meta``."""
    try:
        manifest = read_manifest(path) if path.is_dir() else None
    except ValueError:
        return  # prepare_store says what is wrong with it
    if manifest is None:
        return
    full = {**fingerprint, "n_inputs": n_inputs, "chunk_size": chunk_size, "layout": layout}
    old = manifest.get("fingerprint")
    if _same_extraction(old, json.loads(json.dumps(full))) is None:
        raise ValueError(f"cannot finalize the activation store {str(path)!r}: it no longer "
                         f"holds this extraction. Another writer replaced it while this one "
                         f"ran: it now holds the activation store of another extraction (it "
                         f"differs in {', '.join(_differences(old, full))}); its chunks and "
                         f"meta are left "
                         f"as they are. Run the extractions into different directories, or "
                         f"rerun this one when the other has finished.")


def _recorded(path: Path) -> dict | None:
    """The fingerprint recorded in a store's manifest, less the structural fields."""
    manifest = read_manifest(path) if path.is_dir() else None
    recorded = manifest.get("fingerprint") if manifest else None
    if not isinstance(recorded, dict):
        return None
    return {k: v for k, v in recorded.items() if k not in ("n_inputs", "chunk_size", "layout")}


def write_store(extractor: Any, inputs: Any, path: str | os.PathLike, *, chunk_size: int = 1024,
                layout: str = "pooled", progress: bool = True, meta: dict | None = None,
                overwrite: bool = False) -> ActivationStore:
    """Extract activations of ``inputs`` chunk by chunk into a resumable store at ``path``.

    ``extractor`` is an :class:`ActivationExtractor` (or any callable ``images -> activations``);
    ``inputs`` is a tensor ``(N, C, H, W)`` or anything indexable by slices with a length (a
    Dataset of images). Rerunning after an interruption computes only the missing chunks; a
    rerun with another model (weights or structure), layer, preprocessing, inputs, ``N``,
    ``chunk_size`` or ``layout`` is refused (the manifest's fingerprint differs) unless
    ``overwrite`` is true, which replaces the store. A Dataset is identified by its
    ``fingerprint`` attribute when it has one; a folder dataset (torchvision's ``ImageFolder``)
    by every file's path, size, modification and change times, inode and device; any other
    Dataset by its type, length and first, middle and last items only, so reusing chunks of
    such a store warns (give the Dataset a ``fingerprint`` to silence it).
    """
    check_store_inputs(inputs)
    n = len(inputs)
    check_meta(meta, n, chunk_size)  # before anything is computed
    fingerprint = {**extractor_identity(extractor), "inputs": inputs_identity(inputs)}

    def compute(start: int, stop: int) -> torch.Tensor:
        return extractor(slice_inputs(inputs, start, stop))

    written = write_chunks(compute, n, path, chunk_size=chunk_size, layout=layout,
                           progress=progress, fingerprint=fingerprint, overwrite=overwrite)
    reused = StorePlan(n, chunk_size).n_chunks - len(written)
    if reused and identity_is_sampled(inputs):
        warnings.warn(f"write_store reused {reused} chunk(s) already in {str(path)!r}: their "
                      f"inputs match by the Dataset's type, length and first, middle and last "
                      f"items only ({type(inputs).__qualname__} has no `fingerprint` and lists "
                      f"no files), so a change to any other item would go unseen. Pass "
                      f"overwrite=True after changing the data, or give the Dataset a "
                      f"`fingerprint` attribute (a string that changes with its content).",
                      UserWarning, stacklevel=2)
    return finalize_store(path, n, chunk_size=chunk_size, layout=layout, meta=meta,
                          fingerprint=fingerprint)
