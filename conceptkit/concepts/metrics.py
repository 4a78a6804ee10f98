"""Extraction metrics: how faithful, sparse and stable a concept dictionary is.

Each metric declares its direction (Quantus style) in :data:`EXTRACTION_METRICS`; the functions can
also be called directly. Inputs may be numpy arrays or torch tensors; results are Python floats.

========================  ==================  =====================================================
name                      better              what it measures
========================  ==================  =====================================================
``relative_l2``           lower               mean over rows of ``||a - â|| / ||a||``
``sparsity_l0``           lower               fraction of codes with ``|u| > eps``
``hoyer``                 higher              mean Hoyer sparsity of the code rows, in [0, 1]
``frechet_distance``      lower               Gaussian Fréchet (squared W2) distance of A vs Â
``stability``             higher              mean Hungarian-matched cosine between dictionaries
                                              fitted on random subsets of the rows
``dead_codes``            lower               fraction of concepts whose code is zero on every row
``seed_stability``        higher              Hungarian-matched cosine between the dictionaries of
                                              two fits with different seeds on the same rows
========================  ==================  =====================================================
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.base import clone
from tqdm.auto import tqdm

from .._deprecation import renamed_arguments
from .._validation import check_choice, check_float, check_int, check_matrix, make_rng, to_numpy
from ._base import Factorizer
from ._nmf import single_blas_thread

__all__ = ["EXTRACTION_METRICS", "Metric", "dead_codes", "extraction_metrics", "frechet_distance",
           "hoyer", "matched_cosine", "relative_l2", "seed_stability", "sparsity_l0", "stability"]


def _matrix(x, name: str, **kwargs) -> np.ndarray:
    return np.asarray(to_numpy(check_matrix(x, name, **kwargs)), dtype=np.float64)


def _pair(A, A_hat) -> tuple[np.ndarray, np.ndarray]:
    A = _matrix(A, "A")
    A_hat = _matrix(A_hat, "A_hat")
    if A.shape[1] != A_hat.shape[1]:
        raise ValueError(f"`A` and `A_hat` must have the same number of columns; got shapes "
                         f"{A.shape} and {A_hat.shape}.")
    return A, A_hat


def relative_l2(A: np.ndarray | torch.Tensor, A_hat: np.ndarray | torch.Tensor) -> float:
    """Mean over rows of ``||a - â|| / ||a||`` for ``A, A_hat (n, C)``; 0 is perfect (lower better).

    Rows of ``A`` that are zero (a dead position after a ReLU) have no relative error and are
    left out of the mean (dividing by a zero norm gave values near 1e305).
    """
    A, A_hat = _pair(A, A_hat)
    if A.shape != A_hat.shape:
        raise ValueError(f"`A` and `A_hat` must have the same shape; got {A.shape} and {A_hat.shape}.")
    norms = np.linalg.norm(A, axis=1)
    errors = np.linalg.norm(A - A_hat, axis=1)
    kept = norms > 0
    if not kept.any():
        raise ValueError("every row of `A` is zero: the relative error is undefined.")
    return float(np.mean(errors[kept] / norms[kept]))


def sparsity_l0(U: np.ndarray | torch.Tensor, eps: float = 1e-6) -> float:
    """Fraction of entries of the codes ``U (n, k)`` with ``|u| > eps`` (lower is sparser)."""
    U = _matrix(U, "U")
    eps = check_float(eps, "eps", minimum=0.0)
    return float(np.mean(np.abs(U) > eps))


def hoyer(U: np.ndarray | torch.Tensor) -> float:
    """Mean Hoyer sparsity of the rows of ``U (n, k)`` (or of one vector ``(k,)``), in [0, 1].

    ``(sqrt(k) - ||u||_1 / ||u||_2) / (sqrt(k) - 1)``: 1 for a one-hot row, 0 for a constant row
    (higher is sparser). An all-zero row has no active entry and counts as 1.
    """
    if isinstance(U, (np.ndarray, torch.Tensor)) and U.ndim == 1:
        U = U[None]
    U = _matrix(U, "U")
    k = U.shape[1]
    if k < 2:
        raise ValueError(f"`U` needs at least 2 columns for the Hoyer measure; got shape {U.shape}.")
    l1 = np.abs(U).sum(axis=1)
    l2 = np.linalg.norm(U, axis=1)
    ratio = np.divide(l1, l2, out=np.ones_like(l1), where=l2 > 0)
    root = np.sqrt(k)
    return float(np.mean(np.clip((root - ratio) / (root - 1.0), 0.0, 1.0)))


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((S + S.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _covariance_factor(centred: np.ndarray) -> np.ndarray:
    """A matrix ``F`` with ``Fᵀ F = Σ``, the covariance (ddof 1) of rows already centred.

    With ``n <= C`` rows it is the rows themselves over ``sqrt(n - 1)`` (``(n, C)``, no ``C x C``
    matrix is formed); otherwise the symmetric PSD square root ``Σ^½`` ``(C, C)``.
    """
    n, c = centred.shape
    if n <= c:
        return centred / np.sqrt(n - 1)
    return _psd_sqrt(centred.T @ centred / (n - 1))


def frechet_distance(A: np.ndarray | torch.Tensor, A_hat: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``A (n, C)`` and ``A_hat (m, C)``.

    ``||μ1 - μ2||² + tr(Σ1 + Σ2 - 2 (Σ1^½ Σ2 Σ1^½)^½)`` (the squared 2-Wasserstein distance, as in
    FID; lower is better). The cross term is computed as the nuclear norm ``||F2 F1ᵀ||_*`` of any
    factors with ``Fᵢᵀ Fᵢ = Σᵢ``: the singular values of ``F2 F1ᵀ`` are the square roots of the
    eigenvalues of ``Σ1^½ Σ2 Σ1^½``. A set with fewer rows than features uses its centred rows as
    the factor, so for activations with ``n < C`` (1280 channels, a few hundred crops) the cost is
    one ``(m, C) x (C, n)`` product and an ``m x n`` SVD instead of two ``C x C``
    eigendecompositions (6.8 s -> 0.27 s at n = m = 512, C = 1280); a set with more rows uses the
    PSD square root of its covariance (an eigendecomposition, negative round-off eigenvalues
    clipped to 0), and when both sets have more rows than features the cross term is read from
    the eigenvalues of ``Σ1^½ Σ2 Σ1^½``. Exact for the rank-deficient covariances of ``C > n``
    (no ridge needed).
    """
    A, A_hat = _pair(A, A_hat)
    if min(A.shape[0], A_hat.shape[0]) < 2:
        raise ValueError(f"`A` and `A_hat` need at least 2 rows each to estimate covariances; got "
                         f"{A.shape} and {A_hat.shape}.")
    mu1, mu2 = A.mean(axis=0), A_hat.mean(axis=0)
    mean_gap = float(np.sum((mu1 - mu2) ** 2))
    centred1, centred2 = A - mu1, A_hat - mu2
    trace1 = float(np.sum(centred1 * centred1)) / (A.shape[0] - 1)
    trace2 = float(np.sum(centred2 * centred2)) / (A_hat.shape[0] - 1)
    if min(A.shape[0], A_hat.shape[0]) > A.shape[1]:
        # Both covariances full size: one eigendecomposition for Σ1^½, eigenvalues of the middle.
        root1 = _covariance_factor(centred1)
        middle = root1 @ (centred2.T @ centred2 / (A_hat.shape[0] - 1)) @ root1
        cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    else:
        # At most an (m, n) SVD with m or n <= C: milliseconds on one thread, while a second
        # OpenBLAS thread waiting for a busy core made it take ~1 s in bench_pipeline.py.
        with single_blas_thread():
            F1, F2 = _covariance_factor(centred1), _covariance_factor(centred2)
            cross = float(np.linalg.svd(F2 @ F1.T, compute_uv=False).sum())
    return float(max(mean_gap + trace1 + trace2 - 2.0 * cross, 0.0))


def matched_cosine(W1: np.ndarray | torch.Tensor, W2: np.ndarray | torch.Tensor, *, absolute: bool = False,
                   return_pairs: bool = False) -> float | tuple[float, np.ndarray, np.ndarray]:
    """Mean cosine similarity of the rows of ``W1 (k1, C)`` and ``W2 (k2, C)`` after an optimal
    one-to-one matching (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`).

    ``min(k1, k2)`` pairs are matched. ``absolute=True`` ignores signs (for PCA/ICA directions).
    With ``return_pairs=True`` returns ``(score, rows, cols)``, the matched row indices.
    """
    W1 = _matrix(W1, "W1")
    W2 = _matrix(W2, "W2", columns=W1.shape[1])
    tiny = np.finfo(np.float64).tiny
    W1 = W1 / np.maximum(np.linalg.norm(W1, axis=1, keepdims=True), tiny)
    W2 = W2 / np.maximum(np.linalg.norm(W2, axis=1, keepdims=True), tiny)
    similarity = W1 @ W2.T
    if absolute:
        similarity = np.abs(similarity)
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    score = float(similarity[rows, cols].mean())
    return (score, rows, cols) if return_pairs else score


@renamed_arguments(subset="subset_fraction")  # 0.2: the name CMuFidelity uses
def stability(factorizer: Factorizer, A: np.ndarray | torch.Tensor, n_bootstrap: int = 5,
              subset_fraction: float = 0.8,
              seed: int | None = 0, *, absolute: bool | None = None,
              progress: bool = False) -> float:
    """Dictionary stability: refit clones of ``factorizer`` on random row subsets of ``A (n, C)``.

    Each of ``n_bootstrap`` clones is fitted on ``round(subset_fraction * n)`` rows drawn without
    replacement (``seed`` picks the rows, 0 by default so that a metric of a fitted factorizer
    repeats; the factorizer keeps its own ``random_state``); every pair
    of dictionaries is matched with :func:`matched_cosine` and the mean matched cosine is returned
    (1 = the same concepts every time; higher is better). ``absolute=None`` ignores signs exactly
    when the factorizer's codes may be negative (PCA, ICA, signed sparse codes).
    """
    if not isinstance(factorizer, Factorizer):
        raise TypeError(f"`factorizer` must be a conceptkit Factorizer; got {type(factorizer).__name__}.")
    A = check_matrix(A, "A", min_rows=2)
    n_bootstrap = check_int(n_bootstrap, "n_bootstrap", minimum=2)
    subset_fraction = check_float(subset_fraction, "subset_fraction", minimum=0.0, maximum=1.0,
                                  strict_minimum=True)
    size = int(round(subset_fraction * A.shape[0]))
    if size < factorizer.n_concepts:
        raise ValueError(f"`subset_fraction`={subset_fraction} keeps {size} of {A.shape[0]} rows, "
                         f"fewer than n_concepts={factorizer.n_concepts}; use a larger "
                         f"subset_fraction or more rows.")
    if absolute is None:
        absolute = not factorizer.nonnegative_codes
    rng = make_rng(seed)
    dictionaries = []
    for _ in tqdm(range(n_bootstrap), desc="stability", disable=not progress):
        rows = np.sort(rng.choice(A.shape[0], size=size, replace=False))
        part = A[torch.as_tensor(rows)] if isinstance(A, torch.Tensor) else A[rows]
        dictionaries.append(clone(factorizer).fit(part).components_)
    scores = [matched_cosine(a, b, absolute=absolute)
              for a, b in itertools.combinations(dictionaries, 2)]
    return float(np.mean(scores))


def dead_codes(U: np.ndarray | torch.Tensor, eps: float = 0.0, *, count: bool = False) -> float:
    """Fraction of the ``k`` concepts whose code ``|u| <= eps`` on every row of ``U (n, k)``.

    A dead concept never takes part in a reconstruction (sparse autoencoders lose latents this
    way). ``count=True`` returns the number of dead concepts instead of the fraction.
    """
    U = _matrix(U, "U")
    eps = check_float(eps, "eps", minimum=0.0)
    dead = int(np.sum(np.abs(U).max(axis=0) <= eps))
    return float(dead) if count else dead / U.shape[1]


def seed_stability(factorizer: Factorizer, A: np.ndarray | torch.Tensor, seeds: Sequence[int] = (0, 1),
                   *, absolute: bool | None = None, progress: bool = False, **_: object) -> float:
    """Cross-seed stability: mean Hungarian-matched cosine between the dictionaries of clones of
    ``factorizer`` fitted on all of ``A`` with ``random_state`` set to each of ``seeds``.

    With the default two seeds this is the matched cosine between two runs; with more, the mean
    over every pair (1 = the same concepts whatever the seed; higher is better). Factorizers
    without a random state (PCA) give 1. ``absolute=None`` ignores signs when codes may be
    negative. Extra keyword arguments of :func:`extraction_metrics` are accepted and ignored.
    """
    if not isinstance(factorizer, Factorizer):
        raise TypeError(f"`factorizer` must be a conceptkit Factorizer; got {type(factorizer).__name__}.")
    seeds = [check_int(s, "seeds", minimum=0) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(f"`seeds` needs at least 2 seeds to compare runs; got {seeds}.")
    A = check_matrix(A, "A", min_rows=2)
    if absolute is None:
        absolute = not factorizer.nonnegative_codes
    dictionaries = [clone(factorizer).set_params(random_state=s).fit(A).components_
                    for s in tqdm(seeds, desc="seed stability", disable=not progress)]
    return float(np.mean([matched_cosine(a, b, absolute=absolute)
                          for a, b in itertools.combinations(dictionaries, 2)]))


@dataclass(frozen=True)
class Metric:
    """One extraction metric: its function, direction and what it is computed from.

    ``inputs`` is ``"reconstruction"`` (called as ``func(A, A_hat)``), ``"codes"``
    (``func(U)``) or ``"refit"`` (``func(factorizer, A, **refit_kwargs)``).
    """

    name: str
    func: Callable[..., float]
    higher_is_better: bool
    inputs: str

    def __call__(self, *args, **kwargs) -> float:
        return self.func(*args, **kwargs)

    def evaluate(self, A: Any, A_hat: Any, U: Any, factorizer: Factorizer,
                 **refit_kwargs: Any) -> float:
        """The metric from what it may need: activations ``A``, their reconstruction ``A_hat``,
        the codes ``U`` and the factorizer (``refit_kwargs`` go to refit metrics only).

        A reconstruction is compared with what the factorizer fitted and encodes: ``A`` after
        its own input step (``NMF(relu=True)`` clips negative activations to 0), as
        :func:`~conceptkit.concepts.streaming_error` does. Refit metrics get ``A`` itself."""
        if self.inputs == "reconstruction":
            return self.func(factorizer._prepare_input(check_matrix(A, "A")), A_hat)
        if self.inputs == "codes":
            return self.func(U)
        return self.func(factorizer, A, **refit_kwargs)


EXTRACTION_METRICS: dict[str, Metric] = {
    "relative_l2": Metric("relative_l2", relative_l2, False, "reconstruction"),
    "sparsity_l0": Metric("sparsity_l0", sparsity_l0, False, "codes"),
    "hoyer": Metric("hoyer", hoyer, True, "codes"),
    "frechet_distance": Metric("frechet_distance", frechet_distance, False, "reconstruction"),
    "stability": Metric("stability", stability, True, "refit"),
    "dead_codes": Metric("dead_codes", dead_codes, False, "codes"),
    "seed_stability": Metric("seed_stability", seed_stability, True, "refit"),
}


@renamed_arguments(subset="subset_fraction")  # 0.2
def extraction_metrics(factorizer: Factorizer, A: np.ndarray | torch.Tensor, metrics: Sequence[str] | None = None, *,
                       n_bootstrap: int = 5, subset_fraction: float = 0.8, seed: int | None = 0,
                       progress: bool = False) -> dict[str, float]:
    """Evaluate a fitted ``factorizer`` on activations ``A (n, C)``.

    Codes are ``U = factorizer.transform(A)`` and the reconstruction is
    ``A_hat = factorizer.inverse_transform(U)``, compared with what the factorizer encodes:
    ``A`` after its own input step (``NMF(relu=True)`` clips negative values to 0, as it
    does before fitting); ``stability`` refits clones (see
    :func:`stability`, which receives ``n_bootstrap``, ``subset_fraction``, ``seed`` and
    ``progress``).
    ``metrics`` lists names from :data:`EXTRACTION_METRICS` (default: all of them). Directions are
    in ``EXTRACTION_METRICS[name].higher_is_better``.
    """
    if not isinstance(factorizer, Factorizer):
        raise TypeError(f"`factorizer` must be a conceptkit Factorizer; got {type(factorizer).__name__}.")
    if isinstance(metrics, str):
        raise TypeError(f"`metrics` must be a list of names; got the string {metrics!r}. "
                        f"Did you mean [{metrics!r}]?")
    names = list(EXTRACTION_METRICS) if metrics is None else list(metrics)
    for name in names:
        check_choice(name, "metrics", list(EXTRACTION_METRICS))
    U = factorizer.transform(A)
    A_hat = factorizer.inverse_transform(U)
    return {name: EXTRACTION_METRICS[name].evaluate(A, A_hat, U, factorizer,
                                                    n_bootstrap=n_bootstrap, subset_fraction=subset_fraction,
                                                    seed=seed, progress=progress)
            for name in names}
