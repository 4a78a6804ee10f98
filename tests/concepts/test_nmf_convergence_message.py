"""The NMF's iteration-limit warning is the library's: it says which step stopped, at which
setting, and how to run longer (scikit-learn's own text, "Maximum number of iterations 200
reached. Increase it to improve convergence.", named no argument a user of conceptkit passes)."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from conceptkit.concepts import NMF


def _caught(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    return out, [w for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("solver", ["cd", "mu", "torch_hals"])
def test_a_stopped_nmf_says_so_in_the_librarys_words(solver):
    X = np.random.default_rng(0).random((60, 12)).astype(np.float32)
    nmf = NMF(4, solver=solver, max_iter=2, tol=1e-12, random_state=0)
    _, fitted = _caught(lambda: nmf.fit(X))
    assert len(fitted) == 1
    text = str(fitted[0].message)
    assert f"NMF solver {solver!r} reached max_iter=2" in text and "fitting the dictionary" in text
    assert "NMF(4, max_iter=8)" in text and "Maximum number of iterations" not in text
    # the advice runs as written, and the longer fit is what it says
    longer, _ = _caught(lambda: NMF(4, solver=solver, max_iter=8, tol=1e-12,
                                    random_state=0).fit(X))
    assert longer.n_iter_ == 8 and nmf.n_iter_ == 2
    if solver != "torch_hals":  # the numpy solvers' encoding stops too
        _, encoded = _caught(lambda: nmf.transform(X))
        assert len(encoded) == 1 and "encoding with the fitted dictionary" in str(encoded[0].message)


def test_a_converged_nmf_is_silent():
    rng = np.random.default_rng(1)
    X = (rng.random((80, 3)) @ rng.random((3, 10))).astype(np.float64)
    _, caught = _caught(lambda: NMF(3, max_iter=2000, random_state=0).fit(X))
    assert caught == []
