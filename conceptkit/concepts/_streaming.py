"""Streaming concept discovery: fit and encode activations that do not fit in memory.

The rows come from an on-disk :class:`~conceptkit.extraction.ActivationStore` (its chunks are
memory-mapped ``.npy`` files) or from any re-iterable of row chunks. Nothing here ever holds the
whole matrix: at any time memory holds one memory-mapped chunk, one block of at most
``batch_rows`` rows copied out of it, the factorizer's working arrays for that block, the
dictionary and its sufficient statistics (``O(k C)``), and, while initialising, a uniform sample of
``init_rows`` rows.

NMF is the factorizer that streams:

- ``solver="torch_hals"``: a batch HALS fit of a uniform row sample gives the first dictionary,
  then :meth:`NMF.partial_fit` runs online HALS over the blocks (codes of each block by
  non-negative least squares, then the dictionary re-solved against the running sufficient
  statistics ``Σ UᵀU`` and ``Σ UᵀA``; Mairal et al., 2010). Each epoch restarts the statistics
  from the current dictionary, so the last epoch's statistics hold codes from a settled dictionary.
- ``solver="cd"`` / ``"mu"``: scikit-learn's :class:`~sklearn.decomposition.MiniBatchNMF` (online
  multiplicative updates), started from the sample fit; the NMF then encodes with its own solver.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_int, describe, make_rng
from ._base import Factorizer
from ._nmf import NMF

__all__ = ["fit_streaming", "streaming_error", "transform_streaming", "write_codes"]


# ------------------------------------------------------------------------------ row sources
def _as_rows(chunk: Any, name: str) -> np.ndarray:
    """A chunk as rows ``(m, C)``: 2-D as is; feature maps ``(n, C, h, w)`` one row per position."""
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.detach().cpu().numpy()
    if not isinstance(chunk, np.ndarray):
        raise TypeError(f"`{name}` must yield numpy arrays or torch tensors of rows (m, C); got a "
                        f"chunk of type {describe(chunk)}.")
    if chunk.ndim == 4:  # a "maps" store: every spatial position is a row, as ICE
        n, c, h, w = chunk.shape
        return chunk.transpose(0, 2, 3, 1).reshape(n * h * w, c)
    if chunk.ndim != 2:
        raise ValueError(f"`{name}` chunks must be rows (m, C) or feature maps (n, C, h, w); got a "
                         f"chunk of shape {chunk.shape}.")
    return chunk


class RowSource:
    """Uniform access to the chunks of a store, a store path, a re-iterable or a chunk factory.

    Parameters
    ----------
    source
        An :class:`~conceptkit.extraction.ActivationStore`, the path of one, a re-iterable of
        arrays (a list of chunks, or any object whose ``__iter__`` starts over), or a callable
        returning a fresh iterable of chunks. One-shot iterators (generators) are refused: fitting
        reads the rows several times.
    """

    def __init__(self, source: Any, name: str = "source"):
        from ..extraction import ActivationStore

        self.name = name
        self.store = None
        if isinstance(source, RowSource):
            self.store, self._factory = source.store, source._factory
            return
        if isinstance(source, (str, os.PathLike)):
            source = ActivationStore(source)
        if isinstance(source, ActivationStore):
            self.store = source
            self._factory: Callable[[], Iterable] | None = None
        elif callable(source):
            self._factory = source
        elif isinstance(source, Iterable):
            if iter(source) is source:
                raise TypeError(f"`{name}` is a one-shot iterator ({describe(source)}); streaming "
                                f"reads the rows several times. Pass a list of chunks, an "
                                f"ActivationStore, or a function returning a fresh iterator.")
            self._factory = lambda: source
        else:
            raise TypeError(f"`{name}` must be an ActivationStore, a store path, a re-iterable of "
                            f"row chunks (m, C) or a function returning one; got {describe(source)}.")

    @property
    def n_chunks(self) -> int | None:
        return len(self.store.manifest["chunks"]) if self.store is not None else None

    def raw_chunks(self, order: Iterable[int] | None = None) -> Iterator[np.ndarray]:
        """Chunks as stored; a store's are memory-mapped and read in ``order`` (default in order)."""
        if self.store is not None:
            for index in (range(self.n_chunks) if order is None else order):
                yield self.store.chunk(int(index))
            return
        for chunk in self._factory():
            yield chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else chunk

    def chunks(self, order: Iterable[int] | None = None) -> Iterator[np.ndarray]:
        """Chunks as rows ``(m, C)`` (see :meth:`raw_chunks`)."""
        for chunk in self.raw_chunks(order):
            yield _as_rows(chunk, self.name)

    def blocks(self, batch_rows: int, order: Iterable[int] | None = None,
               dtype: Any = None) -> Iterator[np.ndarray]:
        """Row blocks of at most ``batch_rows`` rows, each an in-memory copy (never a whole chunk
        unless it is that small); blocks do not cross chunk boundaries."""
        for chunk in self.chunks(order):
            for start in range(0, chunk.shape[0], batch_rows):
                block = chunk[start:start + batch_rows]
                yield np.array(block, dtype=dtype or _float_dtype(block.dtype), copy=True)

    def sample(self, n_rows: int, rng: np.random.Generator) -> np.ndarray:
        """A uniform sample of ``min(n_rows, total)`` rows without replacement.

        A store is sampled by row index (only the chosen rows are read); other sources by keeping
        the rows with the ``n_rows`` smallest random keys over one pass (bottom-k sampling).
        """
        if self.store is not None:
            sizes = np.array([_rows_in(self.store.chunk(i)) for i in range(self.n_chunks)])
            total = int(sizes.sum())
            chosen = np.sort(rng.choice(total, size=min(n_rows, total), replace=False))
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            parts = []
            for index in np.unique(np.searchsorted(bounds, chosen, side="right") - 1):
                local = chosen[(chosen >= bounds[index]) & (chosen < bounds[index + 1])] - bounds[index]
                parts.append(_take_rows(self.store.chunk(int(index)), local))
            return np.concatenate(parts)
        keys = np.empty(0)
        kept: np.ndarray | None = None
        for chunk in self.chunks():
            chunk_keys = rng.random(chunk.shape[0])
            keys = np.concatenate([keys, chunk_keys])
            rows = chunk if kept is None else np.concatenate([kept, chunk])
            if keys.size > n_rows:
                best = np.argpartition(keys, n_rows - 1)[:n_rows]
                best.sort()  # keep the rows in stream order (deterministic)
                keys, rows = keys[best], rows[best]
            kept = np.array(rows, dtype=_float_dtype(rows.dtype), copy=True)
        if kept is None:
            raise ValueError(f"`{self.name}` holds no rows.")
        return kept


def _float_dtype(dtype: np.dtype) -> np.dtype:
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _rows_in(chunk: np.ndarray) -> int:
    return int(chunk.shape[0]) * (int(np.prod(chunk.shape[2:])) if chunk.ndim == 4 else 1)


def _take_rows(chunk: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` of a chunk (2-D rows, or positions of feature maps), copied out."""
    if chunk.ndim == 4:
        _, _, h, w = chunk.shape
        image, cell = np.divmod(local, h * w)
        y, x = np.divmod(cell, w)
        rows = chunk[image, :, y, x]
    else:
        rows = chunk[local]
    return np.array(rows, dtype=_float_dtype(rows.dtype), copy=True)


# ------------------------------------------------------------------------------ fitting
def _check_factorizer(factorizer: Any) -> NMF:
    if not isinstance(factorizer, NMF):
        raise TypeError(f"`factorizer` must be a conceptkit NMF (streaming fits NMF: online HALS "
                        f"for solver='torch_hals', scikit-learn's MiniBatchNMF for 'cd'/'mu'); got "
                        f"{describe(factorizer)}. Other factorizers: fit a uniform sample of the "
                        f"rows in memory, then encode with `transform_streaming`.")
    factorizer._validate_params()
    return factorizer


def fit_seeded(est: NMF, rows: Any, seed: int | None) -> None:
    """``est.fit(rows)``, its initialisation seeded with ``seed`` when its ``random_state`` is
    None. The seeded fit runs on a clone whose fitted state ``est`` then takes: the caller's
    object gets the fit it asked for, and never a parameter it did not set (not even for the
    length of the call)."""
    if est.random_state is not None or seed is None:
        est.fit(rows)
        return
    from sklearn.base import clone

    seeded = clone(est).set_params(random_state=seed)
    seeded.fit(rows)
    params = set(est.get_params(deep=False))
    for name, value in vars(seeded).items():
        if name not in params:
            setattr(est, name, value)


def _epoch_order(source: RowSource, rng: np.random.Generator) -> list[int] | None:
    # A store's chunks are visited in a fresh random order every epoch, so that a store written
    # in class or time order does not pull the dictionary towards its last chunks.
    return None if source.n_chunks is None else [int(i) for i in rng.permutation(source.n_chunks)]


def fit_streaming(factorizer: NMF, source: Any, *, epochs: int = 1, batch_rows: int = 4096,
                  init_rows: int | None = None, seed: int | None = None, error: bool = True,
                  progress: bool = True) -> NMF:
    """Fit ``factorizer`` (an :class:`NMF`) on rows streamed from ``source``; return it.

    Parameters
    ----------
    factorizer : NMF
        Fitted in place. ``solver="torch_hals"`` streams with online HALS (:meth:`NMF.partial_fit`),
        ``"cd"``/``"mu"`` with scikit-learn's ``MiniBatchNMF``; its penalties carry over.
    source : ActivationStore, path, re-iterable of arrays, or callable
        Row chunks ``(m, C)``; chunks of feature maps ``(n, C, h, w)`` give one row per position.
    epochs : int
        Passes over the rows after the initial fit of the sample.
    batch_rows : int
        Rows per online update (and per block in memory).
    init_rows : int or None
        Size of the uniform row sample fitted in memory to start the dictionary (default
        ``max(batch_rows, 50 * n_concepts)``).
    seed : int or None
        Picks the sample and the chunk order of a store (and seeds the initialisation when the
        factorizer's ``random_state`` is None): the same seed gives the same dictionary.
    error : bool
        One more pass to compute the exact ``reconstruction_err_`` ``||A - U W||_F`` of every row
        with the final dictionary (otherwise it is the online running estimate, or NaN for the
        scikit-learn path).
    progress : bool
        Progress bars over the blocks.

    Returns
    -------
    NMF
        ``factorizer``, fitted: ``components_ (k, C)``, ``reconstruction_err_``,
        ``n_iter_`` (online updates, every epoch together), ``n_samples_seen_`` (rows per
        epoch), ``n_features_in_``.
    """
    est = _check_factorizer(factorizer)
    rows = RowSource(source)
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_rows = check_int(batch_rows, "batch_rows", minimum=1)
    k = int(est.n_concepts)
    init_rows = max(batch_rows, 50 * k) if init_rows is None else check_int(
        init_rows, "init_rows", minimum=k)
    rng = make_rng(seed)
    sample = rows.sample(init_rows, rng)
    fit_seeded(est, sample, seed)  # checks the rows (finite, non-negative, n_concepts <= rows)
    del sample
    # Torch solvers compute in their dtype: copy blocks straight into it.
    dtype = None if est._backend == "numpy" else np.dtype(est.dtype)
    total = None if rows.store is None else _count_blocks(rows, batch_rows)
    if est.solver == "torch_hals":
        seen = _online_hals(est, rows, epochs, batch_rows, rng, dtype, total, progress)
    else:
        seen = _minibatch_nmf(est, rows, epochs, batch_rows, rng, dtype, total, progress, seed)
    est.n_samples_seen_ = seen
    if error:
        est.reconstruction_err_ = streaming_error(est, rows, batch_rows=batch_rows,
                                                  progress=progress)[0]
    return est


def _count_blocks(rows: RowSource, batch_rows: int) -> int:
    return sum(math.ceil(_rows_in(rows.store.chunk(i)) / batch_rows) for i in range(rows.n_chunks))


def _online_hals(est: NMF, rows: RowSource, epochs: int, batch_rows: int,
                 rng: np.random.Generator, dtype: Any, total: int | None, progress: bool) -> int:
    seen = steps = 0
    for epoch in range(epochs):
        est._forget_online_statistics()  # this epoch's codes come from a settled dictionary
        seen = 0
        blocks = rows.blocks(batch_rows, _epoch_order(rows, rng), dtype)
        for block in tqdm(blocks, total=total, disable=not progress, leave=False,
                          desc=f"streaming NMF, epoch {epoch + 1}/{epochs}"):
            est.partial_fit(block)
            seen += block.shape[0]
            steps += 1
    # partial_fit counts its calls from each epoch's fresh statistics: report every epoch's
    # updates, as MiniBatchNMF's n_steps_ does on the other path
    est.n_iter_ = steps
    return seen


def _minibatch_nmf(est: NMF, rows: RowSource, epochs: int, batch_rows: int,
                   rng: np.random.Generator, dtype: Any, total: int | None, progress: bool,
                   seed: int | None) -> int:
    from sklearn.decomposition import MiniBatchNMF

    online = MiniBatchNMF(n_components=est.n_concepts, init="custom", batch_size=batch_rows,
                          beta_loss="frobenius", tol=est.tol, max_iter=est.max_iter,
                          alpha_W=est.alpha_W, alpha_H=est.alpha_H, l1_ratio=est.l1_ratio,
                          random_state=est.random_state if est.random_state is not None else seed)
    start = np.asarray(est.components_)
    seen = 0
    for epoch in range(epochs):
        seen = 0
        blocks = rows.blocks(batch_rows, _epoch_order(rows, rng), dtype)
        for block in tqdm(blocks, total=total, disable=not progress, leave=False,
                          desc=f"streaming MiniBatchNMF, epoch {epoch + 1}/{epochs}"):
            block = est._prepare_input(est._check_input(block, "source", fitting=False))
            if not hasattr(online, "components_"):
                online.partial_fit(block, W=np.asarray(est.transform(block), dtype=block.dtype),
                                   H=start.astype(block.dtype))
            else:
                online.partial_fit(block)
            seen += block.shape[0]
    est.components_ = np.array(online.components_, copy=True)
    est.n_iter_ = int(online.n_steps_)
    est.reconstruction_err_ = float("nan")
    return seen


# ------------------------------------------------------------------------------ encoding
def transform_streaming(factorizer: Factorizer, source: Any, *, batch_rows: int = 65536,
                        progress: bool = False) -> Iterator[np.ndarray | torch.Tensor]:
    """Codes of every chunk of ``source``, one code chunk per source chunk, in order.

    Each chunk is encoded in blocks of at most ``batch_rows`` rows with the dictionary fixed.
    When a chunk fits in one block (the default ``batch_rows`` is 65,536), code chunk ``i``
    equals ``factorizer.transform`` of source chunk ``i`` as rows. A chunk split into several
    blocks gets the same codes (up to float rounding) from the encoders that code each row on
    its own (PCAConcepts, ICAConcepts, KMeansConcepts, SparseDictionary, TopKSAE), but only
    approximately the same from NMF and SemiNMF: their encoders stop once a sum over all the
    rows encoded together falls below ``tol``, so a row's codes depend on which rows share its
    block, within the solver's tolerance. At the default ``tol=1e-4`` the gap is about 1e-4 of
    the largest code for NMF's ``"cd"`` and up to about 1e-2 for ``"mu"``, ``"torch_hals"`` and
    SemiNMF; a smaller ``tol`` (or a larger ``batch_rows``) brings them closer. Chunks of
    feature maps ``(n, C, h, w)`` give coefficient maps ``(n, k, h, w)``.
    """
    if not isinstance(factorizer, Factorizer):
        raise TypeError(f"`factorizer` must be a fitted conceptkit Factorizer; got "
                        f"{describe(factorizer)}.")
    factorizer._check_fitted()
    rows = RowSource(source)
    batch_rows = check_int(batch_rows, "batch_rows", minimum=1)
    for chunk in tqdm(rows.raw_chunks(), total=rows.n_chunks, disable=not progress, leave=False,
                      desc="streaming transform"):
        flat = _as_rows(chunk, "source")
        codes = np.concatenate([
            np.asarray(factorizer.transform(np.array(flat[s:s + batch_rows],
                                                     dtype=_float_dtype(flat.dtype))))
            for s in range(0, flat.shape[0], batch_rows)])
        if chunk.ndim == 4:
            n, _, h, w = chunk.shape
            codes = np.ascontiguousarray(codes.reshape(n, h, w, -1).transpose(0, 3, 1, 2))
        yield codes


def streaming_error(factorizer: Factorizer, source: Any, *, batch_rows: int = 65536,
                    progress: bool = False) -> tuple[float, float]:
    """``(||A - U W||_F, ||A||_F)`` over every row of ``source``, with ``U = transform(A)``.

    Their ratio is the relative reconstruction error. One pass, block by block.
    """
    factorizer._check_fitted()
    rows = RowSource(source)
    batch_rows = check_int(batch_rows, "batch_rows", minimum=1)
    residual = norm = 0.0
    for block in tqdm(rows.blocks(batch_rows), total=None if rows.store is None else
                      _count_blocks(rows, batch_rows), disable=not progress, leave=False,
                      desc="streaming error"):
        block = factorizer._prepare_input(block)
        recon = np.asarray(factorizer.inverse_transform(factorizer.transform(block)), np.float64)
        residual += float(np.sum((block - recon) ** 2))
        norm += float(np.sum(np.square(block, dtype=np.float64)))
    return math.sqrt(residual), math.sqrt(norm)


def write_codes(factorizer: Factorizer, source: Any, path: str | os.PathLike, *,
                batch_rows: int = 65536, progress: bool = True, overwrite: bool = False) -> Any:
    """Encode an :class:`~conceptkit.extraction.ActivationStore` into a store of codes at ``path``.

    Chunk ``i`` of the new store holds the codes of chunk ``i`` of ``source`` (rows ``(m, k)``, or
    coefficient maps ``(n, k, h, w)`` for a ``"maps"`` store), written atomically; a rerun after an
    interruption encodes only the missing chunks. A store at ``path`` written from other
    activations, another fitted state or other settings of ``factorizer`` (``set_params``) is
    refused unless ``overwrite`` is true. Returns the new store.
    """
    from ..extraction import ActivationStore
    from ..extraction._fingerprint import estimator_identity
    from ..extraction._store import finalize_store, write_chunks

    rows = RowSource(source)
    if rows.store is None:
        raise TypeError(f"`source` must be an ActivationStore (or its path) to write a code store "
                        f"with the same chunks; got {describe(source)}. Iterate "
                        f"`transform_streaming` for other sources.")
    store: ActivationStore = rows.store
    manifest = store.manifest
    chunk_size = int(manifest["chunk_size"])
    layout = manifest["layout"]  # codes keep the rows' structure: pooled, positions or maps

    def compute(start: int, stop: int) -> torch.Tensor:
        index = start // chunk_size
        codes = next(transform_streaming(factorizer, [store.chunk(index)], batch_rows=batch_rows))
        return torch.from_numpy(codes)

    # the codes depend on the source rows, the fitted state and the settings `transform` reads
    # (hard or soft codes, a penalty, a solver): a rerun with any of them changed must not
    # resume from the old chunks
    fingerprint = {"codes_of": manifest.get("fingerprint") or str(store.path),
                   "factorizer": type(factorizer).__name__,
                   "state": estimator_identity(factorizer)}
    write_chunks(compute, int(manifest["n_inputs"]), path, chunk_size=chunk_size, layout=layout,
                 progress=progress, fingerprint=fingerprint, overwrite=bool(overwrite))
    meta = {"codes_of": str(store.path), "factorizer": type(factorizer).__name__,
            "source_layout": manifest["layout"]}
    return finalize_store(path, int(manifest["n_inputs"]), chunk_size=chunk_size, layout=layout,
                          meta=meta)
