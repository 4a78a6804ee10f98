"""SemiNMF converges by a relative tolerance (HALS codes), not by an iteration count."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from conceptkit.concepts import SemiNMF

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def signed_rows(n=600, c=40, k=6, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.exponential(1.0, (n, k)) * (rng.random((n, k)) < 0.5)
    A = codes @ rng.standard_normal((k, c)) + 0.3 * rng.standard_normal((n, c))
    return A.astype(np.float64)


def test_hals_converges_by_tolerance_to_the_long_multiplicative_run():
    A = signed_rows(n=300, c=20)
    norm = np.linalg.norm(A)
    hals = SemiNMF(6, random_state=0, dtype="float64").fit(A)
    assert hals.converged_ and hals.n_iter_ < hals.max_iter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mu_long = SemiNMF(6, solver="mu", max_iter=1000, tol=0, random_state=0,
                          dtype="float64").fit(A)
        mu_short = SemiNMF(6, solver="mu", max_iter=hals.n_iter_, tol=0, random_state=0,
                           dtype="float64").fit(A)
    # Same objective: HALS stops within 0.1 % of the error the multiplicative update reaches
    # after 1000 iterations (~10x more), which it does not reach in as many iterations as HALS.
    assert hals.reconstruction_err_ <= mu_long.reconstruction_err_ * 1.001
    assert mu_short.reconstruction_err_ > hals.reconstruction_err_
    assert np.isclose(np.linalg.norm(A - hals.transform(A) @ hals.components_) / norm,
                      hals.reconstruction_err_ / norm, rtol=1e-3)


def test_max_iter_before_tolerance_warns_and_is_recorded():
    A = signed_rows()
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        est = SemiNMF(6, solver="mu", max_iter=5, random_state=0).fit(A)
    assert not est.converged_ and est.n_iter_ == 5


def test_solver_is_checked():
    with pytest.raises(ValueError, match="solver"):
        SemiNMF(3, solver="cd").fit(signed_rows(n=20))
