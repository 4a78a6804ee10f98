"""Factorizers that delegate to scikit-learn: k-means (ACE), PCA, FastICA, dictionary learning."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, DictionaryLearning, FastICA, sparse_encode
from sklearn.metrics.pairwise import euclidean_distances

from .._validation import check_choice, check_float, check_int, check_seed
from ._base import Factorizer


def _check_seed(random_state) -> None:
    check_seed(random_state, "random_state")


def _flip_signs(rows: np.ndarray) -> np.ndarray:
    """+1/-1 per row so that each row's largest-magnitude entry becomes positive."""
    picks = rows[np.arange(rows.shape[0]), np.abs(rows).argmax(axis=1)]
    return np.where(picks < 0, -1.0, 1.0).astype(rows.dtype)


class KMeansConcepts(Factorizer):
    """ACE-style concepts: k-means clusters of activations, centroids as the dictionary.

    Parameters
    ----------
    n_concepts : int
        Number of clusters ``k`` (at most the number of rows; may exceed ``C``).
    codes : {"hard", "soft"}
        ``"hard"``: one-hot assignment to the nearest centroid, so ``inverse_transform`` returns
        that centroid. ``"soft"``: ``softmax(-||a - c_j||² / temperature)`` over the centroids
        (rows sum to 1; ``inverse_transform`` returns the weighted mean of centroids).
    temperature : float or None
        Temperature of the soft codes. ``None`` uses the mean squared distance of the training
        rows to their nearest centroid (stored as ``temperature_``), which makes the soft codes
        independent of the activations' scale. Refused with ``codes="hard"``, which does not
        read it.
    n_init, max_iter : int
        Passed to :class:`sklearn.cluster.KMeans` (``n_init=10`` as in the ACE reference).
    random_state : int or None
        Seed of the k-means++ initialisation.

    Attributes
    ----------
    components_ : ndarray of shape (k, C)
        Cluster centroids.
    temperature_ : float
    reconstruction_err_ : float
        ``||A - U W||`` on the training data with the chosen codes.
    n_iter_, n_features_in_ : int
    """

    nonnegative_codes = True
    signed_components = True
    overcomplete = True
    _state_info: ClassVar[tuple[str, ...]] = Factorizer._state_info + ("temperature_",)
    _positive_info: ClassVar[tuple[str, ...]] = ("temperature_",)
    _strictly_positive_info: ClassVar[tuple[str, ...]] = ("temperature_",)

    @classmethod
    def from_state(cls, params: dict, arrays: dict, info: dict, **kwargs) -> KMeansConcepts:
        # Files saved before `temperature` was refused with hard codes may hold one: it never
        # changed their codes, so it is dropped (the fitted `temperature_` is kept).
        if (isinstance(params, dict) and params.get("codes", "hard") == "hard"
                and params.get("temperature") is not None):
            params = {**params, "temperature": None}
        return super().from_state(params, arrays, info, **kwargs)

    def _differentiable_transform(self, X: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Codes equal to ``codes`` (these k-means codes of ``X``) that gradients flow through:
        soft codes are the softmax itself; a hard code (piecewise constant) carries the gradient
        of its centroid's least-squares coefficient ``c_j · x / ‖c_j‖²``."""
        centroids = torch.as_tensor(self.components_).to(X)
        if self.codes == "soft":
            sq = ((X * X).sum(1, keepdim=True) - 2 * X @ centroids.T
                  + (centroids * centroids).sum(1)[None])
            return torch.softmax(-sq / self.temperature_, dim=1)
        coef = (X @ centroids.T) / (centroids * centroids).sum(1).clamp_min(1e-12)
        return codes + (codes > 0).to(X) * (coef - coef.detach())

    @property
    def selects_codes(self) -> bool:  # type: ignore[override]
        """Hard codes keep one concept per row (see :class:`Factorizer`): ACE's gradient and
        pixel maps read an image's code as the mean of its positions' codes."""
        return self.codes == "hard"

    def __init__(self, n_concepts: int = 25, codes: str = "hard", temperature: float | None = None,
                 n_init: int = 10, max_iter: int = 300, random_state: int | None = None) -> None:
        self.n_concepts = n_concepts
        self.codes = codes
        self.temperature = temperature
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def _validate_params(self) -> None:
        super()._validate_params()
        check_choice(self.codes, "codes", ["hard", "soft"])
        if self.temperature is not None:
            check_float(self.temperature, "temperature", minimum=0.0, strict_minimum=True)
            if self.codes == "hard":
                raise ValueError("`temperature` sets the softmax of codes='soft'; codes='hard' "
                                 "gives each row its nearest centroid's one-hot code, so it "
                                 "would be ignored. Leave `temperature` out, or pass "
                                 "codes='soft'.")
        check_int(self.n_init, "n_init", minimum=1)
        check_int(self.max_iter, "max_iter", minimum=1)
        _check_seed(self.random_state)

    def _fit(self, X: np.ndarray) -> np.ndarray:
        distinct = np.unique(X, axis=0).shape[0]
        if distinct < self.n_concepts:  # k-means would repeat centroids: concepts with no rows
            raise ValueError(f"`n_concepts` {self.n_concepts} is more than the {distinct} "
                             f"distinct activation rows k-means can cluster ({X.shape[0]} rows): "
                             f"some concepts would be copies of others with no row of their "
                             f"own. Pass n_concepts <= {distinct}, or more images.")
        model = KMeans(n_clusters=self.n_concepts, n_init=self.n_init, max_iter=self.max_iter,
                       random_state=self.random_state).fit(X)
        self.components_ = model.cluster_centers_.astype(X.dtype)
        self.n_iter_ = int(model.n_iter_)
        mean_sq = float(model.inertia_) / X.shape[0]
        self.temperature_ = float(self.temperature) if self.temperature is not None else (
            mean_sq if mean_sq > 0 else 1.0)
        U = self._transform(X)
        self.reconstruction_err_ = self._frobenius_error(X, U)
        return U

    def _transform(self, X: np.ndarray) -> np.ndarray:
        check_choice(self.codes, "codes", ["hard", "soft"])
        sq = euclidean_distances(X, self._components_as(X), squared=True)
        if not np.isfinite(sq).all():  # overflowed: the nearest centroid would be the first
            raise ValueError("the squared distances to the centroids overflow "
                             f"{sq.dtype}.")
        if self.codes == "hard":
            U = np.zeros_like(sq)
            U[np.arange(sq.shape[0]), sq.argmin(axis=1)] = 1.0
            return U
        logits = -sq / self.temperature_
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)


class _CenteredFactorizer(Factorizer):
    """Shared by PCA/ICA: components are directions around the training mean ``mean_``."""

    _state_arrays: ClassVar[tuple[str, ...]] = ("components_", "mean_")

    def _inverse_transform(self, U):
        return U @ self._components_as(U) + np.asarray(self.mean_, dtype=U.dtype)


class PCAConcepts(_CenteredFactorizer):
    """Principal directions as concepts (:class:`sklearn.decomposition.PCA`).

    ``components_`` are orthonormal directions around ``mean_``; ``transform(A) = (A - mean_)
    components_ᵀ`` (signed codes) and ``inverse_transform(U) = U components_ + mean_``, so
    ``inverse_transform(transform(A))`` is the best rank-``k`` reconstruction of ``A``.

    Parameters
    ----------
    n_concepts : int
        Number of directions ``k`` (at most ``min(n, C)``).
    random_state : int or None
        Seed used when scikit-learn picks its randomized SVD for large inputs.
    """

    _state_arrays: ClassVar[tuple[str, ...]] = ("components_", "mean_",
                                                "explained_variance_ratio_")
    _optional_arrays: ClassVar[tuple[str, ...]] = ("explained_variance_ratio_",)
    _concept_arrays: ClassVar[tuple[str, ...]] = ("components_", "explained_variance_ratio_")

    def __init__(self, n_concepts: int = 10, random_state: int | None = None) -> None:
        self.n_concepts = n_concepts
        self.random_state = random_state

    def _validate_params(self) -> None:
        super()._validate_params()
        _check_seed(self.random_state)

    def _fit(self, X: np.ndarray) -> np.ndarray:
        if len(X) < 2 or not bool(np.any(X != X[:1])):
            raise ValueError(f"`A` has no variance ({len(X)} row(s), all equal): PCA has no "
                             f"direction to find, and the share of variance each concept "
                             f"explains would be 0/0. Pass activations that vary (more images, "
                             f"another layer).")
        model = PCA(n_components=self.n_concepts, random_state=self.random_state).fit(X)
        self.components_ = model.components_.astype(X.dtype)
        self.mean_ = model.mean_.astype(X.dtype)
        self.explained_variance_ratio_ = model.explained_variance_ratio_
        self.n_iter_ = 1
        U = self._transform(X)
        self.reconstruction_err_ = self._frobenius_error(X, U)
        return U

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return (X - np.asarray(self.mean_, dtype=X.dtype)) @ self._components_as(X).T


class ICAConcepts(_CenteredFactorizer):
    """Independent components as concepts (:class:`sklearn.decomposition.FastICA`).

    ``components_`` are the mixing directions (``FastICA.mixing_ᵀ``, shape ``(k, C)``) around
    ``mean_``; ``transform(A) = (A - mean_) unmixing_ᵀ`` gives the (signed, unit-variance)
    sources, and ``inverse_transform(U) = U components_ + mean_``. The mixing matrix is the
    pseudo-inverse of the unmixing one, so ``inverse_transform(transform(A))`` is the projection on
    the top-``k`` principal subspace: the best rank-``k`` reconstruction. ICA fixes neither sign
    nor order; each component is flipped so that its largest-magnitude entry is positive.
    """

    _state_arrays: ClassVar[tuple[str, ...]] = ("components_", "mean_", "unmixing_")
    _concept_arrays: ClassVar[tuple[str, ...]] = ("components_", "unmixing_")

    def __init__(self, n_concepts: int = 10, max_iter: int = 200, tol: float = 1e-4,
                 fun: str = "logcosh", random_state: int | None = None) -> None:
        self.n_concepts = n_concepts
        self.max_iter = max_iter
        self.tol = tol
        self.fun = fun
        self.random_state = random_state

    def _validate_params(self) -> None:
        super()._validate_params()
        check_int(self.max_iter, "max_iter", minimum=1)
        check_float(self.tol, "tol", minimum=0.0, strict_minimum=True)
        check_choice(self.fun, "fun", ["logcosh", "exp", "cube"])
        _check_seed(self.random_state)

    def _fit(self, X: np.ndarray) -> np.ndarray:
        if len(X) < 2:
            raise ValueError(f"ICAConcepts needs at least 2 rows of `A` (it centres them); got "
                             f"{len(X)}.")
        model = FastICA(n_components=self.n_concepts, fun=self.fun, max_iter=self.max_iter,
                        tol=self.tol, whiten="unit-variance", random_state=self.random_state)
        with np.errstate(divide="ignore", invalid="ignore"):
            try:
                model.fit(X)
                failed = not np.isfinite(model.mixing_).all()
            except ValueError as err:
                if "NaN" not in str(err):
                    raise
                failed = True
        if failed:  # whitening divided by a zero variance
            raise ValueError(f"`A` varies in fewer than `n_concepts`={self.n_concepts} "
                             f"independent directions (a constant layer, or rows that repeat), "
                             f"so ICA cannot whiten it: use fewer concepts, more varied "
                             f"activations, or PCAConcepts.")
        mixing = model.mixing_.T
        signs = _flip_signs(mixing)
        self.components_ = (mixing * signs[:, None]).astype(X.dtype)
        self.unmixing_ = (model.components_ * signs[:, None]).astype(X.dtype)
        self.mean_ = model.mean_.astype(X.dtype)
        self.n_iter_ = int(model.n_iter_)
        U = self._transform(X)
        self.reconstruction_err_ = self._frobenius_error(X, U)
        return U

    def _transform(self, X: np.ndarray) -> np.ndarray:
        unmixing = np.asarray(self.unmixing_, dtype=X.dtype)
        return (X - np.asarray(self.mean_, dtype=X.dtype)) @ unmixing.T


_CODERS = ("lasso_lars", "lasso_cd", "lars", "omp", "threshold")
# the encoders that keep a number of non-zero codes per row (n_nonzero_coefs), not a penalty
_COUNTING_CODERS = ("lars", "omp")


class SparseDictionary(Factorizer):
    """Sparse dictionary learning (:class:`sklearn.decomposition.DictionaryLearning`).

    Minimises ``0.5 ||A - U W||² + alpha |U|_1`` with unit-norm atoms (rows of ``components_``);
    the dictionary may be overcomplete (``k > C``). ``transform`` is
    :func:`sklearn.decomposition.sparse_encode` with ``transform_algorithm`` and its sparsity
    setting: ``transform_alpha`` (``None`` → ``alpha``) for ``"lasso_lars"``, ``"lasso_cd"``
    and ``"threshold"``, ``transform_n_nonzero_coefs`` for ``"lars"`` and ``"omp"`` (as in
    :class:`sklearn.decomposition.DictionaryLearning`); deterministic for every algorithm
    offered. The codes are signed unless ``positive_code=True`` (then non-negative).

    Parameters
    ----------
    n_concepts : int
        Number of atoms ``k``.
    alpha : float
        Sparsity penalty while fitting.
    positive_code : bool
        Constrain codes to be non-negative (needs ``fit_algorithm="cd"`` and a
        ``transform_algorithm`` other than ``"lars"``/``"omp"``).
    max_iter, tol : int, float
        Passed to DictionaryLearning.
    fit_algorithm : {"lars", "cd"}
    transform_algorithm : {"lasso_lars", "lasso_cd", "lars", "omp", "threshold"}
    transform_alpha : float or None
        Penalty (``"lasso_lars"``, ``"lasso_cd"``) or threshold (``"threshold"``) of the encoder;
        ``None`` uses ``alpha``. Refused with ``"lars"``/``"omp"``, which do not read it.
    random_state : int or None
    transform_n_nonzero_coefs : int or None
        Number of non-zero codes per row targeted by ``"lars"`` and ``"omp"`` (at most
        ``n_concepts``; ``None``: scikit-learn's ``max(C // 10, 1)``, at most ``n_concepts``).
        Refused with the other algorithms, which do not read it.
    """

    overcomplete = True

    def __init__(self, n_concepts: int = 10, alpha: float = 1.0, positive_code: bool = False,
                 max_iter: int = 1000, tol: float = 1e-8, fit_algorithm: str = "lars",
                 transform_algorithm: str = "lasso_lars", transform_alpha: float | None = None,
                 random_state: int | None = None,
                 transform_n_nonzero_coefs: int | None = None) -> None:
        self.n_concepts = n_concepts
        self.alpha = alpha
        self.positive_code = positive_code
        self.max_iter = max_iter
        self.tol = tol
        self.fit_algorithm = fit_algorithm
        self.transform_algorithm = transform_algorithm
        self.transform_alpha = transform_alpha
        self.random_state = random_state
        self.transform_n_nonzero_coefs = transform_n_nonzero_coefs

    def _validate_params(self) -> None:
        super()._validate_params()
        check_float(self.alpha, "alpha", minimum=0.0, strict_minimum=True)
        check_int(self.max_iter, "max_iter", minimum=1)
        check_float(self.tol, "tol", minimum=0.0)
        check_choice(self.fit_algorithm, "fit_algorithm", ["lars", "cd"])
        check_choice(self.transform_algorithm, "transform_algorithm", list(_CODERS))
        if self.transform_alpha is not None:
            check_float(self.transform_alpha, "transform_alpha", minimum=0.0, strict_minimum=True)
            if self.transform_algorithm in _COUNTING_CODERS:
                raise ValueError(f"`transform_alpha` is not used by `transform_algorithm`="
                                 f"{self.transform_algorithm!r}, which keeps a number of non-zero "
                                 f"codes per row: pass `transform_n_nonzero_coefs` instead (or "
                                 f"use 'lasso_lars', 'lasso_cd' or 'threshold').")
        if self.transform_n_nonzero_coefs is not None:
            check_int(self.transform_n_nonzero_coefs, "transform_n_nonzero_coefs", minimum=1,
                      maximum=self.n_concepts)
            if self.transform_algorithm not in _COUNTING_CODERS:
                raise ValueError(f"`transform_n_nonzero_coefs` is only used by "
                                 f"`transform_algorithm`='lars' or 'omp'; "
                                 f"{self.transform_algorithm!r} is sparse through "
                                 f"`transform_alpha` (or `alpha`).")
        if self.positive_code and self.transform_algorithm in ("lars", "omp"):
            raise ValueError(f"`positive_code`=True is not available with `transform_algorithm`="
                             f"{self.transform_algorithm!r}; use 'lasso_lars', 'lasso_cd' or "
                             f"'threshold'.")
        if self.positive_code and self.fit_algorithm == "lars":
            raise ValueError("`positive_code`=True needs `fit_algorithm`='cd' (least-angle "
                             "regression cannot constrain the sign of the codes).")
        _check_seed(self.random_state)

    def _fit(self, X: np.ndarray) -> np.ndarray:
        model = DictionaryLearning(
            n_components=self.n_concepts, alpha=self.alpha, max_iter=self.max_iter, tol=self.tol,
            fit_algorithm=self.fit_algorithm, transform_algorithm=self.transform_algorithm,
            transform_alpha=self.transform_alpha,
            transform_n_nonzero_coefs=self.transform_n_nonzero_coefs,
            positive_code=self.positive_code, random_state=self.random_state).fit(X)
        self.components_ = model.components_.astype(X.dtype)
        self.n_iter_ = int(model.n_iter_)
        U = self._transform(X)
        self.reconstruction_err_ = self._frobenius_error(X, U)
        return U

    def _transform(self, X: np.ndarray) -> np.ndarray:
        W = self._components_as(X)
        if self.transform_algorithm in _COUNTING_CODERS:
            # scikit-learn's default count, int(C / 10) at least 1, bounded by the atoms there are
            count = self.transform_n_nonzero_coefs
            if count is None:
                count = int(min(max(X.shape[1] / 10, 1), W.shape[0]))
            if self.transform_algorithm == "omp" and count > X.shape[1]:
                raise ValueError(f"`transform_n_nonzero_coefs`={count} is more than the "
                                 f"{X.shape[1]} features: orthogonal matching pursuit selects at "
                                 f"most one atom per feature.")
            U = sparse_encode(X, W, algorithm=self.transform_algorithm, n_nonzero_coefs=count,
                              positive=self.positive_code)
        else:
            alpha = self.alpha if self.transform_alpha is None else self.transform_alpha
            U = sparse_encode(X, W, algorithm=self.transform_algorithm, alpha=alpha,
                              positive=self.positive_code)
        return U.astype(X.dtype, copy=False)

    @classmethod
    def from_state(cls, params: dict, arrays: dict, info: dict, **kwargs) -> SparseDictionary:
        # Files saved before transform_alpha was refused with "lars"/"omp" may hold one: it never
        # changed their codes (scikit-learn does not read it there), so it is dropped.
        if (isinstance(params, dict) and params.get("transform_algorithm") in _COUNTING_CODERS
                and params.get("transform_alpha") is not None):
            params = {**params, "transform_alpha": None}
        return super().from_state(params, arrays, info, **kwargs)
