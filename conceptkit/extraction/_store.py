"""An on-disk activation store: fixed-size chunks plus a JSON manifest.

Layout of a store directory::

    manifest.json          {"format": "conceptkit-activation-store", "version": 1, "n_inputs",
                            "chunk_size", "n_chunks", "layout", "n_features", "dtype",
                            "chunks": [{"index", "file", "rows", "inputs": [start, stop]}, ...]}
    chunk-000000.npy       rows of inputs [0, chunk_size)
    chunk-000001.npy       ...

Chunk ``i`` always holds the activations of inputs ``[i·chunk_size, (i+1)·chunk_size)``, so a
chunk's content does not depend on who wrote it or when: a rerun after a crash skips every chunk
file that exists and recomputes only the missing ones, and shards written by several processes
merge into the same store a single process would write. Each chunk is written to a temporary
name and renamed when complete (an atomic rename), so a killed run never leaves a half-written
chunk under a final name. Chunks are plain ``.npy`` files read with ``allow_pickle=False`` and
memory-mapped, so reading never executes code and never loads the whole store into memory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_choice, check_int

STORE_FORMAT = "conceptkit-activation-store"
STORE_VERSION = 1
LAYOUTS = ("pooled", "positions", "maps")


def chunk_name(index: int) -> str:
    return f"chunk-{index:06d}.npy"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def to_layout(activations: torch.Tensor, layout: str) -> np.ndarray:
    """Rows to store: ``pooled`` ``(n, C)``, ``positions`` ``(n·h·w, C)``, ``maps`` as is."""
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
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"`path` {str(self.path)!r} is not an activation store "
                                    f"(no manifest.json).")
        try:
            self.manifest = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"`path` {str(self.path)!r}: manifest.json is corrupted.") from err
        if (not isinstance(self.manifest, dict) or self.manifest.get("format") != STORE_FORMAT
                or self.manifest.get("version") != STORE_VERSION):
            raise ValueError(f"`path` {str(self.path)!r}: not a version-{STORE_VERSION} activation store.")
        _check_manifest(self.path, self.manifest)
        missing = [c["file"] for c in self.manifest["chunks"] if not (self.path / c["file"]).exists()]
        if missing or len(self.manifest["chunks"]) != self.manifest["n_chunks"]:
            raise ValueError(f"`path` {str(self.path)!r} is incomplete: missing chunks "
                             f"{missing[:5] or 'in manifest'}; rerun the extraction to finish it.")

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
        try:
            array = np.load(self.path / entry["file"], mmap_mode="r", allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - numpy's parser fails in many ways on a bad header
            raise ValueError(f"`path` {str(self.path)!r}: chunk {entry['file']!r} is damaged or not a "
                             f"plain numeric array ({err}); delete it and rerun the extraction to "
                             f"recompute it.") from err
        features = int(array.shape[1]) if array.ndim >= 2 else 1
        if (array.shape[0] != entry["rows"] or features != self.n_features
                or array.dtype.kind not in "biuf"):
            raise ValueError(f"`path` {str(self.path)!r}: chunk {entry['file']!r} holds an array of "
                             f"shape {array.shape} and dtype {array.dtype}, but the manifest declares "
                             f"{entry['rows']} rows of {self.n_features} features; delete the chunk "
                             f"and rerun the extraction.")
        return array

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


def _check_manifest(path: Path, manifest: dict) -> None:
    """Refuse manifests whose entries are malformed or point outside the store directory."""
    chunks = manifest.get("chunks")
    ok = (isinstance(chunks, list) and isinstance(manifest.get("n_chunks"), int)
          and isinstance(manifest.get("n_features"), int))
    for entry in chunks if ok else []:
        file = entry.get("file") if isinstance(entry, dict) else None
        if (not isinstance(file, str) or Path(file).name != file or file in ("", ".", "..")
                or not isinstance(entry.get("rows"), int)):
            ok = False
            break
    if not ok:
        raise ValueError(f"`path` {str(path)!r}: manifest.json is corrupted (malformed chunk list).")


def shard_chunks(n_chunks: int, rank: int, world_size: int) -> list[int]:
    """The chunk indices rank ``rank`` of ``world_size`` computes (round robin)."""
    return [i for i in range(n_chunks) if i % world_size == rank]


def _manifest(plan: StorePlan, layout: str, n_features: int, dtype: str, chunks: list[dict],
              meta: dict) -> dict:
    return {"format": STORE_FORMAT, "version": STORE_VERSION, "n_inputs": plan.n_inputs,
            "chunk_size": plan.chunk_size, "n_chunks": plan.n_chunks, "layout": layout,
            "n_features": n_features, "dtype": dtype, "chunks": chunks, "meta": meta}


def write_chunks(compute: Callable[[int, int], torch.Tensor], n_inputs: int, path: str | os.PathLike,
                 *, chunk_size: int = 1024, layout: str = "pooled", indices: list[int] | None = None,
                 progress: bool = True) -> list[int]:
    """Compute and write the chunks of ``indices`` (default all) that do not exist yet.

    ``compute(start, stop)`` returns the activations of inputs ``[start, stop)``. Returns the
    indices of the chunks this call computed (the rest already existed and were skipped).
    """
    check_choice(layout, "layout", LAYOUTS)
    plan = StorePlan(check_int(n_inputs, "n_inputs", minimum=1), check_int(chunk_size, "chunk_size", minimum=1))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    todo = list(range(plan.n_chunks)) if indices is None else list(indices)
    written = []
    for index in tqdm(todo, disable=not progress, desc="store chunks", leave=False):
        target = path / chunk_name(index)
        if target.exists():
            continue
        start, stop = plan.inputs(index)
        rows = to_layout(compute(start, stop), layout)
        _atomic_save_npy(target, np.ascontiguousarray(rows))
        written.append(index)
    return written


def finalize_store(path: str | os.PathLike, n_inputs: int, *, chunk_size: int, layout: str,
                   meta: dict | None = None) -> ActivationStore:
    """Write ``manifest.json`` once every chunk exists (reads only the chunks' headers)."""
    plan = StorePlan(n_inputs, chunk_size)
    path = Path(path)
    chunks, n_features, dtype = [], None, None
    for index in range(plan.n_chunks):
        file = path / chunk_name(index)
        if not file.exists():
            raise ValueError(f"cannot finalize {str(path)!r}: chunk {index} is missing.")
        array = np.load(file, mmap_mode="r", allow_pickle=False)
        n_features = int(array.shape[1]) if array.ndim >= 2 else 1
        dtype = str(array.dtype)
        chunks.append({"index": index, "file": file.name, "rows": int(array.shape[0]),
                       "inputs": list(plan.inputs(index))})
    manifest = _manifest(plan, layout, n_features or 0, dtype or "float32", chunks, meta or {})
    _atomic_write_bytes(path / "manifest.json", json.dumps(manifest, indent=1).encode())
    return ActivationStore(path)


def slice_inputs(inputs: Any, start: int, stop: int) -> torch.Tensor:
    """Images ``[start, stop)`` of a tensor or of a Dataset yielding images or (image, ...)."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(inputs[start:stop])
    items = [inputs[i] for i in range(start, stop)]
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])


def write_store(extractor: Any, inputs: Any, path: str | os.PathLike, *, chunk_size: int = 1024,
                layout: str = "pooled", progress: bool = True, meta: dict | None = None) -> ActivationStore:
    """Extract activations of ``inputs`` chunk by chunk into a resumable store at ``path``.

    ``extractor`` is an :class:`ActivationExtractor` (or any callable ``images -> activations``);
    ``inputs`` is a tensor ``(N, C, H, W)`` or anything indexable by slices with a length (a
    Dataset of images). Rerunning after an interruption computes only the missing chunks.
    """
    n = len(inputs)

    def compute(start: int, stop: int) -> torch.Tensor:
        return extractor(slice_inputs(inputs, start, stop))

    write_chunks(compute, n, path, chunk_size=chunk_size, layout=layout, progress=progress)
    return finalize_store(path, n, chunk_size=chunk_size, layout=layout, meta=meta)
