"""Factorisation over many processes: sufficient statistics all-reduced across torch.distributed.

NMF by alternating non-negative least squares needs, for its dictionary update, only the sums
``G = Σ UᵀU (k, k)`` and ``R = Σ UᵀA (k, C)`` over the rows, and each row's codes depend only on
that row and the dictionary. :func:`fit_distributed` therefore splits an activation store's chunks
across the ranks of an initialised :mod:`torch.distributed` group (chunk ``i`` goes to rank
``i mod world_size``), lets every rank encode its chunks and add up ``G`` and ``R`` in float64,
all-reduces the two sums, and has every rank apply the same dictionary update: each rank ends with
the dictionary that one process reading every chunk computes, up to the order of the float64
additions. Without an initialised group (or with one process) it is a plain out-of-core batch
fit: one pass over the store per iteration, memory bounded by one block of rows.

The starting dictionary comes from an in-memory fit of a uniform row sample on rank 0, broadcast
to every rank. A sparse autoencoder averages gradients instead (``TopKSAE(distributed=True)``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_float, check_int, describe, make_rng

__all__ = ["all_reduce_grads", "distributed_world", "fit_distributed"]


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when there is none."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (a no-op in one process); returns it."""
    if distributed_world()[1] > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


def all_reduce_grads(params: list[torch.Tensor], fired: torch.Tensor) -> torch.Tensor:
    """Sum the gradients of ``params`` (in float64) and the boolean ``fired`` mask over the
    ranks, in one all-reduce; the gradients are written back in place, the mask is returned."""
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.detach().double().flatten() for g in grads]
                     + [fired.double().flatten()]).cpu()
    _all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        size = g.numel()
        p.grad = flat[offset:offset + size].view_as(g).to(device=g.device, dtype=g.dtype)
        offset += size
    return (flat[offset:] > 0).to(fired.device)


def _broadcast(array: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Rank 0's float64 array on every rank."""
    tensor = (torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
              if array is not None else torch.zeros(shape, dtype=torch.float64))
    if distributed_world()[1] > 1:
        torch.distributed.broadcast(tensor, src=0)
    return tensor.numpy()


def fit_distributed(factorizer: Any, source: Any, *, max_iter: int = 50, tol: float = 1e-4,
                    batch_rows: int = 65536, init_rows: int | None = None, seed: int | None = None,
                    progress: bool = True) -> Any:
    """Fit an :class:`~conceptkit.concepts.NMF` on the rows of ``source`` across ranks.

    Parameters
    ----------
    factorizer : NMF
        ``solver="torch_hals"`` (dictionary by HALS sweeps on the summed statistics) or
        ``"torch_mu"`` (multiplicative update ``W ← W ⊙ R / (G W)``); codes are always the exact
        non-negative least squares of :meth:`NMF.transform`. Penalties carry over, scaled by the
        total number of rows. Fitted in place.
    source : ActivationStore, path, re-iterable of arrays, or callable
        Row chunks ``(m, C)`` (feature-map chunks give one row per position). Every rank must
        see the same chunks; rank ``r`` reads chunks ``r, r + W, r + 2W, ...``.
    max_iter : int
        Passes over the data (each pass: codes of every row, then one dictionary update).
    tol : float
        Stop when a pass lowers the reconstruction error by less than ``tol`` times its value.
    batch_rows : int
        Rows encoded at once (blocks never cross chunks, so the blocks do not depend on the
        number of ranks).
    init_rows : int or None
        Rows of the uniform sample fitted on rank 0 for the starting dictionary (default
        ``max(4096, 50 * n_concepts)``).
    seed : int or None
        Picks the sample (and seeds the factorizer when its ``random_state`` is None).
    progress : bool
        Progress bar over the passes (rank 0 only).

    Returns
    -------
    NMF
        ``factorizer`` with ``components_``, ``reconstruction_err_`` (exact, over every row, for
        the codes of the last pass), ``data_norm_`` (``||A||_F``, for the relative error),
        ``n_iter_``, ``n_samples_seen_`` and ``n_features_in_``; identical on every rank.
    """
    from . import _nmf_torch as kernels
    from ._nmf import NMF
    from ._streaming import RowSource, fit_seeded

    if not isinstance(factorizer, NMF) or factorizer.solver not in ("torch_hals", "torch_mu"):
        raise TypeError(f"`factorizer` must be a conceptkit NMF with solver='torch_hals' or "
                        f"'torch_mu' (the solvers whose updates need only UᵀU and UᵀA); got "
                        f"{describe(factorizer)}"
                        f"{' with solver=' + repr(factorizer.solver) if isinstance(factorizer, NMF) else ''}.")
    est = factorizer
    est._validate_params()
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    tol = check_float(tol, "tol", minimum=0.0)
    batch_rows = check_int(batch_rows, "batch_rows", minimum=1)
    k = int(est.n_concepts)
    init_rows = max(4096, 50 * k) if init_rows is None else check_int(init_rows, "init_rows",
                                                                       minimum=k)
    rank, world = distributed_world()
    rows = RowSource(source)
    dtype = est._compute_dtype()
    device = est._compute_device()

    start = None
    if rank == 0:
        sample = rows.sample(init_rows, make_rng(seed))
        # validates the rows (finite, non-negative, enough of them); seeded on a clone
        fit_seeded(est, sample, seed)
        start = np.asarray(est.components_, dtype=np.float64)
        del sample
    c_shape = _broadcast(None if start is None else np.array(start.shape, np.float64), (2,))
    W = _broadcast(start, (int(c_shape[0]), int(c_shape[1])))
    c = W.shape[1]
    eye = np.eye(k)
    alpha_H = est.alpha_W if est.alpha_H == "same" else est.alpha_H
    previous = math.inf
    n_iter, seen, error = 0, 0, math.nan
    for n_iter in tqdm(range(1, max_iter + 1), disable=not progress or rank != 0,
                       desc=f"NMF over {world} rank(s)"):
        Wt = torch.from_numpy(W).to(device=device, dtype=dtype)
        stats = torch.zeros(k * k + k * c + 2, dtype=torch.float64)
        local_rows = 0
        for block in _my_blocks(rows, rank, world, batch_rows):
            X = est._to_backend(est._check_input(block, "source", fitting=True))
            if X.shape[1] != c:
                raise ValueError(f"`source` has a chunk with {X.shape[1]} columns; the first "
                                 f"dictionary was fitted on rows of {c} columns.")
            l1_U, l2_U, _, _ = kernels.regularization(X.shape[0], c, est.alpha_W, alpha_H,
                                                      est.l1_ratio)
            Ut, _ = kernels.nnls_hals(X, Wt, max_iter=est.max_iter, tol=est.tol, l1=l1_U, l2=l2_U)
            Ut64, X64 = Ut.double().cpu(), X.double().cpu()
            stats[:k * k] += (Ut64 @ Ut64.T).flatten()
            stats[k * k:k * k + k * c] += (Ut64 @ X64).flatten()
            stats[-2] += float((X64 ** 2).sum())
            local_rows += X.shape[0]
        stats[-1] = local_rows
        _all_reduce(stats)
        G = stats[:k * k].view(k, k).numpy()
        R = stats[k * k:k * k + k * c].view(k, c).numpy()
        squared_norm, seen = float(stats[-2]), int(stats[-1])
        squared = squared_norm - 2.0 * float((R * W).sum()) + float((G * (W @ W.T)).sum())
        error = math.sqrt(max(squared, 0.0))
        if previous - error < tol * error or n_iter == max_iter:
            break
        previous = error
        _, _, l1_W, l2_W = kernels.regularization(seen, c, est.alpha_W, alpha_H, est.l1_ratio)
        W = _update_dictionary(est.solver, W, G + l2_W * eye, R - l1_W, est.max_iter)
    est._forget_online_statistics()
    est.components_ = W.astype(np.float32 if dtype == torch.float32 else np.float64)
    est.n_features_in_ = int(c)
    est.n_iter_ = int(n_iter)
    est.n_samples_seen_ = seen
    est.reconstruction_err_ = float(error)
    est.data_norm_ = math.sqrt(squared_norm)
    return est


def _update_dictionary(solver: str, W: np.ndarray, G: np.ndarray, R: np.ndarray,
                       max_sweeps: int) -> np.ndarray:
    """One dictionary update from the summed statistics, in float64 (identical on every rank)."""
    from . import _nmf_torch as kernels

    Wt = torch.from_numpy(W.copy())
    if solver == "torch_mu":
        Wt.mul_(torch.from_numpy(R).clamp(min=0) / (torch.from_numpy(G) @ Wt).clamp(min=1e-300))
    else:
        kernels.hals_sweeps(Wt, torch.from_numpy(G), torch.from_numpy(R), max_sweeps=max_sweeps,
                            delta=1e-3)
    return Wt.numpy()


def _my_blocks(rows: Any, rank: int, world: int, batch_rows: int):
    """This rank's blocks: the chunks ``rank, rank + world, ...``, each cut into blocks."""
    from ._streaming import _float_dtype

    if rows.store is not None:
        order = range(rank, rows.n_chunks, world)
        yield from rows.blocks(batch_rows, order)
        return
    for index, chunk in enumerate(rows.chunks()):
        if index % world != rank:
            continue
        for start in range(0, chunk.shape[0], batch_rows):
            block = chunk[start:start + batch_rows]
            yield np.array(block, dtype=_float_dtype(block.dtype), copy=True)
