"""TCAV: CAVs, directional derivatives, significance testing, bank and image helpers.

The planted problem: activations live in C = 8 channels on a 4x4 grid. The head's class-0 logit
rises along d1 (softplus), has a sign-varying interaction between u and w, and ignores d2.
So a concept along d1 must score ~1 and be significant, one along -d1 ~0 (and significant,
two-sided), one along d2 must look like random-vs-random. The d2 examples have their d1
component projected out: a finite sample otherwise leaks a small, fixed d1 component into every
CAV of that concept, which the steep d1 slope of the head turns into a real (not spurious) bias.
"""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.linear_model import SGDClassifier
from torch import nn

from conceptkit.concepts._cav import CAV, activation_features, balanced_split, compute_cav
from conceptkit.importance import directional_derivatives
from conceptkit.importance._tcav import (
    CLASSIC_TCAV,
    TCAVResult,
    _random_runs,
    correct_p_values,
    tcav,
)
from conceptkit.importance._tcav_sources import (
    concept_sets_from_codes,
    tcav_from_bank,
    tcav_images,
)

C, H, W = 8, 4, 4
BASIS = np.linalg.qr(np.random.default_rng(123).normal(size=(C, C)))[0].T  # orthonormal rows
D1, D2, U, V = BASIS[:4]


class PlantedHead(nn.Module):
    """Class 0 rises along d1, ignores d2; class 1 = -class 0; class 2 = mean of u."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        for name, vec in (("d1", D1), ("u", U), ("v", V)):
            self.register_buffer(name, torch.tensor(vec, dtype=dtype))
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=dtype))

    def forward(self, a):
        p = torch.einsum("nchw,c->nhw", a, self.d1)
        q = torch.einsum("nchw,c->nhw", a, self.u)
        r = torch.einsum("nchw,c->nhw", a, self.v)
        logit = nn.functional.softplus(self.scale * p).mean((1, 2)) + (q * r).mean((1, 2))
        return torch.stack([logit, -logit, q.mean((1, 2))], dim=1)


def maps(rng, n, shift=None, dtype=np.float32):
    x = rng.normal(size=(n, C, H, W))
    if shift is not None:
        x = x + np.asarray(shift)[None, :, None, None]
    return x.astype(dtype)


def without_d1(x):
    """Remove the d1 component of every activation (maps or pooled rows)."""
    if x.ndim == 2:
        return x - np.outer(x @ D1, D1)
    return x - np.einsum("nchw,c->nhw", x, D1)[:, None] * D1[None, :, None, None]


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    return {
        "class": maps(rng, 60),
        "concepts": {"d1": maps(rng, 40, 3 * D1), "minus_d1": maps(rng, 40, -3 * D1),
                     "d2": without_d1(maps(rng, 40, 3 * D2))},
        "randoms": [maps(rng, 40) for _ in range(20)],
        "pool": maps(rng, 400),
    }


@pytest.fixture(scope="module")
def planted_result(planted):
    return tcav(PlantedHead(), planted["class"], planted["concepts"], planted["randoms"], 0,
                n_runs=20, seed=0, progress=False, **CLASSIC_TCAV)


# --------------------------------------------------------------------------------------------
# CAVs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("classifier", ["sgd", "logistic", "mean_difference"])
def test_cav_points_from_random_to_concept(classifier):
    rng = np.random.default_rng(1)
    concept, random = maps(rng, 50, 2 * D1), maps(rng, 70)
    cav = compute_cav(concept, random, classifier=classifier, seed=3)
    assert isinstance(cav, CAV) and cav.space == "pooled" and cav.classifier == classifier
    assert cav.vector.shape == (C,)
    assert np.linalg.norm(cav.vector) == pytest.approx(1.0)
    assert cav.vector @ D1 > 0.9  # direction of the planted shift, oriented towards the concept
    assert cav.accuracy >= 0.95
    # The boundary separates the pooled sets: concept side positive.
    assert (cav.decision_function(concept) > 0).mean() > 0.9
    assert (cav.decision_function(random) < 0).mean() > 0.9


def test_cav_accuracy_is_chance_for_indistinguishable_sets():
    rng = np.random.default_rng(2)
    accuracies = [compute_cav(maps(rng, 60), maps(rng, 60), seed=s).accuracy for s in range(8)]
    assert 0.3 < np.mean(accuracies) < 0.7


def test_balanced_split_is_balanced_stratified_and_seeded():
    rng = np.random.default_rng(5)
    c_train, c_test, r_train, r_test = balanced_split(30, 75, test_size=0.33, rng=rng)
    assert len(c_train) == len(r_train) and len(c_test) == len(r_test)
    assert len(c_train) + len(c_test) == 30 == len(r_train) + len(r_test)
    assert len(c_test) + len(r_test) == int(np.ceil(0.33 * 60))
    assert not set(c_train) & set(c_test) and not set(r_train) & set(r_test)
    assert set(c_train) | set(c_test) == set(range(30))
    assert max(np.concatenate([r_train, r_test])) < 75
    again = balanced_split(30, 75, test_size=0.33, rng=np.random.default_rng(5))
    for first, second in zip((c_train, c_test, r_train, r_test), again):
        np.testing.assert_array_equal(first, second)
    other = balanced_split(30, 75, test_size=0.33, rng=np.random.default_rng(6))
    assert not np.array_equal(np.sort(r_train), np.sort(other[2]))


def test_mean_difference_cav_is_normalised_difference_of_training_means():
    rng = np.random.default_rng(7)
    concept, random = rng.normal(1.0, 1.0, (40, 6)), rng.normal(0.0, 2.0, (55, 6))
    cav = compute_cav(concept, random, classifier="mean_difference", seed=11)
    split = balanced_split(40, 55, test_size=0.33, rng=np.random.default_rng(11))
    c_train, c_test, r_train, r_test = split
    mean_c, mean_r = concept[c_train].mean(0), random[r_train].mean(0)
    expected = (mean_c - mean_r) / np.linalg.norm(mean_c - mean_r)
    np.testing.assert_allclose(cav.vector, expected, rtol=1e-12)
    # Boundary through the midpoint of the means; accuracy on the held-out rows.
    assert cav.vector @ (mean_c + mean_r) / 2 + cav.intercept == pytest.approx(0.0, abs=1e-12)
    hits = np.concatenate([concept[c_test] @ cav.vector + cav.intercept > 0,
                           random[r_test] @ cav.vector + cav.intercept <= 0])
    assert cav.accuracy == pytest.approx(hits.mean())


def test_sgd_cav_is_tcav_default_sgd_classifier():
    rng = np.random.default_rng(8)
    concept, random = rng.normal(0.5, 1.0, (30, 5)), rng.normal(0.0, 1.0, (30, 5))
    cav = compute_cav(concept, random, seed=4)
    split_rng = np.random.default_rng(4)
    c_train, _, r_train, _ = balanced_split(30, 30, test_size=0.33, rng=split_rng)
    state = int(split_rng.integers(2**31 - 1))
    x = np.concatenate([concept[c_train], random[r_train]])
    y = np.r_[np.ones(len(c_train)), np.zeros(len(r_train))]
    model = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=state).fit(x, y)
    coef = model.coef_[0]
    np.testing.assert_allclose(cav.vector, coef / np.linalg.norm(coef), rtol=1e-10)
    assert cav.intercept == pytest.approx(model.intercept_[0] / np.linalg.norm(coef))


def test_cav_is_deterministic_and_flat_space_uses_positions():
    rng = np.random.default_rng(9)
    concept, random = maps(rng, 30, D1), maps(rng, 30)
    first, second = compute_cav(concept, random, seed=1), compute_cav(concept, random, seed=1)
    np.testing.assert_array_equal(first.vector, second.vector)
    assert not np.array_equal(first.vector, compute_cav(concept, random, seed=2).vector)
    flat = compute_cav(torch.from_numpy(concept), torch.from_numpy(random), space="flat",
                       classifier="mean_difference", seed=1)
    assert flat.vector.shape == (C * H * W,) and flat.space == "flat"
    # The shift is d1 at every position: the flat CAV is d1 repeated over the grid.
    per_channel = flat.vector.reshape(C, H * W).mean(1)
    assert per_channel @ D1 / np.linalg.norm(per_channel) > 0.9


# --------------------------------------------------------------------------------------------
# Directional derivatives
# --------------------------------------------------------------------------------------------

def test_pooled_directional_derivative_of_linear_head_is_closed_form():
    rng = np.random.default_rng(10)
    weights = torch.tensor(rng.normal(size=(3, C)))

    def head(a):  # sum over positions of a linear map: gradient = weights[k] everywhere
        return torch.einsum("nchw,kc->nk", a, weights)

    activations = maps(rng, 7, dtype=np.float64)
    cav = compute_cav(maps(rng, 20, D1), maps(rng, 20), seed=0)
    got = directional_derivatives(head, activations, cav, class_id=2)
    expected = H * W * float(weights[2].numpy() @ cav.vector)
    np.testing.assert_allclose(got, np.full(7, expected), rtol=1e-10)


def test_flat_directional_derivative_of_linear_head_is_closed_form():
    rng = np.random.default_rng(11)
    matrix = torch.tensor(rng.normal(size=(2, C * H * W)))
    activations = maps(rng, 5, dtype=np.float64)
    cav = compute_cav(maps(rng, 20, D1), maps(rng, 20), space="flat", seed=0)
    got = directional_derivatives(lambda a: a.flatten(1) @ matrix.T, activations, cav, 1)
    np.testing.assert_allclose(got, np.full(5, matrix[1].numpy() @ cav.vector), rtol=1e-10)


def test_cls_space_reads_the_first_token_and_moves_it_alone():
    """``space="cls"``: the CAV is fitted on the first (CLS) token of tokens ``(n, T, C)``, and
    the directional derivative moves that token alone. Head: logit k = CLS token . a_k +
    (mean of the other tokens) . b_k, so the derivative along v is a_k . v (closed form), and
    a concept shown only in the other tokens gives a CAV of pure noise."""
    rng = np.random.default_rng(12)
    a, b = torch.tensor(rng.normal(size=(2, C))), torch.tensor(rng.normal(size=(2, C)))

    def head(tokens):
        return tokens[:, 0] @ a.T + tokens[:, 1:].mean(1) @ b.T

    def tokens(n, cls_shift=0.0, patch_shift=0.0):
        x = rng.normal(size=(n, 5, C))
        x[:, 0] += cls_shift
        x[:, 1:] += patch_shift
        return x

    cav = compute_cav(tokens(30, cls_shift=5 * D1), tokens(30), space="cls",
                      classifier="mean_difference", seed=0)
    assert cav.space == "cls" and cav.vector.shape == (C,) and cav.vector @ D1 > 0.9
    assert cav.accuracy >= 0.95
    got = directional_derivatives(head, tokens(6), cav, class_id=1)
    np.testing.assert_allclose(got, np.full(6, float(a[1].numpy() @ cav.vector)), rtol=1e-10)
    # what only the patch tokens show is not in the CLS token's space
    elsewhere = compute_cav(tokens(30, patch_shift=5 * D1), tokens(30), space="cls",
                            classifier="mean_difference", seed=0)
    assert elsewhere.accuracy <= 0.7  # the CLS tokens of the two sets cannot be told apart
    # vectors pass through; maps are refused with the reason
    np.testing.assert_array_equal(activation_features(np.ones((3, C)), "x", "cls"), np.ones((3, C)))
    with pytest.raises(ValueError, match="cls space needs transformer tokens"):
        activation_features(maps(rng, 3), "x", "cls")
    with pytest.raises(ValueError, match="in cls space"):
        directional_derivatives(head, maps(rng, 3), cav, class_id=0)


def test_directional_derivative_matches_finite_difference_and_restores_model():
    rng = np.random.default_rng(12)
    head = PlantedHead(dtype=torch.float64).train()
    activations = torch.tensor(maps(rng, 9, dtype=np.float64))
    cav = compute_cav(maps(rng, 30, D1 + D2), maps(rng, 30), seed=0)
    got = directional_derivatives(head, activations, cav, class_id=0, batch_size=4)
    eps = 1e-5
    step = eps * torch.tensor(cav.vector)[None, :, None, None]  # v at every position
    with torch.no_grad():
        numeric = (head.eval()(activations + step)[:, 0]
                   - head(activations - step)[:, 0]) / (2 * eps)
    head.train()
    np.testing.assert_allclose(got, numeric.numpy(), rtol=1e-6, atol=1e-9)
    assert np.ptp(got) > 0.01  # derivatives really vary across inputs
    directional_derivatives(head, activations, cav, class_id=0)
    assert head.training and head.scale.requires_grad and head.scale.grad is None


# --------------------------------------------------------------------------------------------
# TCAV and significance
# --------------------------------------------------------------------------------------------

def test_planted_concepts_get_known_scores_and_significance(planted_result):
    result = planted_result
    assert isinstance(result, TCAVResult)
    assert result.concept_names == ("d1", "minus_d1", "d2")
    assert result.scores.shape == (3, 20) and result.random_scores.shape == (20,)
    mean = dict(zip(result.concept_names, result.mean_scores))
    significant = dict(zip(result.concept_names, result.significant))
    assert mean["d1"] >= 0.95 and significant["d1"]
    assert mean["minus_d1"] <= 0.05 and significant["minus_d1"]  # logit gradient, count > 0
    assert not significant["d2"] and result.p_values_corrected[2] > 0.05
    assert result.mean_magnitudes[0] > 0 > result.mean_magnitudes[1]
    # Random-vs-random: centred on 0.5 and widely spread; random CAVs near chance accuracy.
    assert 0.3 < result.random_scores.mean() < 0.7 and result.random_scores.std() > 0.15
    assert result.random_cav_accuracies.mean() < 0.7
    assert result.cav_accuracies.min() >= 0.9


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy on all-1.0 scores
def test_p_values_are_scipy_ttest_with_bonferroni(planted_result):
    result = planted_result
    for j in range(3):
        expected = stats.ttest_ind(result.scores[j], result.random_scores).pvalue
        assert result.p_values[j] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(result.p_values_corrected, np.minimum(3 * result.p_values, 1))
    np.testing.assert_array_equal(result.significant, result.p_values_corrected < 0.05)


@pytest.mark.parametrize("test, reference", [
    ("welch", lambda a, b: stats.ttest_ind(a, b, equal_var=False).pvalue),
    ("ttest_rel", lambda a, b: stats.ttest_rel(a, b).pvalue),
])
def test_other_tests_match_scipy(planted, test, reference):
    result = tcav(PlantedHead(), planted["class"], {"d2": planted["concepts"]["d2"]},
                  planted["randoms"], 0, n_runs=10, test=test, correction="none", seed=1,
                  progress=False, **CLASSIC_TCAV)
    assert result.p_values[0] == pytest.approx(reference(result.scores[0], result.random_scores))
    np.testing.assert_array_equal(result.p_values, result.p_values_corrected)


def test_corrections_by_hand():
    p = np.array([0.01, 0.04, 0.03])
    np.testing.assert_allclose(correct_p_values(p, "bonferroni"), [0.03, 0.12, 0.09])
    np.testing.assert_allclose(correct_p_values(p, "holm"), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(correct_p_values([0.5, 0.9], "bonferroni"), [1.0, 1.0])
    np.testing.assert_array_equal(correct_p_values(p, "none"), p)


def test_tcav_is_deterministic_with_seed_and_pool(planted):
    def run(seed):
        return tcav(PlantedHead(), planted["class"], planted["concepts"], planted["pool"], 0,
                    n_runs=10, seed=seed, progress=False)

    first, second, other = run(3), run(3), run(4)
    for name in ("scores", "magnitudes", "cav_accuracies", "random_scores", "p_values"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.random_scores, other.random_scores)
    assert first.significant[0] and first.mean_scores[0] >= 0.95


def test_random_sets_from_pool_are_disjoint_then_overlapping():
    pool = np.arange(100, dtype=float)[:, None] * np.ones((1, 3))
    sets = _random_runs(pool, 5, 20, "pooled", 3, np.random.default_rng(0))
    rows = np.concatenate([s[:, 0] for s in sets])
    assert len(sets) == 5 and all(len(s) == 20 for s in sets)
    assert len(np.unique(rows)) == 100  # disjoint cover of the pool
    small = _random_runs(pool[:30], 4, 20, "pooled", 3, np.random.default_rng(0))
    assert all(len(s) == 15 and len(np.unique(s[:, 0])) == 15 for s in small)  # half the pool
    assert len(np.unique(np.concatenate([s[:, 0] for s in small]))) <= 30


def test_constant_scores_give_exact_p_values(planted):
    # A linear head has the same gradient for every input: every score is exactly 0 or 1.
    def head(a):
        return torch.einsum("nchw,c->n", a, torch.tensor(D1, dtype=a.dtype))[:, None]

    concepts = {"d1": planted["concepts"]["d1"], "minus_d1": planted["concepts"]["minus_d1"]}
    result = tcav(head, planted["class"], concepts, planted["randoms"], 0, n_runs=10, seed=0,
                  progress=False, **CLASSIC_TCAV)
    np.testing.assert_array_equal(result.scores[0], 1.0)
    np.testing.assert_array_equal(result.scores[1], 0.0)
    assert set(np.unique(result.random_scores)) <= {0.0, 1.0}
    # constant concept scores against varying baseline scores: an ordinary t-test; against
    # constant baseline scores: not testable (NaN, never significant), not p = 0
    for j in range(2):
        if np.ptp(result.random_scores) == 0:
            assert np.isnan(result.p_values[j]) and not result.significant[j]
        else:
            assert result.p_values[j] == pytest.approx(
                stats.ttest_ind(result.scores[j], result.random_scores).pvalue, rel=1e-12)


def test_result_to_dict_and_summary(planted_result):
    data = json.loads(json.dumps(planted_result.to_dict()))
    assert data["n_runs"] == 20 and data["correction"] == "bonferroni"
    assert data["concepts"]["d1"]["significant"] is True
    assert data["concepts"]["d2"]["scores"] == planted_result.scores[2].tolist()
    assert data["random"]["mean_score"] == pytest.approx(planted_result.random_scores.mean())
    text = planted_result.summary()
    lines = text.splitlines()
    assert "class 0" in lines[0] and "20 random runs" in lines[0]
    assert lines[2].startswith("d1") and lines[2].rstrip().endswith("yes")
    baseline_row = 2 + len(planted_result.concept_names)
    assert lines[baseline_row].startswith("(random vs random)")
    assert lines[baseline_row + 1:] == [f"note: {n}" for n in planted_result.notes]


# --------------------------------------------------------------------------------------------
# Discovered concepts (codes) and image sets
# --------------------------------------------------------------------------------------------

def test_tcav_from_bank_equals_tcav_on_assigned_rows(planted):
    rng = np.random.default_rng(20)
    pooled = {"d1": rng.normal(size=(30, C)) + 3 * D1, "d2": without_d1(rng.normal(size=(25, C))) + 3 * D2,
              "tiny": rng.normal(size=(2, C))}
    rows = np.concatenate(list(pooled.values()))
    labels = np.repeat([0, 1, 2], [30, 25, 2])
    order = rng.permutation(len(rows))
    rows, labels = rows[order], labels[order]
    codes = np.eye(3)[labels] * rng.uniform(0.5, 1.0, (len(rows), 1))  # one-hot, scaled
    bank = types.SimpleNamespace(codes=codes, components=np.eye(3, C))
    with pytest.warns(UserWarning, match="tiny|concept_2"):
        result = tcav_from_bank(PlantedHead(), planted["class"], bank, rows, planted["randoms"],
                                0, n_runs=10, seed=5, progress=False)
    assert result.concept_names == ("concept_0", "concept_1")
    expected = tcav(PlantedHead(), planted["class"],
                    {"concept_0": rows[labels == 0], "concept_1": rows[labels == 1]},
                    planted["randoms"], 0, n_runs=10, seed=5, progress=False)
    np.testing.assert_array_equal(result.scores, expected.scores)
    assert result.significant[0] and not result.significant[1]

    kept = concept_sets_from_codes(codes, rows, concept_names=["a", "b", "c"], min_examples=2,
                                   max_examples=10)
    assert set(kept) == {"a", "b", "c"} and len(kept["a"]) == 10 and len(kept["c"]) == 2
    top = np.sort(codes[labels == 0, 0])[-10:]
    chosen = np.isin(rows, kept["a"]).all(1)
    np.testing.assert_allclose(np.sort(codes[chosen, 0]), top)


class TinyCNN(nn.Module):
    """features: 1x1 conv copying RGB into channels (+ a blurred red channel), ReLU;
    head: pool + linear with class 0 = red - blue and class 1 = blue - red."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(4, 2))
        with torch.no_grad():
            conv = torch.zeros(4, 3, 3, 3)
            for c in range(3):
                conv[c, c, 1, 1] = 1.0
            conv[3, 0] = 1.0 / 9
            self.features[0].weight.copy_(conv)
            self.features[0].bias.zero_()
            self.head[0].weight.copy_(torch.eye(4)[:, :, None, None])
            self.head[0].bias.fill_(0.1)
            self.head[4].weight.copy_(torch.tensor([[1.0, 0, -1, 0.5], [-1.0, 0, 1, -0.5]]))
            self.head[4].bias.zero_()

    def forward(self, x):
        return self.head(self.features(x))


def tinted(gen, n, channel=None):
    images = torch.rand(n, 3, 12, 12, generator=gen) * 0.5
    if channel is not None:
        images[:, channel] += 0.5
    return images


def test_tcav_images_with_tiny_cnn():
    gen = torch.Generator().manual_seed(0)
    model = TinyCNN().train()
    class_images = tinted(gen, 24)
    concepts = {"red": tinted(gen, 20, 0), "blue": tinted(gen, 20, 2),
                "green": tinted(gen, 20, 1)}
    randoms = tinted(gen, 200)
    result = tcav_images(model, "features", class_images, concepts, randoms, 0, n_runs=10,
                         seed=0, progress=False, batch_size=16, **CLASSIC_TCAV)
    mean = dict(zip(result.concept_names, result.mean_scores))
    significant = dict(zip(result.concept_names, result.significant))
    assert mean["red"] >= 0.95 and significant["red"]
    # blue lowers the logit in every run; whether that is significant depends on how lopsided
    # the random-vs-random sign counts (0 or 1 behind this head) happen to fall
    assert mean["blue"] <= 0.05
    assert result.cav_accuracies.min() >= 0.9
    assert model.training and all(p.requires_grad for p in model.parameters())
    # Same as extracting by hand and running tcav on the head.
    with torch.no_grad():
        by_hand = tcav(model.head, model.features(class_images),
                       {k: model.features(v) for k, v in concepts.items()},
                       model.features(randoms), 0, n_runs=10, seed=0, progress=False,
                       **CLASSIC_TCAV)
    np.testing.assert_allclose(result.scores, by_hand.scores)
    np.testing.assert_allclose(result.p_values, by_hand.p_values)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors(planted):
    head, cls, concepts, randoms = (PlantedHead(), planted["class"], planted["concepts"],
                                    planted["randoms"])
    rng = np.random.default_rng(30)
    kwargs = {"n_runs": 10, "progress": False, "seed": 0}
    with pytest.raises(ValueError, match=r"random_sets\[0\].*5 features.*8 were expected"):
        tcav(head, cls, concepts, [rng.normal(size=(40, 5))] * 10, 0, **kwargs)
    with pytest.raises(ValueError, match=r"concepts\['empty'\].*at least 2"):
        tcav(head, cls, {"empty": np.zeros((0, C, H, W))}, randoms, 0, **kwargs)
    with pytest.raises(ValueError, match="`concepts` is empty"):
        tcav(head, cls, {}, randoms, 0, **kwargs)
    with pytest.raises(TypeError, match="`concepts` must be a dict"):
        tcav(head, cls, [concepts["d1"]], randoms, 0, **kwargs)
    with pytest.raises(ValueError, match=r"`class_id` must be < 3.*got 3"):
        tcav(head, cls, concepts, randoms, 3, **kwargs)
    with pytest.raises(ValueError, match="`class_id` must be >= 0"):
        tcav(head, cls, concepts, randoms, -1, **kwargs)
    with pytest.raises(ValueError, match="`n_runs` must be >= 2"):
        tcav(head, cls, concepts, randoms, 0, n_runs=1, progress=False)
    with pytest.warns(UserWarning, match="n_runs=3"):  # the t-test; the permutation test is exact
        tcav(head, cls, concepts, randoms, 0, n_runs=3, progress=False, seed=0, test="ttest_ind")
    with pytest.raises(ValueError, match="`random_sets` holds 20 sets but n_runs=30"):
        tcav(head, cls, concepts, randoms, 0, n_runs=30, progress=False)
    with pytest.raises(ValueError, match="`class_activations` give 5 features"):
        tcav(head, rng.normal(size=(6, 5, H, W)), concepts, randoms, 0, **kwargs)
    with pytest.raises(ValueError, match="Did you mean 'ttest_ind'"):
        tcav(head, cls, concepts, randoms, 0, test="tttest_ind", **kwargs)
    with pytest.raises(ValueError, match="`classifier` must be one of"):
        compute_cav(concepts["d1"], randoms[0], classifier="svm")
    with pytest.raises(ValueError, match="random_activations.*at least 2"):
        compute_cav(concepts["d1"], randoms[0][:1])
    with pytest.raises(ValueError, match="random_activations.*8 were expected"):
        compute_cav(concepts["d1"], rng.normal(size=(20, 3)))
    with pytest.raises(ValueError, match="indistinguishable"):
        same = np.ones((10, C))  # identical constant sets: the mean difference is 0
        compute_cav(same, same.copy(), classifier="mean_difference", seed=0)
    with pytest.raises(ValueError, match="pooled space needs maps"):
        compute_cav(rng.normal(size=(10, 4, 5)), rng.normal(size=(10, 4, 5)))
    cav = compute_cav(concepts["d1"], randoms[0], seed=0)
    with pytest.raises(ValueError, match="`cav` has 8 dimensions"):
        directional_derivatives(lambda a: a[:, :2], rng.normal(size=(4, 3)), cav, 0)
    with pytest.raises(ValueError, match=r"`h` must return logits of shape \(n, n_classes\)"):
        directional_derivatives(lambda a: a.sum((1, 2, 3)), cls, cav, 0)
    with pytest.raises(ValueError, match="does not depend on its input"):
        directional_derivatives(lambda a: torch.zeros(a.shape[0], 2), cls, cav, 0)
    with pytest.raises(ValueError, match="`codes` has 5 rows but `segment_activations` has 4"):
        concept_sets_from_codes(np.eye(5), np.zeros((4, C)))
    with pytest.raises(ValueError, match="`concept_images` must be a non-empty dict"):
        tcav_images(TinyCNN(), "features", torch.rand(4, 3, 8, 8), {}, torch.rand(8, 3, 8, 8), 0)
    with pytest.raises(ValueError, match=r"concept_images\['x'\].*4 dimensions"):
        tcav_images(TinyCNN(), "features", torch.rand(4, 3, 8, 8), {"x": torch.rand(3, 8, 8)},
                    torch.rand(8, 3, 8, 8), 0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean call warns about nothing
        tcav(head, cls, {"d1": concepts["d1"]}, randoms, 0, n_runs=10, progress=False, seed=0,
             baseline="random")
    with pytest.raises(ValueError, match="baseline='concepts'.*at least 2 concept sets"):
        tcav(head, cls, {"d1": concepts["d1"]}, randoms, 0, n_runs=10, progress=False, seed=0)
    with pytest.raises(ValueError, match="`statistic` must be one of"):
        tcav(head, cls, concepts, randoms, 0, statistic="mean", **kwargs)


# --------------------------------------------------------------------------------------------
# The default protocol is specific: a difference every concept set shares is not a concept
# --------------------------------------------------------------------------------------------

class ConfoundedHead(nn.Module):
    """Class 0 rises along d1 and *falls* along ``u`` ("busy": random images carry +u, concept
    images -u, like a lone object on a plain background versus busy scenes); ``d2`` and ``v``
    are ignored. A linear head: every input has the same gradient."""

    def forward(self, a):
        pooled = a.mean((2, 3))
        logit = pooled @ torch.tensor(2 * D1 - U, dtype=a.dtype)
        return torch.stack([logit, -logit], dim=1)


@pytest.fixture(scope="module")
def confounded():
    rng = np.random.default_rng(7)
    lone = -1.5 * U                                     # what every concept image shares
    return {"class": maps(rng, 40),
            "concepts": {"d1": maps(rng, 40, 2 * D1 + lone), "d2": maps(rng, 40, 2 * D2 + lone),
                         "v": maps(rng, 40, 2 * V + lone)},
            "randoms": [maps(rng, 40, 1.5 * U) for _ in range(11)]}


def test_classic_protocol_flags_a_concept_the_head_ignores(confounded):
    result = tcav(ConfoundedHead(), confounded["class"], confounded["concepts"],
                  confounded["randoms"], 0, n_runs=10, seed=0, progress=False, **CLASSIC_TCAV)
    flagged = dict(zip(result.concept_names, result.significant & (result.mean_scores > 0.5)))
    # d2 and v only share the "lone object" direction, which lowers -u: every sign count is 1.
    np.testing.assert_array_equal(result.scores, 1.0)
    assert flagged == {"d1": True, "d2": True, "v": True}


def test_default_protocol_flags_only_the_concept_the_head_uses(confounded):
    result = tcav(ConfoundedHead(), confounded["class"], confounded["concepts"],
                  confounded["randoms"], 0, n_runs=10, seed=0, progress=False)
    assert (result.statistic, result.baseline, result.alternative, result.classifier) == (
        "magnitude", "concepts", "greater", "mean_difference")
    assert dict(zip(result.concept_names, result.significant)) == {"d1": True, "d2": False,
                                                                   "v": False}
    # The tested statistic is the mean directional derivative (the same for every input here).
    assert result.mean_magnitudes[0] > result.random_magnitudes.mean() > 0
    assert result.mean_magnitudes[1] < result.random_magnitudes.mean()
    # the permutation test: d1 beats every one of the 1199 random mixtures (20 m / alpha - 1)
    assert result.test == "permutation"
    np.testing.assert_allclose(result.p_values[0], 1 / 1200)
    assert result.p_values[1:].min() > 0.5
    np.testing.assert_allclose(result.p_values_corrected, np.minimum(3 * result.p_values, 1))
    assert "random concept" in result.summary().splitlines()[-2]
    assert "against 1199 random mixtures" in result.summary().splitlines()[-1]
    assert result.to_dict()["baseline"] == "concepts"


def test_random_set_size_is_refused_where_it_cannot_apply(planted):
    # with a list of random sets each set is used whole; the size was validated, then ignored
    with pytest.raises(ValueError, match="`random_set_size` sets the size of the sets drawn"):
        tcav(PlantedHead(), planted["class"], planted["concepts"], planted["randoms"], 0,
             n_runs=10, random_set_size=5, seed=0, progress=False)
    drawn = tcav(PlantedHead(), planted["class"], planted["concepts"], planted["pool"], 0,
                 n_runs=10, random_set_size=5, seed=0, progress=False)  # a pool: it applies
    assert drawn.n_runs == 10


def test_tcav_images_errors_name_the_image_set_at_fault():
    gen = torch.Generator().manual_seed(0)
    model = TinyCNN()
    good = tinted(gen, 20, 0)
    with pytest.raises(ValueError, match=r"`concept_images\['grey'\]` must have 3 channels"):
        tcav_images(model, "features", tinted(gen, 8), {"red": good, "grey": good[:, :1]},
                    tinted(gen, 60), 0, n_runs=10, seed=0, progress=False)
    with pytest.raises(TypeError, match=r"`class_images` must be a tensor"):
        tcav_images(model, "features", [good[0]], {"red": good, "blue": good}, tinted(gen, 60),
                    0, n_runs=10, seed=0, progress=False)
