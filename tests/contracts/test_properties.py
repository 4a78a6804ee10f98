"""Property tests (hypothesis) of the estimators and factorizers.

- Sobol total indices lie in ``[0, 1 + eps]``, do not change when the output is shifted or
  scaled, and sum to at least the first-order indices.
- Concept importances are permutation-equivariant in the concept order.
- NMF codes and dictionaries are non-negative, and the objective never increases from one
  iteration to the next (torch HALS and multiplicative updates, scikit-learn ``cd`` and ``mu``).
- ``inverse_transform(transform(A))`` is the best reconstruction of ``A`` for the fitted
  dictionary: it matches ``scipy.optimize.nnls`` row by row (least squares for PCA), and no
  other codes do better.

Sizes stay small (the whole file runs in well under a minute); the examples are derandomized so
CI is reproducible.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from conceptkit import concepts, importance
from conceptkit.concepts import _nmf_torch as kernels

# CONCEPTKIT_FUZZ=500 runs a longer, randomised campaign (the CI default is short and fixed).
FUZZ = int(os.environ.get("CONCEPTKIT_FUZZ", "0"))
SETTINGS = settings(max_examples=FUZZ or 25, deadline=None, derandomize=not FUZZ,
                    suppress_health_check=[HealthCheck.too_slow])
TOTAL_ESTIMATORS = sorted(importance.TOTAL_ORDER_ESTIMATORS)


# ---------------------------------------------------------------------------------------------
# Sobol indices
# ---------------------------------------------------------------------------------------------

@st.composite
def smooth_functions(draw):
    """A random smooth function of d variables on [0, 1]^d with main effects and interactions."""
    d = draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    main = rng.normal(size=d) * (rng.random(d) < 0.8)
    freq = rng.uniform(0.5, 3.0, size=d)
    pairs = rng.normal(size=(d, d)) * (rng.random((d, d)) < 0.4)
    if not main.any() and not pairs.any():
        main[0] = 1.0

    def f(x):
        x = np.asarray(x, dtype=np.float64)
        return (np.sin(np.pi * freq * x) @ main + np.einsum("ni,ij,nj->n", x, pairs, x))

    return f, d


@pytest.mark.parametrize("estimator", TOTAL_ESTIMATORS)
@SETTINGS
@given(problem=smooth_functions(), seed=st.integers(0, 2**31))
def test_total_indices_lie_in_unit_interval(estimator, problem, seed):
    f, d = problem
    total = importance.sobol_indices(f, d, 256, estimator=estimator, seed=seed)
    assert total.shape == (d,)
    assert np.all(total >= -0.05) and np.all(total <= 1.0 + 0.1), total
    if estimator == "jansen":  # a mean of squares over a variance: never negative
        assert np.all(total >= 0)


@pytest.mark.parametrize("order, estimator", [("total", e) for e in TOTAL_ESTIMATORS]
                         + [("first", "saltelli"), ("first", "jansen")])
@SETTINGS
@given(problem=smooth_functions(), seed=st.integers(0, 2**31),
       scale=st.sampled_from([-1000.0, -2.5, -1.0, 1e-3, 0.7, 1.0, 40.0]),
       shift=st.floats(-1e3, 1e3))
def test_indices_are_invariant_to_shift_and_scale(order, estimator, problem, seed, scale, shift):
    f, d = problem
    base = importance.sobol_indices(f, d, 128, order=order, estimator=estimator, seed=seed)
    moved = importance.sobol_indices(lambda x: scale * f(x) + shift, d, 128, order=order,
                                     estimator=estimator, seed=seed)
    np.testing.assert_allclose(moved, base, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(problem=smooth_functions(), seed=st.integers(0, 2**31))
def test_total_indices_sum_to_at_least_the_first_order_ones(problem, seed):
    f, d = problem
    total = importance.sobol_indices(f, d, 1024, seed=seed)
    first = importance.sobol_indices(f, d, 1024, order="first", seed=seed)
    assert total.sum() >= first.sum() - 0.05, (total, first)


# ---------------------------------------------------------------------------------------------
# Concept importance: permutation equivariance
# ---------------------------------------------------------------------------------------------

class ReluBank:
    """A minimal concept bank: ``codes = relu(A Wᵀ)`` for rows ``(n, C)``."""

    def __init__(self, components: np.ndarray):
        self.components = torch.as_tensor(components, dtype=torch.float64)

    def encode(self, activations):
        return torch.relu(torch.as_tensor(activations, dtype=torch.float64) @ self.components.T)


def _head(c: int, affine: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if affine:
        return nn.Linear(c, 3).double().eval()
    return nn.Sequential(nn.Linear(c, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()


@pytest.mark.parametrize("method", ["closed_form", "gradient_input", "integrated_gradients",
                                    "occlusion", "sobol"])
@settings(SETTINGS, max_examples=max(15, FUZZ // 2))
@given(k=st.integers(2, 5), c=st.integers(3, 6), n=st.integers(2, 5), seed=st.integers(0, 10**6),
       data=st.data())
def test_importances_are_permutation_equivariant(method, k, c, n, seed, data):
    perm = np.array(data.draw(st.permutations(range(k))))
    rng = np.random.default_rng(seed)
    components = np.abs(rng.normal(size=(k, c)))
    activations = torch.as_tensor(np.abs(rng.normal(size=(n, c))))
    h = _head(c, method == "closed_form", seed)
    options = {"n_designs": 4096} if method == "sobol" else {}

    def run(comps):
        return importance.concept_importance(h, activations, ReluBank(comps), 1, method=method,
                                             seed=0, progress=False, **options).per_input

    base, permuted = run(components), run(components[perm])
    if method == "sobol":
        # the same design columns go to other concepts: equal up to the estimator's noise
        np.testing.assert_allclose(permuted, base[:, perm], atol=0.08)
    else:
        np.testing.assert_allclose(permuted, base[:, perm], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# NMF: non-negativity and a monotone objective
# ---------------------------------------------------------------------------------------------

@st.composite
def nonnegative_data(draw, max_rank: int = 4):
    n, c = draw(st.integers(6, 30)), draw(st.integers(3, 10))
    k = draw(st.integers(1, min(max_rank, n, c)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rank = draw(st.integers(k, min(n, c)))  # at least k: a well-posed dictionary
    A = np.abs(rng.normal(size=(n, rank))) @ np.abs(rng.normal(size=(rank, c)))
    A += draw(st.sampled_from([0.0, 0.01, 0.3])) * np.abs(rng.normal(size=(n, c)))
    A[rng.random((n, c)) < draw(st.sampled_from([0.0, 0.2]))] = 0.0
    return A, k


def _objective(A: np.ndarray, U: np.ndarray, W: np.ndarray) -> float:
    return float(np.sum((A - U @ W) ** 2))


@SETTINGS
@given(problem=nonnegative_data(), init=st.sampled_from(["nndsvda", "nndsvd", "random"]),
       seed=st.integers(0, 1000))
def test_torch_hals_and_mu_objective_never_increases(problem, init, seed):
    A, k = problem
    X = torch.as_tensor(A)
    for fit in (kernels.fit_hals, kernels.fit_mu):
        Ut, W = kernels.initialize(X, k, init, np.random.default_rng(seed))
        values = [_objective(A, Ut.T.numpy(), W.numpy())]
        for _ in range(12):  # one iteration at a time from the previous state: the same path
            fit(X, Ut, W, max_iter=1, tol=0.0, reg=(0.0, 0.0, 0.0, 0.0))
            assert bool((Ut >= 0).all()) and bool((W >= 0).all())
            values.append(_objective(A, Ut.T.numpy(), W.numpy()))
        scale = values[0] + np.sum(A ** 2)
        steps = np.diff(values)
        assert np.all(steps <= 1e-10 * scale), (fit.__name__, values)


@pytest.mark.parametrize("solver", ["cd", "mu", "torch_hals", "torch_mu"])
@settings(SETTINGS, max_examples=max(12, FUZZ // 2))
@given(problem=nonnegative_data(), seed=st.integers(0, 1000))
def test_nmf_objective_is_monotone_in_max_iter(solver, problem, seed):
    A, k = problem
    errors = []
    for max_iter in range(1, 9):  # the same start, stopped after 1, 2, ... iterations
        est = concepts.NMF(k, solver=solver, max_iter=max_iter, tol=0.0, random_state=seed,
                           dtype="float64")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            U = est.fit_transform(A)
        assert np.all(U >= 0) and np.all(est.components_ >= 0)
        errors.append(est.reconstruction_err_)
    assert np.all(np.diff(errors) <= 1e-9 * (errors[0] + 1.0)), errors


# ---------------------------------------------------------------------------------------------
# transform + inverse_transform: the best reconstruction for a fixed dictionary
# ---------------------------------------------------------------------------------------------

def _fitted(kind: str, A: np.ndarray, k: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "nmf_cd":
            return concepts.NMF(k, tol=1e-12, max_iter=5000, random_state=0).fit(A)
        if kind == "nmf_hals":
            return concepts.NMF(k, solver="torch_hals", tol=1e-12, max_iter=3000, random_state=0,
                                dtype="float64").fit(A)
        if kind == "seminmf":
            return concepts.SemiNMF(k, tol=1e-12, max_iter=3000, random_state=0,
                                    dtype="float64").fit(A)
        return concepts.PCAConcepts(k, random_state=0).fit(A)


@pytest.mark.parametrize("kind", ["nmf_cd", "nmf_hals", "seminmf", "pca"])
@settings(SETTINGS, max_examples=max(15, FUZZ // 2))
@given(problem=nonnegative_data(), seed=st.integers(0, 1000))
def test_transform_gives_the_best_reconstruction(kind, problem, seed):
    A, k = problem
    est = _fitted(kind, A, k)
    W = np.asarray(est.components_, dtype=np.float64)
    U = np.asarray(est.transform(A), dtype=np.float64)
    A_hat = np.asarray(est.inverse_transform(U), dtype=np.float64)
    # squared residuals per row, compared up to 1e-5 of the row's squared norm: the iterative
    # encoders stop at a relative tolerance, and coordinate descent converges slowly when the
    # dictionary's rows are nearly collinear (hence the tight tol of the fits above)
    errors = np.sum((A - A_hat) ** 2, axis=1)
    scale = 1e-5 * np.sum(A ** 2, axis=1) + 1e-12
    if kind == "pca":
        centred = A - est.mean_
        best_codes = np.linalg.lstsq(W.T, centred.T, rcond=None)[0].T
        best = np.sum((centred - best_codes @ W) ** 2, axis=1)
    else:
        assert np.all(U >= 0)
        best = np.array([nnls(W.T, row)[1] ** 2 for row in A])
    # equal to the exact solution for every row (within the solver's tolerance)
    np.testing.assert_array_less(errors - best, scale)
    # and no other codes do better: random ones, or small perturbations of its own
    rng = np.random.default_rng(seed)
    for _ in range(5):
        other = np.abs(U + rng.normal(scale=0.05, size=U.shape) * (np.abs(U).mean() + 1e-3))
        if kind == "pca":
            other = U + rng.normal(scale=0.05, size=U.shape)
        worse = np.sum((A - np.asarray(est.inverse_transform(other), dtype=np.float64)) ** 2, axis=1)
        np.testing.assert_array_less(errors - worse, scale)
