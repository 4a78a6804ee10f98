"""The one contract every concept factorizer follows.

A factorizer writes a matrix of activations ``A (n, C)`` as codes times a dictionary,
``A ≈ U · W`` with ``U (n, k)`` and ``W = components_ (k, C)``, in the scikit-learn estimator
style: the constructor stores parameters only, ``fit`` does the work, fitted state ends in ``_``
and ``get_params`` / ``set_params`` / ``sklearn.base.clone`` work.

Container rule: numpy in gives numpy out; a torch tensor in gives a torch tensor out, on the
input's device. The float dtype of the output is the dtype the factorizer computes in: the
``dtype`` parameter for torch solvers, the input's float dtype (float32 or float64) for the
scikit-learn based ones. Fitted arrays (``components_``, ``mean_`` ...) are always stored as
numpy arrays on the CPU so that they can be saved, compared and inspected anywhere.
"""

from __future__ import annotations

import abc
import copy
import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from .._deprecation import current_names
from .._validation import (
    all_finite,
    check_choice,
    check_int,
    check_matrix,
    describe,
    resolve_device,
    to_numpy,
)
from ..io import json_ready

#: Every concrete factorizer class, keyed by its class name (filled in by ``__init_subclass__``).
#: A class of conceptkit's own keeps its name: a later class of the same name defined elsewhere
#: (a user's ``class NMF(conceptkit.concepts.NMF)``) is registered under its qualified name only
#: (see :func:`factorizer_key`), so that files naming ``"NMF"`` still load conceptkit's NMF.
FACTORIZERS: dict[str, type[Factorizer]] = {}
# Every registered class by its qualified name, "module.qualname": what a file records for a
# class whose bare name finds another class (a user's class named like one of conceptkit's).
_QUALIFIED: dict[str, type[Factorizer]] = {}

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: The largest iteration count (``max_iter``, ``epochs`` ...) a factorizer read from a file may
#: hold: far above any default (at most 1,000) and above the 10**7 a user may legitimately save
#: (tests/contracts/test_hostile_files.py keeps that setting), low enough that a loaded object
#: cannot run for ever however its file was edited (``max_iter=10**15, tol=0`` did).
MAX_SAVED_ITERATIONS = 10**7
# Parameters that bound a factorizer's loops, checked against MAX_SAVED_ITERATIONS on loading.
_ITERATION_PARAMS = ("max_iter", "epochs", "n_init", "transform_max_iter", "n_iter_no_change")
# Parameters that are switches: True or False (0 or 1 read the same).
_FLAG_PARAMS = ("relu", "progress", "distributed", "positive_code", "normalize")

#: Activations beyond this magnitude are no layer's: float16 tops out at 65,504, and the squares
#: of float32 values beyond about 1.8e19 overflow. A factorizer that cannot rescale its input
#: exactly (all but NMF and SemiNMF) and whose solver fails, or gives NaN or Inf, on such values
#: says so in one error naming the magnitude, not with a numpy or scikit-learn error from deep
#: inside (PCA's eigensolver, dictionary learning's step sizes). Below it, and where the solver
#: copes (PCA's SVD of a few rows of 1e25), nothing changes.
HUGE_ACTIVATION = 1e15


class Factorizer(BaseEstimator, abc.ABC):
    """Abstract base: ``A (n, C) ≈ U (n, k) · components_ (k, C)``.

    Subclasses implement ``_fit(X) -> U``, ``_transform(X) -> U`` and may override
    ``_inverse_transform(U) -> A_hat``. ``X`` reaches them already validated and converted to the
    subclass's backend: a numpy float array (``_backend == "numpy"``) or a torch tensor on the
    compute device in the compute dtype (``_backend == "torch"``).

    Class attributes
    ----------------
    requires_nonnegative : bool
        ``fit``/``transform`` refuse inputs with negative entries.
    nonnegative_codes : bool
        The codes ``U`` are always >= 0.
    signed_components : bool
        The dictionary rows may have negative entries.
    overcomplete : bool
        ``n_concepts`` may exceed the number of features (sparse dictionaries, SAEs).
    selects_codes : bool
        Encoding keeps a few concepts of each row and sets the others exactly to 0 (the top-k
        autoencoder, hard k-means). An image's code is then the mean of its positions' codes,
        not the code of its mean activation (gradient and pixel maps differentiate that mean).
    """

    requires_nonnegative: ClassVar[bool] = False
    nonnegative_codes: ClassVar[bool] = False
    signed_components: ClassVar[bool] = True
    overcomplete: ClassVar[bool] = False
    selects_codes: ClassVar[bool] = False

    # Fitted attributes saved by get_state: arrays go to the tensor body, the rest to JSON.
    _state_arrays: ClassVar[tuple[str, ...]] = ("components_",)
    _state_info: ClassVar[tuple[str, ...]] = ("reconstruction_err_", "n_iter_", "n_features_in_")
    _optional_arrays: ClassVar[tuple[str, ...]] = ()
    # Fitted scalars (in ``_state_info``) that must be finite and >= 0 (> 0 for the second)
    _positive_info: ClassVar[tuple[str, ...]] = ()
    _strictly_positive_info: ClassVar[tuple[str, ...]] = ()
    # Saved state (arrays or scalars) of the dictionary as a whole, dropped when concepts are
    # left out (restrict_bank)
    _whole_dictionary_state: ClassVar[tuple[str, ...]] = ()
    # Fitted arrays with one row per concept (sliced when concepts are dropped, e.g. by ACE).
    _concept_arrays: ClassVar[tuple[str, ...]] = ("components_",)
    _negative_hint: ClassVar[str] = ""
    # ``A ≈ U W`` solved by an iterative solver whose codes do not change when ``A`` and the
    # dictionary are scaled together: inputs too large for the compute dtype (their squares
    # would overflow to Inf and the factors to NaN) are rescaled before solving.
    _rescalable: ClassVar[bool] = False
    # Constructor arguments renamed since a file could be saved (old -> new): read silently.
    _renamed_params: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # ABCMeta fills __abstractmethods__ only after this hook runs, so look for ourselves.
        abstract = any(getattr(getattr(cls, name, None), "__isabstractmethod__", False)
                       for name in ("_fit", "_transform"))
        if abstract or cls.__name__.startswith("_"):
            return
        _QUALIFIED[_qualified_name(cls)] = cls
        held = FACTORIZERS.get(cls.__name__)
        # a class of conceptkit's own is never replaced by one of the same name from elsewhere
        if held is None or not _is_library(held) or _is_library(cls):
            FACTORIZERS[cls.__name__] = cls

    # ------------------------------------------------------------------ hooks for subclasses
    @property
    def _backend(self) -> str:
        return "numpy"

    def _validate_params(self) -> None:
        check_int(self.n_concepts, "n_concepts", minimum=1)
        for name in _FLAG_PARAMS:  # a switch given "yes" would read as True (or feed a solver)
            if name in self._param_names() and not _is_flag(getattr(self, name, False)):
                raise TypeError(f"`{name}` must be True or False; got "
                                f"{describe(getattr(self, name))}.")

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        """The constructor's parameters (none known for a constructor taking ``*args``)."""
        try:
            return tuple(cls._get_param_names())
        except RuntimeError:
            return ()

    @abc.abstractmethod
    def _fit(self, X):
        """Fit on validated ``X``; set ``components_`` etc.; return the codes ``U (n, k)``."""

    @abc.abstractmethod
    def _transform(self, X):
        """Codes ``U (n, k)`` of validated ``X`` with the fitted dictionary (deterministic)."""

    def _inverse_transform(self, U):
        W = self._components_as(U)
        return U @ W

    def _prepare_input(self, X):
        """Last input transformation before fitting/encoding (e.g. an explicit ReLU)."""
        return X

    # ------------------------------------------------------------------ public API
    def fit(self, A: np.ndarray | torch.Tensor, y: Any = None) -> Factorizer:
        """Learn the dictionary from activations ``A`` of shape ``(n, C)``; return ``self``."""
        self.fit_transform(A)
        return self

    def fit_transform(self, A: np.ndarray | torch.Tensor, y: Any = None) -> np.ndarray | torch.Tensor:
        """Learn the dictionary from ``A (n, C)`` and return the codes ``U (n, k)``."""
        self._validate_params()
        X = self._check_input(A, "A", fitting=True)
        if not bool((X != 0).any()):
            # every factorizer would return a dictionary of zeros (or NaN) without a word
            raise ValueError(
                f"`A` ({tuple(X.shape)}) is zero everywhere (after any clipping of negative "
                f"values the factorizer does): there is nothing to factorize. A layer whose every "
                f"activation is 0 on these inputs (dead units after a ReLU, or images that "
                f"are all blank) is the usual cause; choose another layer or check the images.")
        self._check_n_concepts(X)
        scale = self._overflow_scale(X)
        if scale == 1.0:
            U = self._solved_or_refused(lambda: self._fit(self._to_backend(X)), X, "A")
        else:  # fit A / s (exact: s is a power of two), then give the dictionary the scale back
            U = self._fit(self._to_backend(X / scale))
            components = np.asarray(self.components_) * scale
            if not np.isfinite(components).all():
                raise ValueError(f"`A` has values up to {scale:.3g}: the dictionary fitted to "
                                 f"them overflows {components.dtype}; pass dtype='float64' or "
                                 f"divide `A` by its maximum first.")
            self.components_ = components
            if isinstance(getattr(self, "reconstruction_err_", None), float):
                self.reconstruction_err_ *= scale
        self.n_features_in_ = int(X.shape[1])
        return self._to_output(U, A)

    def transform(self, A: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Codes ``U (n, k)`` of ``A (n, C)`` with the fitted dictionary kept fixed.

        Deterministic: the same input always gives the same codes (no random restarts).
        """
        self._check_fitted()
        X = self._check_input(A, "A", fitting=False)
        scale = self._overflow_scale(X, np.asarray(self.components_))
        if scale == 1.0:
            U = self._solved_or_refused(lambda: self._transform(self._to_backend(X)), X, "A")
            return self._to_output(U, A)
        # the codes of A with W are those of A / s with W / s: solve the rescaled problem
        scaled = copy.copy(self)
        scaled.components_ = np.asarray(self.components_) / scale
        return self._to_output(scaled._transform(self._to_backend(X / scale)), A)

    def _solved_or_refused(self, solve: Any, X: Any, name: str) -> Any:
        """``solve()``, for input ``X`` whose values may be beyond :data:`HUGE_ACTIVATION`: a
        failure of the solver (or NaN/Inf in what it gives) on such values is reported as what
        it is, too large an input, naming ``name``. Factorizers that rescale their input exactly
        (``_rescalable``) and ordinary values are solved as they are."""
        if self._rescalable or X.shape[0] == 0:
            return solve()
        if isinstance(X, torch.Tensor):
            low, high = (float(v) for v in torch.aminmax(X.detach()))
        else:
            low, high = float(np.min(X)), float(np.max(X))
        peak = max(abs(low), abs(high))
        if not peak > HUGE_ACTIVATION:
            return solve()

        def refused(what: str) -> ValueError:
            return ValueError(f"`{name}` has values up to {peak:.3g}, far beyond any layer's "
                              f"activations (this check starts at {HUGE_ACTIVATION:g}), and "
                              f"{type(self).__name__} {what}: divide `{name}` by its largest "
                              f"value first (NMF and SemiNMF rescale such input themselves).")

        # the solver's overflow warnings are said again only when it copes: else the error says
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            try:
                U = solve()
            except (ArithmeticError, ValueError) as err:  # numpy's LinAlgError is a ValueError
                first = (str(err).splitlines() or [""])[0][:120]
                raise refused(f"failed on them ({type(err).__name__}: {first})") from err
            fitted = getattr(self, "components_", None)
            if not all_finite(U) or (fitted is not None
                                     and not np.isfinite(np.asarray(fitted)).all()):
                raise refused("gave NaN or Inf values on them")
        for warning in said:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno, source=warning.source)
        return U

    def _overflow_scale(self, X, W: np.ndarray | None = None) -> float:
        """1, or the power of two that brings ``X`` (and ``W``) to at most 1 when their squares,
        summed over the matrix, could overflow the compute dtype (or the values not fit in it). Only for solvers that allow it
        (see ``_rescalable``); a regularised solve is refused, its penalty is not scale-free."""
        if not self._rescalable or X.shape[0] == 0:
            return 1.0
        compute = self._to_backend(X[:1]).dtype  # the solver's dtype (float32 by default)
        largest = float(torch.finfo(compute).max if isinstance(compute, torch.dtype)
                        else np.finfo(compute).max)
        peak = float(X.abs().max()) if isinstance(X, torch.Tensor) else float(np.abs(X).max())
        if W is not None and W.size:
            peak = max(peak, float(np.abs(W).max()))
        limit = math.sqrt(largest / (16.0 * X.shape[0] * X.shape[1]))
        if not peak > limit:
            return 1.0
        if peak > largest / 16.0:
            raise ValueError(f"`A` has values up to {peak:.3g}, beyond what the {compute} solver "
                             f"can hold (its largest number is {largest:.3g}); pass "
                             f"dtype='float64' or divide `A` by its maximum first.")
        penalties = {name: getattr(self, name) for name in ("alpha_W", "alpha_H", "alpha")
                     if isinstance(getattr(self, name, None), (int, float))
                     and getattr(self, name) > 0}
        if penalties:
            raise ValueError(f"`A` has values up to {peak:.3g}, too large for the {compute} solver "
                             f"(their squares overflow), and the penalties {penalties} do not "
                             f"allow rescaling it exactly: divide `A` by its maximum first.")
        return 2.0 ** math.ceil(math.log2(peak))

    def inverse_transform(self, U: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Reconstructed activations ``A_hat (n, C)`` from codes ``U (n, k)``."""
        self._check_fitted()
        k = self.components_.shape[0]
        _check_real(U, "U")
        checked = check_matrix(U, "U", columns=k)
        return self._to_output(self._inverse_transform(self._to_backend(checked)), U)

    # ------------------------------------------------------------------ persistence
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Fitted arrays (numpy) and JSON-able fitted scalars, for saving without pickle."""
        self._check_fitted()
        arrays = {name: np.asarray(getattr(self, name)) for name in self._state_arrays
                  if getattr(self, name, None) is not None}
        info = {name: json_ready(getattr(self, name), strict=True, finite=False)
                for name in self._state_info if hasattr(self, name)}
        return arrays, info

    @classmethod
    def from_state(cls, params: dict, arrays: dict, info: dict, *,
                   from_file: bool = True) -> Factorizer:
        """Rebuild a fitted factorizer from ``get_params()`` and ``get_state()`` output.

        ``params`` read from a file (``from_file``, the default) are checked before anything
        runs: the class's own parameter checks, flags that must be booleans, a device that
        must name one, and iteration counts of at most :data:`MAX_SAVED_ITERATIONS` (a file's
        ``max_iter=10**15, tol=0`` would make the loaded factorizer encode forever). A bad one
        raises a ``ValueError`` or ``TypeError`` naming it, which the loaders report as a
        :class:`~conceptkit.io.FormatError` naming the file.
        """
        if not isinstance(params, dict):
            raise TypeError(f"`params` of a saved {cls.__name__} must be a dict; got "
                            f"{type(params).__name__}.")
        est = cls(**current_names(params, cls._renamed_params))
        if from_file:
            est._check_saved_params()
        required = [name for name in cls._state_arrays
                    if name not in arrays and name not in cls._optional_arrays]
        if required:
            raise ValueError(f"`arrays` lacks {required} needed to rebuild a fitted "
                             f"{cls.__name__}; got keys {sorted(arrays)}.")
        for name in cls._state_arrays:
            if name in arrays:
                setattr(est, name, to_numpy(arrays[name]).copy())
        for name, value in info.items():
            if name in cls._state_info:
                setattr(est, name, value)
        if "n_features_in_" not in info:
            est.n_features_in_ = int(est.components_.shape[1])
        est._check_state()
        return est

    def _check_saved_params(self) -> None:
        """Refuse parameters read from a file that the constructor stored without a look."""
        params = self.get_params(deep=False)
        for name in _FLAG_PARAMS:  # before the class's own checks, which refuse them too
            if name in params and not _is_flag(params[name]):
                raise TypeError(f"`{name}` of a saved {type(self).__name__} must be True or "
                                f"False; got {describe(params[name])}.")
        self._validate_params()
        if "device" in params and params["device"] is not None:
            device = params["device"]
            if not isinstance(device, (str, torch.device)):
                raise TypeError(f"`device` of a saved {type(self).__name__} must be None or a "
                                f"device name such as 'cpu' or 'cuda:0'; got {describe(device)}.")
            try:
                parsed = torch.device(device)
            except (RuntimeError, TypeError, ValueError) as err:
                raise ValueError(f"`device` of a saved {type(self).__name__} must name a torch "
                                 f"device such as 'cpu' or 'cuda:0'; got {device!r}.") from err
            if parsed.type == "meta":
                raise ValueError(f"`device` of a saved {type(self).__name__} is 'meta', which "
                                 f"holds no values.")
        for name in _ITERATION_PARAMS:
            value = params.get(name)
            if value is not None and check_int(value, name, minimum=1) > MAX_SAVED_ITERATIONS:
                raise ValueError(f"`{name}`={value} of a saved {type(self).__name__} is more "
                                 f"than the {MAX_SAVED_ITERATIONS:,} a file may ask for: the "
                                 f"loaded factorizer could run for ever.")

    def _check_state(self) -> None:
        """Refuse a rebuilt state whose parameters or arrays do not fit together."""
        self._validate_params()
        W = np.asarray(self.components_)
        if W.ndim != 2 or 0 in W.shape:
            raise ValueError(f"`components_` must be a non-empty (k, C) matrix; got shape {W.shape}.")
        k, c = W.shape
        if self.n_concepts != k:
            raise ValueError(f"`n_concepts`={self.n_concepts} but `components_` has {k} rows.")
        if not isinstance(self.n_features_in_, int) or self.n_features_in_ != c:
            raise ValueError(f"`n_features_in_`={self.n_features_in_!r} but `components_` has {c} "
                             f"columns.")
        for name in self._state_arrays:
            array = getattr(self, name, None)
            if array is None:
                continue
            array = np.asarray(array)
            expected = self._array_shape(name, array.ndim, k, c)
            if array.shape != expected or array.dtype.kind not in "biuf":
                raise ValueError(f"`{name}` must be a numeric array of shape {expected}; got shape "
                                 f"{array.shape} and dtype {array.dtype}.")
            if not np.isfinite(array).all():
                raise ValueError(f"`{name}` contains NaN or Inf values.")
        if not self.signed_components and (W < 0).any():
            raise ValueError(f"`components_` of a {type(self).__name__} must be non-negative; "
                             f"its smallest value is {W.min():.3g}.")
        for name in self._positive_info:
            value = getattr(self, name, None)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0 and (value > 0 or name not in
                                                             self._strictly_positive_info)):
                sign = "> 0" if name in self._strictly_positive_info else ">= 0"
                raise ValueError(f"`{name}` must be a finite number {sign}; got {value!r}.")

    def _array_shape(self, name: str, ndim: int, k: int, c: int) -> tuple[int, ...]:
        """The shape a saved array ``name`` must have for ``k`` concepts of ``c`` features."""
        if ndim == 2:
            return (k, c)
        return (k,) if name in self._concept_arrays else (c,)

    # ------------------------------------------------------------------ helpers
    def _check_n_concepts(self, X) -> None:
        k = self.n_concepts
        n, c = X.shape
        if k > n:
            raise ValueError(f"`n_concepts`={k} is larger than the number of rows of `A` ({n}); "
                             f"use at most {n} concepts or pass more activations.")
        if k > c and not self.overcomplete:
            raise ValueError(f"`n_concepts`={k} is larger than the number of features of `A` ({c}); "
                             f"{type(self).__name__} needs n_concepts <= {c}.")

    def _check_fitted(self) -> None:
        if getattr(self, "components_", None) is None:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet: call `fit(A)` "
                                 f"(or `fit_transform`) before `transform`/`inverse_transform`.")

    def _check_input(self, A, name: str, *, fitting: bool):
        _check_real(A, name)
        columns = None if fitting else int(self.n_features_in_)
        X = check_matrix(A, name, columns=columns)
        X = self._prepare_input(X)
        if self.requires_nonnegative:
            X = check_matrix(X, name, nonnegative=True, hint_negative=self._negative_hint)
        return X

    def _compute_device(self, X=None) -> torch.device:
        device = getattr(self, "device", None)
        if device is not None:
            return resolve_device(device)
        if isinstance(X, torch.Tensor):
            return X.device
        return torch.device("cpu")

    def _compute_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[check_choice(getattr(self, "dtype", "float32"), "dtype",
                                          list(_TORCH_DTYPES))]

    def _to_backend(self, X):
        if self._backend == "torch":
            if isinstance(X, np.ndarray):
                X = torch.from_numpy(np.ascontiguousarray(X))
            return X.detach().to(device=self._compute_device(X), dtype=self._compute_dtype())
        X = to_numpy(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        return X

    @staticmethod
    def _to_output(result, template):
        if isinstance(template, torch.Tensor):
            if isinstance(result, torch.Tensor):
                return result.to(template.device)
            return torch.from_numpy(np.ascontiguousarray(result)).to(template.device)
        return to_numpy(result)

    def _components_as(self, like):
        """``components_`` in the container, device and dtype of ``like``."""
        W = self.components_
        if isinstance(like, torch.Tensor):
            return torch.as_tensor(W).to(device=like.device, dtype=like.dtype)
        return np.asarray(W, dtype=like.dtype)

    def _frobenius_error(self, X, U) -> float:
        """``||X - U W||_F`` computed in row blocks (no full residual matrix in memory).

        The squares are summed in float64 after dividing each block by its largest entry, so
        the norm neither underflows to 0 (a residual of 1e-30 squared is below float32's
        range and would read as a perfect fit) nor overflows to Inf, whatever the scale."""
        scale, scaled_sum = 0.0, 0.0  # ||residual||² = scale² * scaled_sum
        for start in range(0, X.shape[0], 4096):
            block = X[start:start + 4096] - self._inverse_transform(U[start:start + 4096])
            if isinstance(block, torch.Tensor):  # stays on its device
                block = block.detach().to(torch.float64).abs()
            else:
                block = np.abs(np.asarray(block, dtype=np.float64))
            peak = float(block.max()) if block.shape[0] else 0.0
            if not math.isfinite(peak):
                return float("nan") if math.isnan(peak) else float("inf")
            if peak == 0.0:
                continue
            part = float(((block / peak) ** 2).sum())
            if peak > scale:
                scaled_sum = scaled_sum * (scale / peak) ** 2 + part
                scale = peak
            else:
                scaled_sum += part * (peak / scale) ** 2
        return float(scale * math.sqrt(scaled_sum))


def _check_real(A: Any, name: str) -> None:
    """Refuse complex, string and object arrays (a cast to float would drop or garble them)."""
    if isinstance(A, torch.Tensor):
        bad = A.is_complex()
    elif isinstance(A, np.ndarray):
        bad = A.dtype.kind not in "biuf"
    else:
        return
    if bad:
        raise TypeError(f"`{name}` must hold real numbers (float or integer activations); got dtype "
                        f"{A.dtype}.")


def _is_flag(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) or (
        isinstance(value, int) and value in (0, 1))


def _is_library(cls: type) -> bool:
    """Whether ``cls`` is one of conceptkit's own classes (defined in a conceptkit module)."""
    module = getattr(cls, "__module__", "") or ""
    return module == "conceptkit" or module.startswith("conceptkit.")


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def factorizer_key(cls: type) -> str:
    """The name a saved file records for factorizer class ``cls``, the one
    :func:`factorizer_from_state` finds it by.

    Its bare class name where :data:`FACTORIZERS` holds ``cls`` (or a redefinition of it, the
    same module and qualified name: a notebook cell run again) under it, as files have always
    recorded; else ``"module.qualname"`` (a user's class named like one of conceptkit's, e.g.
    ``class NMF(conceptkit.concepts.NMF)``, which must not load back as conceptkit's). A class
    that is not registered (abstract, or private: its name starts with ``"_"``) has no name a
    file could rebuild it from: ``ValueError``.
    """
    qualified = _qualified_name(cls)
    held = FACTORIZERS.get(cls.__name__)
    if held is not None and _qualified_name(held) == qualified:
        return cls.__name__
    if qualified in _QUALIFIED:
        return qualified
    why = ("its name starts with '_', which marks a private class"
           if cls.__name__.startswith("_") else "it is abstract or not a Factorizer subclass")
    raise ValueError(f"the factorizer's class {qualified!r} is not registered with conceptkit "
                     f"({why}), so a saved file could not rebuild it: give it a public name "
                     f"(e.g. {cls.__name__.lstrip('_') or 'MyFactorizer'!r}), define it at the "
                     f"top level of a module you import before loading, and save again.")


def factorizer_from_state(name: str, params: dict, arrays: dict, info: dict, *,
                          from_file: bool = True) -> Factorizer:
    """Rebuild a fitted factorizer of class ``name``: a key of :data:`FACTORIZERS`, or the
    ``"module.qualname"`` that :func:`factorizer_key` records for a registered class whose bare
    name finds another class.

    ``from_file=False`` is for parameters taken from a live factorizer of this process (see
    :meth:`Factorizer.from_state`), which skips the checks made on parameters read from a file.
    """
    if isinstance(name, str) and name in FACTORIZERS:
        cls = FACTORIZERS[name]
    elif isinstance(name, str) and name in _QUALIFIED:
        cls = _QUALIFIED[name]
    else:
        hint = ""
        if isinstance(name, str):
            hint = (f" The file was saved with a factorizer of class {name!r}, which is not "
                    f"defined in this process: define or import that Factorizer subclass "
                    f"(under the same name) before loading.")
        raise ValueError(f"`name` must be one of {sorted(FACTORIZERS)}; got {name!r}.{hint}")
    return cls.from_state(params, arrays, info, from_file=from_file)
