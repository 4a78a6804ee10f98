"""compute_cav on sets it cannot tell apart warns, without changing the CAV."""

import warnings

import numpy as np
import pytest

from conceptkit.concepts._cav import compute_cav


@pytest.mark.parametrize("classifier", ["sgd", "logistic", "mean_difference"])
def test_identical_sets_give_a_chance_warning(classifier):
    a = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"held-out accuracy is 0\.\d+, at or below chance"):
        cav = compute_cav(a, a.copy(), classifier=classifier, seed=0)
    assert cav.accuracy <= 0.5
    with warnings.catch_warnings():  # the result is the same as before the warning existed
        warnings.simplefilter("ignore")
        again = compute_cav(a, a.copy(), classifier=classifier, seed=0)
    np.testing.assert_array_equal(cav.vector, again.vector)
    assert cav.accuracy == again.accuracy


def test_separable_sets_do_not_warn():
    g = np.random.default_rng(1)
    concept, random = g.normal(size=(40, 6)) + 3.0, g.normal(size=(40, 6))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*at or below chance")
        cav = compute_cav(concept, random, seed=0)
    assert cav.accuracy > 0.9
