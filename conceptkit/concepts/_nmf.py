"""Non-negative matrix factorization ``A ≈ U W`` with ``U, W >= 0`` (CRAFT / ICE concepts).

Solvers come from a registry: scikit-learn's ``"cd"`` (coordinate descent, the CRAFT default) and
``"mu"`` (multiplicative updates) on the CPU, and torch ``"torch_hals"`` / ``"torch_mu"`` on any
device in float32 or float64.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import non_negative_factorization
from sklearn.exceptions import ConvergenceWarning

from .._deprecation import renamed_arguments
from .._validation import (
    check_choice,
    check_float,
    check_int,
    check_seed,
    held_warnings,
    make_rng,
    resolve_device,
)
from . import _nmf_torch as kernels
from ._base import Factorizer

_INITS = ("nndsvda", "nndsvd", "nndsvdar", "random")
_ONLINE_STATE = ("codes_gram_", "codes_cross_", "n_samples_seen_", "_squared_norm_seen")


@dataclass(frozen=True)
class _Solver:
    """How one solver fits (``(U, W, n_iter)``) and encodes with a fixed dictionary."""

    backend: str
    fit: Callable[[NMF, Any], tuple[Any, Any, int]]
    transform: Callable[[NMF, Any, Any], Any]


def _sklearn_kwargs(est: NMF) -> dict:
    return dict(solver=est.solver, beta_loss="frobenius", tol=est.tol, max_iter=est.max_iter,
                alpha_W=est.alpha_W, alpha_H=est.alpha_H, l1_ratio=est.l1_ratio,
                verbose=int(bool(est.progress)))


#: scikit-learn's solvers alternate BLAS products of size ``n x C x k`` with single-threaded
#: Cython updates. Below this many multiply-adds per product, a second BLAS thread saves at most a
#: millisecond per product, while on a busy machine (or next to torch's own thread pool) its
#: synchronisation costs ~15 ms per product: NMF of (8000, 64), k = 10, took 5.1 s with two
#: OpenBLAS threads and 0.27 s with one at load average 6 (benchmarks/bench_pipeline.py).
SINGLE_THREAD_PRODUCT = 3e7


@functools.lru_cache(maxsize=1)
def _threadpool_controller():
    from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

    return ThreadpoolController()  # inspecting the loaded libraries once costs ~1 ms


def single_blas_thread():
    """Context manager: numpy's BLAS/LAPACK on one thread (torch's own threads are untouched)."""
    return _threadpool_controller().limit(limits=1, user_api="blas")


def _blas_threads(X: np.ndarray, k: int):
    """One BLAS thread for small products (see :data:`SINGLE_THREAD_PRODUCT`), else as is."""
    if float(X.shape[0]) * X.shape[1] * k > SINGLE_THREAD_PRODUCT:
        return contextlib.nullcontext()
    return single_blas_thread()


def _stopped_early(est: NMF, what: str) -> None:
    """One warning, in the library's words, when a fit or an encoding ran out of iterations."""
    warnings.warn(f"NMF solver {est.solver!r} reached max_iter={est.max_iter} before converging "
                  f"to tol={est.tol} while {what}; its concepts are those of the stopped solver "
                  f"(200 iterations is scikit-learn's default and ICE's reference setting). For "
                  f"a converged fit, increase `max_iter`, e.g. ConceptExplainer(..., factorizer="
                  f"conceptkit.concepts.NMF({est.n_concepts}, max_iter={4 * est.max_iter})).",
                  ConvergenceWarning,
                  stacklevel=5)


def _sklearn_fit(est: NMF, X: np.ndarray):
    # scikit-learn's iteration-limit warning is said once in the library's words
    with held_warnings(ConvergenceWarning) as stopped, _blas_threads(X, est.n_concepts):
        U, W, n_iter = non_negative_factorization(
            X, n_components=est.n_concepts, init=est.init, update_H=True,
            random_state=est.random_state, **_sklearn_kwargs(est))
    if stopped:
        _stopped_early(est, "fitting the dictionary")
    return U, W, n_iter


def _sklearn_transform(est: NMF, X: np.ndarray, W: np.ndarray) -> np.ndarray:
    # update_H=False starts from zeros ("cd") or a constant ("mu"): deterministic.
    with held_warnings(ConvergenceWarning) as stopped, _blas_threads(X, W.shape[0]):
        U, _, _ = non_negative_factorization(X, H=W, n_components=W.shape[0], update_H=False,
                                             **_sklearn_kwargs(est))
    if stopped:
        _stopped_early(est, "encoding with the fitted dictionary")
    return U


def _cd_transform(est: NMF, X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """scikit-learn's ``cd`` transform, computed exactly the same way but vectorised over rows.

    With the dictionary fixed, scikit-learn's coordinate descent (``update_H=False``: codes start
    at zero, components visited in order, stop when the summed projected-gradient violation of a
    sweep falls to ``tol`` times that of the first sweep) updates every row independently, so the
    update of one component is the same for all rows at once. Unlike scikit-learn, which
    recomputes ``X @ W.T`` (``n x C x k``) at every sweep although it cannot change, this computes
    it once; a sweep then costs ``n x k x k``. Results agree with scikit-learn to rounding
    (tests/test_factorizers.py). 4.2x faster than scikit-learn on 128,000 x 256 rows, k = 10;
    the two encodes of the reference CNN's class pipeline went from 1.69 s to 1.05 s.
    """
    dtype = torch.float64 if X.dtype == np.float64 else torch.float32
    A = torch.from_numpy(np.ascontiguousarray(X)).to(dtype)
    D = torch.from_numpy(np.ascontiguousarray(W)).to(dtype)
    l1, l2, _, _ = _torch_reg(est, A)
    k = D.shape[0]
    G = D @ D.T  # HHt of scikit-learn (symmetric)
    G.diagonal().add_(l2)
    R = D @ A.T  # (k, n): XHt transposed, rows contiguous
    if l1:
        R -= l1
    Ut = torch.zeros_like(R)
    hess = G.diagonal().tolist()
    violation_init = None
    for _ in range(est.max_iter):
        violation = 0.0
        for t in range(k):
            grad = G[t] @ Ut - R[t]
            column = Ut[t]
            # |projected gradient|: |grad| where the code is positive, max(-grad, 0) at zero codes
            # (summed in the input's precision, as scikit-learn does)
            violation += float(torch.where(column > 0, grad.abs(), grad.neg().clamp_(min=0)).sum())
            if hess[t] != 0:
                column.sub_(grad / hess[t]).clamp_(min=0)
        if violation_init is None:
            violation_init = violation
        if violation_init == 0 or violation / violation_init <= est.tol:
            break
    else:
        if est.tol > 0:
            _stopped_early(est, "encoding with the fitted dictionary")
    return Ut.T.contiguous().numpy()


def _torch_reg(est: NMF, X: torch.Tensor) -> tuple[float, float, float, float]:
    alpha_H = est.alpha_W if est.alpha_H == "same" else est.alpha_H
    return kernels.regularization(X.shape[0], X.shape[1], est.alpha_W, alpha_H, est.l1_ratio)


def _torch_fit(fit_loop):
    def fit(est: NMF, X: torch.Tensor):
        init = est.init if est.init is not None else "nndsvda"
        Ut, W = kernels.initialize(X, est.n_concepts, init, make_rng(est.random_state))
        n_iter = fit_loop(X, Ut, W, max_iter=est.max_iter, tol=est.tol, reg=_torch_reg(est, X),
                          progress=bool(est.progress))
        if n_iter == est.max_iter and est.tol > 0:
            _stopped_early(est, "fitting the dictionary")
        return Ut.T, W, n_iter
    return fit


def _torch_transform(est: NMF, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    l1_U, l2_U, _, _ = _torch_reg(est, X)
    Ut, _ = kernels.nnls_hals(X, W, max_iter=est.max_iter, tol=est.tol, l1=l1_U, l2=l2_U)
    return Ut.T


SOLVERS: dict[str, _Solver] = {
    "cd": _Solver("numpy", _sklearn_fit, _cd_transform),
    "mu": _Solver("numpy", _sklearn_fit, _sklearn_transform),
    "torch_hals": _Solver("torch", _torch_fit(kernels.fit_hals), _torch_transform),
    "torch_mu": _Solver("torch", _torch_fit(kernels.fit_mu), _torch_transform),
}


class NMF(Factorizer):
    """Non-negative matrix factorization of activations ``A (n, C) ≈ U (n, k) · W (k, C)``.

    Parameters
    ----------
    n_concepts : int
        Number of concepts ``k`` (at most ``min(n, C)``).
    solver : {"cd", "mu", "torch_hals", "torch_mu"}
        ``"cd"`` and ``"mu"`` call :func:`sklearn.decomposition.non_negative_factorization` on the
        CPU (``device``/``dtype`` do not apply; float32 input stays float32). ``"torch_hals"``
        (accelerated hierarchical ALS, the same coordinate updates as ``"cd"``) and
        ``"torch_mu"`` run in torch on ``device`` in ``dtype``.
    init : {None, "nndsvda", "nndsvd", "nndsvdar", "random"}
        ``None`` means ``"nndsvda"`` as in scikit-learn when ``k <= min(n, C)``.
    max_iter, tol : int, float
        Iteration cap and stopping tolerance (scikit-learn's defaults and meaning; the torch
        solvers use scikit-learn's stopping rule for the matching algorithm). ``transform`` uses
        the same cap and tolerance for its non-negative least-squares solve of the codes with
        the dictionary fixed: scikit-learn's own for ``"cd"``/``"mu"``, deterministic HALS sweeps
        from the clipped least-squares solution for the torch solvers.
    alpha_W, alpha_H, l1_ratio : float, float or "same", float
        Elastic-net penalties on the codes (``alpha_W``) and the dictionary (``alpha_H``), scaled
        by the data size exactly as in scikit-learn. CRAFT's TensorFlow twin used ``alpha_W=1e-2``.
    relu : bool
        Clip negative activations to 0 before fitting/encoding. Off by default: negative input
        raises an error (use :class:`SemiNMF` for signed activations).
    random_state : int or None
        Seed for the initialisation (``None``: fresh randomness, as in scikit-learn).
    device : str, torch.device or None
        Torch solvers only (fitting with ``"cd"``/``"mu"`` refuses a device other than the CPU:
        it would be ignored); ``None`` computes where the input tensor lives (CPU for numpy).
        On a CPU shared with other busy processes, torch's OpenMP threads spin while they wait;
        ``OMP_WAIT_POLICY=PASSIVE`` in the environment (or ``torch.set_num_threads(1)``) avoids it.
    dtype : {"float32", "float64"}
        Torch solvers only: the compute and output dtype.
    progress : bool
        Show the solver's progress: a bar over iterations for the torch solvers, scikit-learn's
        own per-iteration lines for ``"cd"`` and ``"mu"``. Was ``verbose``.

    Attributes
    ----------
    components_ : ndarray of shape (k, C)
        Non-negative concept dictionary (numpy, on the CPU).
    reconstruction_err_ : float
        Frobenius norm ``||A - U W||`` on the training data.
    n_iter_ : int
    n_features_in_ : int
    """

    requires_nonnegative = True
    _rescalable = True  # codes unchanged when A and W are scaled together
    nonnegative_codes = True
    signed_components = False
    _renamed_params = {"verbose": "progress"}  # 0.2
    # partial_fit's running statistics are saved too, so that an online fit continues after
    # a round trip as it would have without one
    _state_arrays = ("components_", "codes_gram_", "codes_cross_")
    _optional_arrays = ("codes_gram_", "codes_cross_")
    _state_info = Factorizer._state_info + ("n_samples_seen_", "_squared_norm_seen")
    _positive_info = ("n_samples_seen_", "_squared_norm_seen")
    _whole_dictionary_state = _ONLINE_STATE
    _negative_hint = ("NMF needs non-negative activations: for signed activations (ViT/CLIP "
                      "tokens) use a factorizer that takes signs, TopKSAE (what "
                      "ConceptExplainer reads transformer tokens with by default) or SemiNMF, "
                      "or pass relu=True to clip negatives to 0 explicitly.")

    @renamed_arguments(verbose="progress")
    def __init__(self, n_concepts: int = 10, solver: str = "cd", init: str | None = None,
                 max_iter: int = 200, tol: float = 1e-4, alpha_W: float = 0.0,
                 alpha_H: float | str = "same", l1_ratio: float = 0.0, relu: bool = False,
                 random_state: int | None = None, device: str | torch.device | None = None,
                 dtype: str = "float32", progress: bool = False) -> None:
        self.n_concepts = n_concepts
        self.solver = solver
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.relu = relu
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.progress = progress

    @property
    def _backend(self) -> str:
        return SOLVERS[check_choice(self.solver, "solver", list(SOLVERS))].backend


    def _validate_params(self) -> None:
        super()._validate_params()
        check_choice(self.solver, "solver", list(SOLVERS))
        if self.init is not None:
            check_choice(self.init, "init", list(_INITS))
        check_int(self.max_iter, "max_iter", minimum=1)
        check_float(self.tol, "tol", minimum=0.0)
        check_float(self.alpha_W, "alpha_W", minimum=0.0)
        if self.alpha_H != "same":
            check_float(self.alpha_H, "alpha_H", minimum=0.0)
        check_float(self.l1_ratio, "l1_ratio", minimum=0.0, maximum=1.0)
        check_seed(self.random_state, "random_state")
        self._compute_dtype()

    def _check_device_applies(self) -> None:
        """At fit: ``device`` must name a device (the library's resolver), and one other than
        the CPU only with a torch solver: scikit-learn's run on the CPU whatever it says. (Not
        on loading: files may hold a device this machine lacks.)"""
        if self.device is None or SOLVERS[self.solver].backend != "numpy":
            return  # the torch solvers resolve it where they compute
        if resolve_device(self.device).type != "cpu":
            raise ValueError(f"`device` {str(self.device)!r} is used by the torch solvers only "
                             f"('torch_hals', 'torch_mu'); solver={self.solver!r} runs in "
                             f"scikit-learn on the CPU, so it would be ignored. Leave `device` "
                             f"out, or pass solver='torch_hals'.")

    def _prepare_input(self, X):
        if not self.relu:
            return X
        return X.clamp(min=0) if isinstance(X, torch.Tensor) else np.maximum(X, 0)

    def _fit(self, X):
        self._check_device_applies()
        solver = SOLVERS[self.solver]
        U, W, n_iter = solver.fit(self, X)
        self.components_ = _as_numpy(W)
        self.n_iter_ = int(n_iter)
        self.reconstruction_err_ = self._frobenius_error(X, U)
        self._forget_online_statistics()  # a batch fit starts the running statistics afresh
        return U

    def partial_fit(self, A: np.ndarray | torch.Tensor, y: Any = None) -> NMF:
        """Update the dictionary with one chunk of rows ``A (m, C)`` (online HALS).

        Only for ``solver="torch_hals"``. The estimator keeps the sufficient statistics of every
        row seen so far, ``codes_gram_ = Σ UᵀU (k, k)`` and ``codes_cross_ = Σ UᵀA (k, C)``
        (float64). Each call encodes the chunk with the current dictionary (the non-negative
        least squares of :meth:`transform`), adds its statistics and re-solves the dictionary
        against all of them with HALS sweeps (online NMF in the manner of Mairal et al., 2010).
        The first call, on an unfitted estimator, starts from a full HALS fit of its chunk
        (which then needs at least ``n_concepts`` rows); a call after :meth:`fit` continues
        from the fitted dictionary. ``n_iter_`` counts the calls and ``n_samples_seen_`` the
        rows since the running statistics started: both count from zero at the first call on an
        unfitted estimator and at the first call after :meth:`fit` (a batch fit discards the
        statistics, and its own iteration count). ``reconstruction_err_`` becomes the running
        estimate
        ``sqrt(Σ||a||² - 2 <Σ UᵀA, W> + <Σ UᵀU, W Wᵀ>)`` over all rows seen, each with the codes
        it received when it was seen.
        """
        self._validate_params()
        if self.solver != "torch_hals":
            raise ValueError(f"`partial_fit` needs solver='torch_hals' (online HALS); this NMF has "
                             f"solver={self.solver!r}.")
        first = getattr(self, "components_", None) is None
        checked = self._check_input(A, "A", fitting=first)
        if first:
            self._check_n_concepts(checked)
        X = self._to_backend(checked)
        k, c = self.n_concepts, X.shape[1]
        if first:  # a full HALS fit of the first chunk, so later chunks meet a sensible dictionary
            _, W, _ = SOLVERS["torch_hals"].fit(self, X)
            self.n_features_in_ = int(c)
        else:
            W = self._components_as(X).clone()
            k = W.shape[0]
        if getattr(self, "codes_gram_", None) is None:  # the running statistics start here
            self.codes_gram_, self.codes_cross_ = np.zeros((k, k)), np.zeros((k, c))
            self.n_samples_seen_, self._squared_norm_seen = 0, 0.0
            self.n_iter_ = 0
        l1_U, l2_U, _, _ = _torch_reg(self, X)
        Ut, _ = kernels.nnls_hals(X, W, max_iter=self.max_iter, tol=self.tol, l1=l1_U, l2=l2_U)
        gram = (Ut @ Ut.T).double().cpu().numpy()
        # BLAS need not give a bitwise-symmetric product in float32: symmetrise exactly
        self.codes_gram_ = self.codes_gram_ + (gram + gram.T) / 2
        self.codes_cross_ = self.codes_cross_ + (Ut @ X).double().cpu().numpy()
        self.n_samples_seen_ += int(X.shape[0])
        self._squared_norm_seen += float((X.double() ** 2).sum())
        alpha_H = self.alpha_W if self.alpha_H == "same" else self.alpha_H
        _, _, l1_W, l2_W = kernels.regularization(self.n_samples_seen_, c, self.alpha_W, alpha_H,
                                                  self.l1_ratio)
        gram = torch.as_tensor(self.codes_gram_).to(device=X.device, dtype=X.dtype)
        cross = torch.as_tensor(self.codes_cross_).to(device=X.device, dtype=X.dtype)
        kernels.hals_sweeps(W, gram + l2_W * torch.eye(k, dtype=X.dtype, device=X.device),
                            cross - l1_W, max_sweeps=self.max_iter, delta=self.tol)
        self.components_ = _as_numpy(W)
        W64 = self.components_.astype(np.float64)
        squared = (self._squared_norm_seen - 2.0 * float((self.codes_cross_ * W64).sum())
                   + float((self.codes_gram_ * (W64 @ W64.T)).sum()))
        self.reconstruction_err_ = float(np.sqrt(max(squared, 0.0)))
        self.n_iter_ += 1
        return self

    def _array_shape(self, name: str, ndim: int, k: int, c: int) -> tuple[int, ...]:
        return (k, k) if name == "codes_gram_" else super()._array_shape(name, ndim, k, c)

    def _check_state(self) -> None:
        super()._check_state()
        # n_samples_seen_ alone is legitimate (fit_streaming records it without the statistics)
        statistics = [getattr(self, name, None) is not None for name in _ONLINE_STATE
                      if name != "n_samples_seen_"]
        if any(statistics) and not (all(statistics)
                                    and getattr(self, "n_samples_seen_", None) is not None):
            raise ValueError(f"partial_fit's running statistics {list(_ONLINE_STATE)} must be "
                             f"saved all together or not at all.")

    def _forget_online_statistics(self) -> None:
        """Drop the running statistics of :meth:`partial_fit`; the dictionary stays (a new pass
        over the data then accumulates codes from the current dictionary only)."""
        for name in _ONLINE_STATE:
            self.__dict__.pop(name, None)

    def _transform(self, X):
        return SOLVERS[self.solver].transform(self, X, self._components_as(X))


def _as_numpy(W) -> np.ndarray:
    if isinstance(W, torch.Tensor):
        return W.detach().cpu().numpy().copy()
    return np.array(W, copy=True)
