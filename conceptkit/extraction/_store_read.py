"""An on-disk activation store: fixed-size chunks plus a JSON manifest.

Layout of a store directory::

    manifest.json          {"format": "conceptkit-activation-store", "version": 1, "n_inputs",
                            "chunk_size", "n_chunks", "layout", "n_features", "dtype",
                            "fingerprint": {...},
                            "chunks": [{"index", "file", "rows", "inputs": [start, stop]}, ...]}
    chunk-000000.npy       rows of inputs [0, chunk_size)
    chunk-000001.npy       ...

Chunk ``i`` always holds the activations of inputs ``[i·chunk_size, (i+1)·chunk_size)``, so a
chunk's content does not depend on who wrote it or when: a rerun after a crash skips every chunk
file that exists and recomputes only the missing ones, and shards written by several processes
merge into the same store a single process would write.

A rerun may skip existing chunks only if they were computed from the same things, so the
manifest carries a *fingerprint* of everything that determines the content (model weights,
layer, preprocessing, inputs, number of inputs, chunk size, layout, dtype). The first writer
creates the manifest with an empty chunk list before computing anything; a later run with
another fingerprint is refused with an error that names what differs (pass ``overwrite=True``,
``--overwrite`` on the command line, to replace the store).

Each file is written to a temporary file created exclusively (``O_EXCL``, a random name, so a
planted symlink is never followed) and renamed when complete, so a killed run never leaves a
half-written chunk under a final name; a failed write (a full disk) removes its temporary file
and raises an ``OSError`` naming the store. Chunks are plain ``.npy`` files read with
``allow_pickle=False`` and memory-mapped, so reading never executes code and never loads the
whole store into memory; a chunk that is a symbolic link is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_int
from ..io import FormatError, JsonLimits, file_state, parse_json

STORE_FORMAT = "conceptkit-activation-store"
STORE_VERSION = 1
LAYOUTS = ("pooled", "positions", "maps")
MANIFEST = "manifest.json"
_CHUNK = re.compile(r"chunk-(\d{6,})\.npy")
_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
_FIELDS = {"model": "model weights",
           "model_structure": "model structure (submodule types and settings)", "layer": "layer", "preprocess": "preprocessing",
           "inputs": "inputs", "n_inputs": "number of inputs", "chunk_size": "chunk size",
           "layout": "layout", "model_dtype": "model dtype", "settings": "extractor settings",
           "extractor": "extractor",
           "model_code": "model code (the code of its own module classes, or settings kept in "
                         "plain objects such as a config)",
           "preprocess_reads": "preprocessing constants or helpers (values it reads through "
                               "modules or classes, helper functions)"}
#: A manifest grows by 161 bytes, 2 containers and 13 values per chunk (measured: a store of
#: 20,000 chunks, 20 million inputs at the default chunk size, has a 3.2 MB manifest of 40,004
#: lists and objects and 260,000 values). 10 times that (200,000 chunks) is what is read; a
#: larger manifest is refused before it is parsed. Just under the limits a hostile manifest
#: costs at most 1 s and +210 MB (2.6 million short strings) before it is refused.
MANIFEST_LIMITS = JsonLimits(max_bytes=32 * 1024 * 1024, max_containers=400_000,
                             max_values=2_600_000)


def chunk_name(index: int) -> str:
    return f"chunk-{index:06d}.npy"


def to_layout(activations: torch.Tensor, layout: str) -> np.ndarray:
    """Rows to store: ``pooled`` ``(n, C)``, ``positions`` ``(n·h·w, C)``, ``maps`` as is.

    Floating-point dtypes numpy has no type for (bfloat16, float8) are stored as float32,
    which holds their values exactly (and ``pooled`` averages them in float32)."""
    if activations.is_floating_point() and str(activations.dtype).removeprefix("torch.") not in _DTYPES:
        activations = activations.float()
    if layout == "maps" or activations.ndim == 2:
        return activations.detach().cpu().numpy()
    if layout == "pooled":
        return activations.mean(dim=tuple(range(2, activations.ndim))).detach().cpu().numpy()
    n, c = activations.shape[:2]
    return activations.reshape(n, c, -1).transpose(1, 2).reshape(-1, c).detach().cpu().numpy()


@dataclass
class StorePlan:
    """Which inputs go into which chunk."""

    n_inputs: int
    chunk_size: int

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_inputs / self.chunk_size)

    def inputs(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.n_inputs)


class ActivationStore:
    """Read access to a store directory written by :func:`write_store`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if self.manifest is None:
            raise FileNotFoundError(f"`path` {str(self.path)!r} is not an activation store "
                                    f"(no {MANIFEST}).")
        _check_manifest(self.path, self.manifest)
        chunks = self.manifest["chunks"]
        missing = [c["file"] for c in chunks if not (self.path / c["file"]).exists()]
        if missing or len(chunks) != self.manifest["n_chunks"]:
            raise FormatError(f"`path` {str(self.path)!r} is incomplete: missing chunks "
                             f"{missing[:5] or 'in manifest'}; rerun the extraction to finish it.")
        for entry in chunks:
            _check_chunk_file(self.path, self.path / entry["file"])

    @property
    def n_rows(self) -> int:
        """Total number of stored rows."""
        return int(sum(c["rows"] for c in self.manifest["chunks"]))

    @property
    def n_features(self) -> int:
        return int(self.manifest["n_features"])

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_features

    def __len__(self) -> int:
        return self.n_rows

    def chunk(self, index: int) -> np.ndarray:
        """Chunk ``index`` as a read-only memory-mapped array (no pickle)."""
        entry = self.manifest["chunks"][index]
        file = self.path / entry["file"]
        _check_chunk_file(self.path, file)
        self._check_digest(entry, file)
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - numpy's parser fails in many ways on a bad header
            raise FormatError(f"`path` {str(self.path)!r}: chunk {entry['file']!r} is damaged or not a "
                             f"plain numeric array ({err}); delete it and rerun the extraction to "
                             f"recompute it.") from err
        flat = self.manifest["layout"] != "maps"
        if not array.flags.c_contiguous:  # every chunk is written in C order
            raise FormatError(f"`path` {str(self.path)!r}: chunk {entry['file']!r} is stored in "
                              f"Fortran order, which conceptkit never writes; the file was "
                              f"altered. Delete it and rerun the extraction.")
        if (array.ndim < 2 or (flat and array.ndim != 2) or array.shape[0] != entry["rows"]
                or array.shape[1] != self.n_features or str(array.dtype) != self.manifest["dtype"]):
            raise FormatError(f"`path` {str(self.path)!r}: chunk {entry['file']!r} holds an array of "
                             f"shape {array.shape} and dtype {array.dtype}, but the manifest declares "
                             f"{entry['rows']} rows of {self.n_features} features of "
                             f"{self.manifest['dtype']}; delete the chunk and rerun the extraction.")
        return array

    def _check_digest(self, entry: dict, file: Path) -> None:
        """Compare a chunk's bytes with the digest its manifest recorded (stores written before
        chunks had digests have none), once per file state (size, modification and change
        times, inode, device: a chunk rewritten in place with its modification time restored
        still changes its change time)."""
        expected = entry.get("digest")
        if expected is None:
            return
        seen = self.__dict__.setdefault("_verified", {})
        state = file_state(file)
        if seen.get(entry["file"]) == state:
            return
        if chunk_digest(file) != expected:
            raise FormatError(f"`path` {str(self.path)!r}: chunk {entry['file']!r} does not match "
                              f"the digest its manifest recorded (it was altered, damaged or "
                              f"swapped with another chunk after the store was written); rerun "
                              f"the extraction with overwrite=True to rewrite the store.")
        seen[entry["file"]] = state

    def iter_chunks(self, progress: bool = False) -> Iterator[np.ndarray]:
        """Every chunk in order, memory-mapped."""
        for index in tqdm(range(len(self.manifest["chunks"])), disable=not progress,
                          desc="store chunks", leave=False):
            yield self.chunk(index)

    def iter_batches(self, batch_rows: int, progress: bool = False) -> Iterator[np.ndarray]:
        """Row blocks of at most ``batch_rows`` rows, crossing chunk boundaries."""
        batch_rows = check_int(batch_rows, "batch_rows", minimum=1)
        pending: list[np.ndarray] = []
        count = 0
        for chunk in self.iter_chunks(progress):
            start = 0
            while start < chunk.shape[0]:
                take = min(batch_rows - count, chunk.shape[0] - start)
                pending.append(np.asarray(chunk[start:start + take]))
                count += take
                start += take
                if count == batch_rows:
                    yield np.concatenate(pending)
                    pending, count = [], 0
        if pending:
            yield np.concatenate(pending)

    def read(self) -> np.ndarray:
        """All rows in memory (only for stores that fit)."""
        return np.concatenate([np.asarray(c) for c in self.iter_chunks()])


def read_manifest(path: Path) -> dict | None:
    """The parsed manifest of the store at ``path`` (None when there is none)."""
    file = path / MANIFEST
    if file.is_symlink():
        raise FormatError(f"`path` {str(path)!r}: {MANIFEST} is a symbolic link; a store's files "
                         f"must be regular files inside it.")
    if not file.exists():
        return None
    size = file.stat().st_size
    if size > MANIFEST_LIMITS.max_bytes:  # refused before it is read
        raise FormatError(f"`path` {str(path)!r} has a corrupted {MANIFEST}: {size} bytes, more "
                          f"than the {MANIFEST_LIMITS.max_bytes} conceptkit reads.")
    with open(file, "rb") as fh:  # at most one byte over the limit, even if it just grew
        raw = fh.read(MANIFEST_LIMITS.max_bytes + 1)
    manifest = parse_json(raw, path, MANIFEST, limits=MANIFEST_LIMITS)  # FormatErrors name the store
    if (not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT
            or manifest.get("version") != STORE_VERSION):
        raise FormatError(f"`path` {str(path)!r}: not a version-{STORE_VERSION} activation store.")
    chunks = manifest.get("chunks")
    signed_chunks = isinstance(chunks, list) and any(
        isinstance(entry, dict) and "digest" in entry for entry in chunks)
    if "digest" not in manifest and signed_chunks:
        # chunk digests came after manifest digests: every manifest that records them has one
        raise FormatError(f"`path` {str(path)!r}: the digest of {MANIFEST} is missing, but a "
                          f"manifest that records chunk digests is always written with one (it "
                          f"was edited after it was written); rerun the extraction with "
                          f"overwrite=True to rewrite the store.")
    if "digest" in manifest and manifest["digest"] != manifest_digest(manifest):
        raise FormatError(f"`path` {str(path)!r}: {MANIFEST} was edited or damaged after it was "
                          f"written (its digest does not match); rerun the extraction with "
                          f"overwrite=True to rewrite the store.")
    return manifest


def chunk_digest(file: Path) -> str:
    """BLAKE2b of a chunk file's bytes (header and data), read in 16 MiB blocks."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """BLAKE2b of a manifest's canonical JSON without its ``digest`` entry."""
    import hashlib

    plain = {key: value for key, value in manifest.items() if key != "digest"}
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_manifest(path: Path, manifest: dict) -> None:
    """Refuse manifests that are malformed, disagree with themselves, or point outside the store.

    Chunk ``i`` must be entry ``i``, named ``chunk-i``, holding inputs ``[i·chunk_size, ...)``: a
    duplicated, swapped, repeated or missing entry is refused, as are row counts that disagree
    with the layout (``positions`` rows are the same number of positions for every input).
    """
    def bad(why: str) -> FormatError:
        return FormatError(f"`path` {str(path)!r}: {MANIFEST} is corrupted ({why}); rerun the "
                          f"extraction with overwrite=True to rewrite the store.")

    n_inputs, chunk_size = manifest.get("n_inputs"), manifest.get("chunk_size")
    chunks = manifest.get("chunks")
    # a pending manifest (written before the first chunk, finished by finalize_store) records
    # no chunks and 0 features: an incomplete store, which ActivationStore says it is
    if not (isinstance(chunks, list) and _count(n_inputs, 1) and _count(chunk_size, 1)
            and _count(manifest.get("n_features"), 1 if chunks else 0)):
        raise bad("malformed n_inputs, chunk_size, n_features or chunk list")
    plan = StorePlan(n_inputs, chunk_size)
    if manifest.get("n_chunks") != plan.n_chunks or len(chunks) > plan.n_chunks:
        raise bad(f"{n_inputs} inputs in chunks of {chunk_size} make {plan.n_chunks} chunks, "
                  f"not {manifest.get('n_chunks')!r}")
    if manifest.get("layout") not in LAYOUTS or manifest.get("dtype") not in _DTYPES:
        raise bad(f"unknown layout {manifest.get('layout')!r} or dtype {manifest.get('dtype')!r}")
    if not isinstance(manifest.get("fingerprint", {}), dict):
        raise bad("malformed fingerprint")
    per_input = None
    for index, entry in enumerate(chunks):
        start, stop = plan.inputs(index)
        if (not isinstance(entry, dict) or entry.get("index") != index
                or entry.get("file") != chunk_name(index) or entry.get("inputs") != [start, stop]
                or not _count(entry.get("rows"), 0)
                or not isinstance(entry.get("digest", ""), str)):
            raise bad(f"entry {index} is not chunk {index} of inputs [{start}, {stop}): chunks "
                      f"duplicated, swapped, repeated or malformed")
        rows = entry["rows"]
        if manifest["layout"] == "positions" and rows % (stop - start) == 0 and rows:
            per_input = rows // (stop - start) if per_input is None else per_input
            ok = rows == per_input * (stop - start)
        else:
            ok = rows == stop - start
        if not ok:
            raise bad(f"chunk {index} declares {rows} rows for {stop - start} inputs in layout "
                      f"{manifest['layout']!r}")


def _check_chunk_file(path: Path, file: Path) -> None:
    if file.is_symlink() or (file.exists() and not file.is_file()):
        raise FormatError(f"`path` {str(path)!r}: chunk {file.name!r} is a symbolic link or not a "
                         f"regular file; a store's chunks must be files inside it. Delete it and "
                         f"rerun the extraction.")


def shard_chunks(n_chunks: int, rank: int, world_size: int) -> list[int]:
    """The chunk indices rank ``rank`` of ``world_size`` computes (round robin)."""
    return [i for i in range(n_chunks) if i % world_size == rank]


def check_store_inputs(inputs: Any, name: str = "inputs") -> None:
    """Refuse what a store cannot take its inputs from by index: a DataLoader (its length
    counts batches and it cannot be indexed), anything without a length or items."""
    from torch.utils.data import DataLoader

    if isinstance(inputs, DataLoader):
        raise TypeError(f"`{name}` of an activation store must be a tensor (N, C, H, W) or a "
                        f"Dataset whose items can be read by index; got a DataLoader. Pass its "
                        f"Dataset (loader.dataset) or a tensor of the images: the store reads "
                        f"them chunk by chunk itself.")
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return
    if not (hasattr(inputs, "__len__") and hasattr(inputs, "__getitem__")):
        raise TypeError(f"`{name}` of an activation store must be a tensor (N, C, H, W) or a "
                        f"Dataset with a length whose items can be read by index; got "
                        f"{type(inputs).__name__}.")


def slice_inputs(inputs: Any, start: int, stop: int) -> torch.Tensor:
    """Images ``[start, stop)`` of a tensor or of a Dataset yielding images or (image, ...)."""
    check_store_inputs(inputs)
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(inputs[start:stop])
    items = [inputs[i] for i in range(start, stop)]
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])


