"""Semi-NMF: signed activations, non-negative codes, signed dictionary (ViT/CLIP tokens)."""

from __future__ import annotations

import warnings

import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from .._validation import check_choice, check_float, check_int, check_seed
from . import _nmf_torch as kernels
from ._base import Factorizer
from ._progress import iteration

_SOLVERS = ("hals", "mu")
_CHECK_EVERY = 5  # iterations between two exact error evaluations (one n x C x k product each)


def _kmeans_codes(X: torch.Tensor, k: int, seed: int | None) -> torch.Tensor:
    """Ding et al.'s initialisation: cluster indicators plus 0.2, shape ``(k, n)``."""
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(X.cpu().numpy())
    Ut = torch.full((k, X.shape[0]), 0.2, dtype=X.dtype, device=X.device)
    Ut[torch.as_tensor(labels, device=X.device), torch.arange(X.shape[0], device=X.device)] += 1.0
    return Ut


def _least_squares_dictionary(X: torch.Tensor, Ut: torch.Tensor, ridge: float) -> torch.Tensor:
    """``W = (U^T U + ridge I)^{-1} U^T A``, shape ``(k, C)``."""
    k = Ut.shape[0]
    gram = Ut @ Ut.T
    scale = float(gram.diagonal().mean()) or 1.0
    gram = gram + ridge * scale * torch.eye(k, dtype=X.dtype, device=X.device)
    return torch.linalg.solve(gram, Ut @ X)


def _positive(M: torch.Tensor) -> torch.Tensor:
    return (M.abs() + M) / 2


def _negative(M: torch.Tensor) -> torch.Tensor:
    return (M.abs() - M) / 2


class SemiNMF(Factorizer):
    """Semi-NMF (Ding, Li & Jordan, 2010): ``A (n, C) ≈ U (n, k) · W (k, C)`` with ``U >= 0``.

    The activations and the concept dictionary may be signed, which suits ViT/CLIP tokens; the
    codes stay non-negative so that concepts can still be masked and scored like NMF concepts.

    ``fit`` alternates an update of the codes with the exact least-squares dictionary
    ``W = (UᵀU)⁻¹ UᵀA``, starting from a k-means clustering (cluster indicators + 0.2). The
    codes are updated by one sweep of exact coordinate descent (HALS, ``solver="hals"``, the
    default) or by Ding et al.'s multiplicative update
    ``U ← U ⊙ sqrt(([A Wᵀ]⁺ + U [W Wᵀ]⁻) / ([A Wᵀ]⁻ + U [W Wᵀ]⁺))`` (``solver="mu"``, which
    approaches the same minimiser far more slowly). Every 5 iterations it stops when
    ``||A - U W||`` decreased by less than ``tol`` times its current value; reaching
    ``max_iter`` first raises a ``ConvergenceWarning`` and leaves ``converged_`` False.
    ``transform`` solves the same non-negative least-squares problem for ``U`` with ``W`` fixed,
    by deterministic HALS sweeps.

    Parameters
    ----------
    n_concepts : int
        Number of concepts ``k`` (at most ``min(n, C)``).
    max_iter : int
        Iteration cap for ``fit`` and for the NNLS solve of ``transform``.
    solver : {"hals", "mu"}
        Update of the codes in ``fit`` (see above).
    tol : float
        Relative tolerance (see above).
    random_state : int or None
        Seed of the k-means initialisation.
    device : str, torch.device or None
        Compute device; ``None`` computes where the input tensor lives (CPU for numpy).
    dtype : {"float32", "float64"}
        Compute and output dtype.

    Attributes
    ----------
    components_ : ndarray of shape (k, C)
        Signed concept dictionary (numpy, on the CPU).
    reconstruction_err_ : float
        Frobenius norm ``||A - U W||`` on the training data.
    n_iter_, n_features_in_ : int
    converged_ : bool
        Whether ``fit`` stopped by the tolerance (not by ``max_iter``).
    """

    _rescalable = True  # codes unchanged when A and W are scaled together
    _reports_iterations = True  # a progress bar counts fit's iterations (_progress.iteration)
    nonnegative_codes = True
    signed_components = True
    _ridge = 1e-8  # relative ridge on UᵀU: keeps the solve defined when a concept dies
    _state_info = Factorizer._state_info + ("converged_",)

    def __init__(self, n_concepts: int = 10, max_iter: int = 500, tol: float = 1e-4,
                 solver: str = "hals", random_state: int | None = None, device: str | torch.device | None = None,
                 dtype: str = "float32") -> None:
        self.n_concepts = n_concepts
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    @property
    def _backend(self) -> str:
        return "torch"

    def _validate_params(self) -> None:
        super()._validate_params()
        check_int(self.max_iter, "max_iter", minimum=1)
        check_float(self.tol, "tol", minimum=0.0)
        check_choice(self.solver, "solver", _SOLVERS)
        check_seed(self.random_state, "random_state")  # numpy's bound too, before KMeans sees it
        self._compute_dtype()

    def _fit(self, X: torch.Tensor) -> torch.Tensor:
        Ut = _kmeans_codes(X, self.n_concepts, self.random_state)
        W = _least_squares_dictionary(X, Ut, self._ridge)
        previous = kernels.residual_norm(X, Ut, W)
        update = self._hals_codes if self.solver == "hals" else self._mu_codes
        n_iter, converged = 0, previous == 0
        with kernels.flushed_denormals(X.device):
            while n_iter < self.max_iter and not converged:
                n_iter += 1
                update(X, Ut, W)
                W = _least_squares_dictionary(X, Ut, self._ridge)
                iteration(n_iter)
                if n_iter % _CHECK_EVERY == 0 or n_iter == self.max_iter:
                    error = kernels.residual_norm(X, Ut, W)
                    converged = error == 0 or (previous - error) < self.tol * previous
                    previous = error
        if not converged and self.tol > 0:
            warnings.warn(f"SemiNMF reached max_iter={self.max_iter} before the error settled to "
                          f"tol={self.tol} (relative change per {_CHECK_EVERY} iterations); "
                          f"increase `max_iter`.", ConvergenceWarning, stacklevel=3)
        self.components_ = W.detach().cpu().numpy().copy()
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.reconstruction_err_ = self._frobenius_error(X, Ut.T)
        return Ut.T

    @staticmethod
    def _hals_codes(X: torch.Tensor, Ut: torch.Tensor, W: torch.Tensor) -> None:
        """Exact coordinate descent on the codes (one HALS sweep; W fixed), in place."""
        kernels.hals_sweeps(Ut, W @ W.T, W @ X.T, max_sweeps=1)

    @staticmethod
    def _mu_codes(X: torch.Tensor, Ut: torch.Tensor, W: torch.Tensor) -> None:
        """Ding et al.'s multiplicative update of the codes, in place."""
        tiny = torch.finfo(X.dtype).tiny
        cross = W @ X.T  # (k, n)
        gram = W @ W.T
        numerator = _positive(cross) + _negative(gram) @ Ut
        denominator = _negative(cross) + _positive(gram) @ Ut
        Ut.mul_(torch.sqrt(numerator / denominator.clamp(min=tiny)))

    def _transform(self, X: torch.Tensor) -> torch.Tensor:
        Ut, _ = kernels.nnls_hals(X, self._components_as(X), max_iter=self.max_iter, tol=self.tol)
        return Ut.T
