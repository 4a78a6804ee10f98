"""TCAV's default test is a permutation test over the concept examples, so its false-positive
rate holds whatever the number of runs; and TCAV's smaller guards (non-finite gradients, small
random pools, p-value inputs, chance-level CAVs, the order of the concepts)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.importance import CLASSIC_TCAV, correct_p_values, tcav
from conceptkit.importance._tcav import _permutation_p_values

C = 6


def head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(C, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))


def gaussian(rng, n, shift=0.0):
    return (rng.normal(size=(n, C, 4, 4)) + shift).astype(np.float32)


def test_the_default_keeps_its_false_positive_rate_under_a_null_with_many_runs():
    """Every set from one distribution: no concept matters. The t-test over runs treated each
    concept's fixed examples as the truth, so a sampling accident became significant, more often
    the more runs (0.45 of 40 datasets at 40 runs); the permutation test stays near alpha."""
    model, flagged, classic = head(), [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(40):
            rng = np.random.default_rng(1000 + s)
            args = (model, gaussian(rng, 20), {k: gaussian(rng, 20) for k in "abc"},
                    gaussian(rng, 20 * 41), 1)
            flagged.append(tcav(*args, n_runs=40, seed=s, progress=False).significant.any())
            classic.append(tcav(*args, n_runs=40, seed=s, progress=False,
                                test="ttest_ind"))
    assert np.mean(flagged) <= 0.1       # alpha 0.05, family-wise over the 3 concepts
    # the t-test over the runs, on the same data: its p-values pass alpha far too often ...
    assert np.mean([(r.p_values_corrected < r.alpha).any() for r in classic]) >= 0.3
    # ... and the concepts it passes are at chance or do not raise the class, so they are not
    # called significant (TCAVResult.significant is gated, the p-values are kept)
    assert np.mean([r.significant.any() for r in classic]) <= 0.1


def _explicit_statistic(rows, randoms, gradient):
    """The permutation statistic from its definition, by hand: the mean class gradient along
    the unit mean-difference CAV of each random run, averaged over the runs."""
    values = []
    for random in randoms:
        cav = rows.mean(0) - random.mean(0)
        values.append(gradient @ cav / np.linalg.norm(cav))
    return np.mean(values)


@pytest.mark.parametrize("dim", [2, 4])           # sums of rows (D <= n), Gram blocks (D > n)
@pytest.mark.parametrize("sizes", [(3, 3), (3, 2)])  # one mixture size, or one per set size
def test_permutation_p_values_match_the_exact_permutation_distribution(dim, sizes):
    rng = np.random.default_rng(3)
    shift = np.eye(dim)[0]
    sets = [rng.normal(size=(sizes[0], dim)) + shift, rng.normal(size=(sizes[1], dim))]
    randoms = [rng.normal(size=(5, dim)) for _ in range(4)]
    gradients = rng.normal(size=(7, dim)) + 2 * shift
    pool, g = np.concatenate(sets), gradients.mean(0)
    n = len(pool)

    def exact(s, compare):  # every subset of the pooled rows of s's size, equally likely
        null = np.array([_explicit_statistic(pool[list(rows)], randoms, g)
                         for rows in itertools.combinations(range(n), len(s))])
        return np.mean(compare(null, _explicit_statistic(s, randoms, g)))

    above = [exact(s, lambda null, x: null >= x - 1e-12) for s in sets]
    below = [exact(s, lambda null, x: null <= x + 1e-12) for s in sets]
    got = _permutation_p_values(sets, randoms, gradients, 20000, "greater",
                                np.random.default_rng(0))
    np.testing.assert_allclose(got, above, atol=0.012)
    two_sided = _permutation_p_values(sets, randoms, gradients, 20000, "two-sided",
                                      np.random.default_rng(0))
    np.testing.assert_allclose(two_sided, np.minimum(1, 2 * np.minimum(above, below)), atol=0.02)


def test_a_large_common_offset_leaves_the_p_values_alone():
    """Two names for the same examples get the same p-value, whatever the activations' offset
    (distances are taken from rows centred on the pool's mean)."""
    rng = np.random.default_rng(0)
    same, other = rng.normal(size=(20, 64)), rng.normal(size=(20, 64))
    randoms = [rng.normal(size=(20, 64)) for _ in range(5)]
    gradients = rng.normal(size=(10, 64))
    base = _permutation_p_values([same, same, other], randoms, gradients, 999, "greater",
                                 np.random.default_rng(1))
    for offset in (100.0, 1000.0):
        moved = _permutation_p_values([same + offset, same + offset, other + offset],
                                      [r + offset for r in randoms], gradients, 999, "greater",
                                      np.random.default_rng(1))
        assert moved[0] == moved[1]
        np.testing.assert_allclose(moved, base, atol=0.01)


def test_the_test_resolves_and_refuses_what_it_cannot_do():
    rng = np.random.default_rng(0)
    args = (head(), gaussian(rng, 10), {"a": gaussian(rng, 10, 1), "b": gaussian(rng, 10)},
            gaussian(rng, 110), 1)
    default = tcav(*args, seed=0, progress=False)
    assert (default.test, default.n_permutations) == ("permutation", 999)
    assert "permutation (999 mixtures)" in default.summary()
    assert tcav(*args, seed=0, progress=False, **CLASSIC_TCAV).test == "ttest_ind"
    with pytest.raises(ValueError, match="test='permutation'.*baseline='concepts'"):
        tcav(*args, seed=0, progress=False, test="permutation", **CLASSIC_TCAV)
    with pytest.raises(ValueError, match="`n_permutations`.*test='ttest_ind'"):
        tcav(*args, seed=0, progress=False, test="ttest_ind", n_permutations=99)
    few = tcav(*args, seed=0, progress=False, n_permutations=99)
    assert few.p_values.min() >= 1 / 100 and few.to_dict()["n_permutations"] == 99


def test_a_concepts_cavs_do_not_depend_on_the_others_or_their_order():
    rng = np.random.default_rng(1)
    cls, a, b, c = (gaussian(rng, 15, s) for s in (0, 1, -1, 0.5))
    pool = gaussian(rng, 15 * 11)
    one = tcav(head(), cls, {"a": a, "b": b}, pool, 1, seed=0, progress=False)
    two = tcav(head(), cls, {"b": b, "c": c, "a": a}, pool, 1, seed=0, progress=False)
    np.testing.assert_array_equal(one.magnitudes[0], two.magnitudes[2])
    np.testing.assert_array_equal(one.cav_accuracies[1], two.cav_accuracies[0])


def test_a_non_finite_logit_or_gradient_is_refused():
    class Root(nn.Module):
        def forward(self, a):
            return torch.sqrt(a.mean((2, 3))[:, :3] - 10)  # NaN everywhere

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="NaN or infinite on `class_activations` rows 0-9"):
        tcav(Root(), gaussian(rng, 10), {"a": gaussian(rng, 10), "b": gaussian(rng, 10)},
             gaussian(rng, 110), 1, seed=0, progress=False)


def test_small_random_pools_say_what_they_cost():
    rng = np.random.default_rng(0)
    args = (head(), gaussian(rng, 10), {"a": gaussian(rng, 15, 1), "b": gaussian(rng, 15)})
    with pytest.warns(UserWarning, match=r"holds 6 rows, so each random set has 3 \(half"):
        tcav(*args, gaussian(rng, 6), 1, seed=0, progress=False, test_size=0.5)
    with pytest.warns(UserWarning, match="too few for 10 disjoint random sets of 15"):
        result = tcav(*args, gaussian(rng, 40), 1, seed=1, progress=False, **CLASSIC_TCAV)
    assert result.n_runs == 10


def test_a_concept_at_chance_gets_a_note():
    rng = np.random.default_rng(0)
    pool = gaussian(rng, 300)
    with pytest.warns(UserWarning, match="concept 'same': its CAVs barely tell its examples"):
        result = tcav(head(), gaussian(rng, 10), {"same": pool[:20], "far": gaussian(rng, 20, 2)},
                      pool[20:], 1, seed=0, progress=False)
    assert any("'same'" in note for note in result.notes)
    assert not any("'far'" in note for note in result.notes)


@pytest.mark.parametrize("bad, error, message", [
    (0.01, ValueError, r"1-D array.*shape \(\)"),
    ([[0.01, 0.02], [0.03, 0.04]], ValueError, r"shape \(2, 2\)"),
    ([-0.5, 2.0], ValueError, "from -0.5 to 2"),
    (["a"], TypeError, "`p_values`"),
])
def test_correct_p_values_checks_its_input(bad, error, message):
    with pytest.raises(error, match=message):
        correct_p_values(bad)


def test_warnings_that_concern_the_t_test_only_are_not_given_with_the_permutation_test():
    rng = np.random.default_rng(2)
    args = (head(), gaussian(rng, 10), {"a": gaussian(rng, 15, 1), "b": gaussian(rng, 15, -1)},
            gaussian(rng, 40), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # overlapping random sets, fewer than 10 runs: fine here
        tcav(*args, n_runs=5, seed=0, progress=False)
    with pytest.warns(UserWarning, match="fewer than 10"):
        tcav(*args, n_runs=5, seed=0, progress=False, test="ttest_ind")


def test_too_few_permutations_to_reach_alpha_are_said():
    rng = np.random.default_rng(0)
    concepts = {str(k): gaussian(rng, 10, k / 3) for k in range(10)}
    with pytest.warns(UserWarning, match=r"smallest corrected p-value the test can give is 0\.1"):
        result = tcav(head(), gaussian(rng, 10), concepts, gaussian(rng, 110), 1, seed=0,
                      progress=False, n_permutations=99)
    assert not result.significant.any()
