"""Generic Sobol sensitivity indices of a vectorised function on ``[0, 1]^d``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._deprecation import warn_deprecated
from .._reprs import dataclass_repr
from .._validation import check_choice, check_float, check_int, describe, make_rng, to_numpy
from ._design import replicated_design, sample_ab
from ._estimators import (
    ORDERS,
    bootstrap_interval,
    check_estimator,
    estimate,
    precision_eps,
    split_outputs,
)


@dataclass(frozen=True, eq=False)
class SobolResult:
    """Sobol indices with a bootstrap confidence interval.

    Returned by :func:`sobol_indices_with_ci`. ``np.asarray(result)`` gives ``result.indices``.

    Attributes
    ----------
    indices : ndarray of shape (d,)
        The point estimates (from the full design).
    ci_low, ci_high : ndarray of shape (d,)
        Percentile bootstrap bounds at level ``confidence``.
    confidence : float
        The level of the interval, for example 0.95.
    """

    indices: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    confidence: float

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.indices, dtype=dtype)

    def __len__(self) -> int:
        return len(self.indices)


def estimate_sobol(outputs: Any, n_vars: int, *, order: str = "total",
                   estimator: str = "jansen", include_b: bool = True) -> np.ndarray:
    """Sobol indices from outputs already computed on a block-ordered replicated design.

    Parameters
    ----------
    outputs : array of shape (..., M)
        ``f`` on the rows of :func:`replicated_design` (``M = N (d + 2)`` with ``B``,
        ``N (d + 1)`` without). Leading axes are independent problems.
    n_vars : int
        Number of variables ``d``.
    order : {"total", "first"}
        First-order estimators read ``f(B)`` and need ``include_b=True``.
    estimator : str
        A key of ``TOTAL_ORDER_ESTIMATORS`` or ``FIRST_ORDER_ESTIMATORS``.
    include_b : bool
        Whether the design contains the ``B`` block.

    Returns
    -------
    ndarray of shape (..., d)
    """
    n_vars = check_int(n_vars, "n_vars", minimum=1)
    function = check_estimator(order, estimator)
    if order == "first" and not include_b:
        raise ValueError("first-order indices read f(B): pass outputs of a design built with "
                         "include_b=True.")
    outputs = to_numpy(outputs)
    if outputs.ndim < 1 or not np.all(np.isfinite(outputs)):
        raise ValueError(f"`outputs` must be a finite array of shape (..., M); got {describe(outputs)}.")
    return estimate(outputs, n_vars, function, include_b)


def _evaluate(func: Callable, points: np.ndarray,
              batch_size: int | None) -> tuple[np.ndarray, np.dtype | torch.dtype]:
    """Outputs (float64) and the precision ``func`` computed them in (its float dtype, the
    coarsest over the chunks; a torch dtype for bfloat16, which numpy lacks)."""
    step = len(points) if batch_size is None else batch_size
    values = []
    precision: np.dtype | torch.dtype = np.dtype(np.float64)
    for start in range(0, len(points), step):
        chunk = points[start:start + step]
        out = func(chunk)
        dtype = out.dtype if isinstance(out, torch.Tensor) else None
        try:
            out = to_numpy(out)   # bfloat16 is read as float32 (exact)
            if dtype is None or not dtype.is_floating_point:
                dtype = out.dtype if np.issubdtype(out.dtype, np.floating) else None
            if dtype is not None and precision_eps(dtype) > precision_eps(precision):
                precision = dtype
            out = out.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`func` must return a numeric array or tensor of shape "
                            f"({len(chunk)},); got {describe(out)}, which does not convert to "
                            f"a float64 numpy array ({type(err).__name__}: {err}).") from err
        if out.shape != (len(chunk),):
            raise ValueError(f"`func` must map points of shape (M, d) to outputs of shape (M,); "
                             f"for M = {len(chunk)} it returned shape {out.shape}.")
        if not np.all(np.isfinite(out)):
            raise ValueError("`func` returned NaN or Inf values.")
        values.append(out)
    return np.concatenate(values), precision


def _run(func: Callable, n_vars: int, n_designs: int, estimator: str, order: str, sampler: str,
         seed: Any, batch_size: int | None):
    """Checks, design, evaluation and point estimates shared by the two public functions."""
    if not callable(func):
        raise TypeError(f"`func` must be callable; got {describe(func)}.")
    n_vars = check_int(n_vars, "n_vars", minimum=1)
    check_choice(order, "order", ORDERS)
    function = check_estimator(order, estimator)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    rng = make_rng(seed)
    a, b = sample_ab(n_designs, n_vars, sampler, rng)
    include_b = order == "first"
    points = replicated_design(a, b, include_b=include_b)
    outputs, precision = _evaluate(func, points, batch_size)
    indices = estimate(outputs, n_vars, function, include_b, precision)
    if bool(split_outputs(outputs, n_vars, include_b, precision).constant.all()):
        warnings.warn(f"`func` is constant on all {len(points)} design points (up to rounding): "
                      f"there is no variance to share out, and every index is returned as 0. "
                      f"Check that `func` reads its input.", RuntimeWarning, stacklevel=3)
    return indices, outputs, function, include_b, rng, n_vars, precision


def _check_interval(confidence: Any, n_bootstrap: Any) -> tuple[float, int]:
    confidence = check_float(confidence, "confidence", minimum=0.0, maximum=1.0,
                             strict_minimum=True)
    if confidence >= 1.0:
        raise ValueError(f"`confidence` must be < 1; got {confidence}.")
    return confidence, check_int(n_bootstrap, "n_bootstrap", minimum=2)


#: Bootstrap resamples of an interval when none are given.
DEFAULT_BOOTSTRAP = 100


def sobol_indices(func: Callable[[np.ndarray], Any], n_vars: int, n_designs: int = 1024,
                  estimator: str = "jansen", order: str = "total", sampler: str = "sobol",
                  seed: int | np.random.Generator | None = None,
                  confidence: float | None = None, n_bootstrap: int = DEFAULT_BOOTSTRAP,
                  batch_size: int | None = None) -> np.ndarray:
    """Sobol sensitivity indices of a function of ``n_vars`` independent uniform variables.

    ``func`` is evaluated on a replicated design ``[A; (B;) C_1; ...; C_d]``: ``N (d + 1)``
    points for total-order indices (``f(B)`` is never needed there) and ``N (d + 2)`` for
    first-order indices. Inputs on another box are obtained by rescaling inside ``func``.
    :func:`sobol_indices_with_ci` adds a bootstrap confidence interval.

    Parameters
    ----------
    func : callable
        Vectorised: maps points ``(M, d)`` in ``[0, 1]^d`` to outputs ``(M,)`` (numpy or torch).
    n_vars : int
        Number of variables ``d``.
    n_designs : int
        Number ``N`` of base points; a power of two for Sobol' samplers.
    estimator : str
        Total order: ``"jansen"`` (default), ``"homma"``, ``"saltelli"``, ``"janon"``, ``"glen"``.
        First order: ``"saltelli"`` (Saltelli 2010, as SALib) or ``"jansen"``.
    order : {"total", "first"}
    sampler : str
        A key of :data:`SAMPLERS`: ``"sobol"`` (scrambled, default), ``"sobol_unscrambled"``,
        ``"halton"``, ``"halton_unscrambled"``, ``"lhs"``, ``"random"``.
    seed : int, Generator or None
        Seeds the scramble (and the bootstrap); the same seed gives the same result.
    confidence, n_bootstrap
        Deprecated (0.2): with ``confidence``, this function returned a :class:`SobolResult`;
        call :func:`sobol_indices_with_ci` instead. ``n_bootstrap`` other than its default
        without ``confidence`` is refused (no interval is computed, so it would be ignored).
    batch_size : int or None
        Evaluate ``func`` on at most this many points per call (all at once by default).

    Returns
    -------
    ndarray of shape (d,)
    """
    n_bootstrap = check_int(n_bootstrap, "n_bootstrap", minimum=2)
    if confidence is None and n_bootstrap != DEFAULT_BOOTSTRAP:
        raise TypeError(f"`n_bootstrap` ({n_bootstrap}) sets the resamples of a bootstrap "
                        f"interval, which sobol_indices computes only with `confidence`; "
                        f"without it `n_bootstrap` would be ignored. For an interval call "
                        f"sobol_indices_with_ci(..., confidence=0.95, "
                        f"n_bootstrap={n_bootstrap}); otherwise leave `n_bootstrap` out.")
    if confidence is not None:
        warn_deprecated("sobol_indices(..., confidence=...) (which returned a SobolResult)",
                        "sobol_indices_with_ci(...), which always returns one")
        return sobol_indices_with_ci(func, n_vars, n_designs, estimator, order, sampler, seed,
                                     confidence=confidence, n_bootstrap=n_bootstrap,
                                     batch_size=batch_size)
    return _run(func, n_vars, n_designs, estimator, order, sampler, seed, batch_size)[0]


def sobol_indices_with_ci(func: Callable[[np.ndarray], Any], n_vars: int, n_designs: int = 1024,
                          estimator: str = "jansen", order: str = "total",
                          sampler: str = "sobol", seed: int | np.random.Generator | None = None,
                          *, confidence: float = 0.95, n_bootstrap: int = DEFAULT_BOOTSTRAP,
                          batch_size: int | None = None) -> SobolResult:
    """Sobol indices (as :func:`sobol_indices`) with a percentile bootstrap interval.

    The interval resamples the base rows of the design ``n_bootstrap`` times; the point
    estimates are those of :func:`sobol_indices` with the same arguments.

    Parameters
    ----------
    func : callable
        Vectorised: maps points ``(M, d)`` in ``[0, 1]^d`` to outputs ``(M,)`` (numpy or torch).
    n_vars : int
        Number of variables ``d``.
    n_designs : int
        Number ``N`` of base points; a power of two for Sobol' samplers.
    estimator : str
        Total order: ``"jansen"`` (default), ``"homma"``, ``"saltelli"``, ``"janon"``, ``"glen"``.
        First order: ``"saltelli"`` (Saltelli 2010, as SALib) or ``"jansen"``.
    order : {"total", "first"}
    sampler : str
        A key of :data:`SAMPLERS`: ``"sobol"`` (scrambled, default), ``"sobol_unscrambled"``,
        ``"halton"``, ``"halton_unscrambled"``, ``"lhs"``, ``"random"``.
    seed : int, Generator or None
        Seeds the scramble (and the bootstrap); the same seed gives the same result.
    confidence : float
        Level of the interval, for example 0.95.
    n_bootstrap : int
        Number of bootstrap resamples.
    batch_size : int or None
        Evaluate ``func`` on at most this many points per call (all at once by default).

    Returns
    -------
    SobolResult
    """
    confidence, n_bootstrap = _check_interval(confidence, n_bootstrap)
    indices, outputs, function, include_b, rng, n_vars, precision = _run(
        func, n_vars, n_designs, estimator, order, sampler, seed, batch_size)
    low, high = bootstrap_interval(outputs, n_vars, function, include_b, confidence,
                                   n_bootstrap, rng, precision)
    return SobolResult(indices=indices, ci_low=low, ci_high=high, confidence=confidence)


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
SobolResult.__repr__ = dataclass_repr  # type: ignore[method-assign]
