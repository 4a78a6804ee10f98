"""Extraction metrics against closed forms, scipy and planted problems."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from conceptkit.concepts import NMF, PCAConcepts
from conceptkit.concepts.metrics import (
    EXTRACTION_METRICS,
    extraction_metrics,
    frechet_distance,
    hoyer,
    matched_cosine,
    relative_l2,
    sparsity_l0,
    stability,
)


def planted_nmf(n=300, c=40, k=4, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    parts = rng.exponential(1.0, (k, c)) * (rng.random((k, c)) < 0.3)
    codes = rng.exponential(1.0, (n, k)) * (rng.random((n, k)) < 0.6)
    A = codes @ parts
    return (A + noise * A.std() * np.abs(rng.standard_normal(A.shape))).astype(np.float32), parts


def frechet_reference(A, B):
    """The textbook formula with scipy's general matrix square root."""
    mu1, mu2 = A.mean(0), B.mean(0)
    S1, S2 = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    root = scipy.linalg.sqrtm(S1 @ S2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(S1 + S2 - 2 * root))


# --------------------------------------------------------------------------- relative_l2
def test_relative_l2_values():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 8))
    assert relative_l2(A, A) == 0.0
    assert relative_l2(A, 0.5 * A) == pytest.approx(0.5)
    noise = rng.standard_normal(A.shape)
    expected = np.mean([np.linalg.norm(n) / np.linalg.norm(a) for a, n in zip(A, noise)])
    assert relative_l2(A, A + noise) == pytest.approx(expected)
    assert relative_l2(torch.from_numpy(A), torch.from_numpy(A + noise)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="same shape"):
        relative_l2(A, A[:10])
    with pytest.raises(ValueError, match="same number of columns"):
        relative_l2(A, A[:, :3])


def test_relative_l2_leaves_zero_rows_out():
    """A zero row (a dead ReLU position) has no relative error; it was divided by the
    smallest float and gave about 1e305."""
    rng = np.random.default_rng(1)
    A = np.abs(rng.standard_normal((20, 6)))
    noise = 0.1 * rng.standard_normal(A.shape)
    with_dead = np.vstack([A, np.zeros((3, 6))])
    noisy = np.vstack([A + noise, 0.2 * np.ones((3, 6))])
    assert relative_l2(with_dead, noisy) == pytest.approx(relative_l2(A, A + noise))
    with pytest.raises(ValueError, match="every row of `A` is zero"):
        relative_l2(np.zeros((4, 6)), np.ones((4, 6)))


# --------------------------------------------------------------------------- sparsity
def test_sparsity_l0_counts_active_codes():
    U = np.array([[0.0, 1.0, 0.0, 2.0], [1e-9, 0.0, 0.0, 0.0], [3.0, -1.0, 0.5, 0.0]])
    assert sparsity_l0(U) == pytest.approx(5 / 12)
    assert sparsity_l0(U, eps=0.0) == pytest.approx(6 / 12)
    assert sparsity_l0(U, eps=1.5) == pytest.approx(2 / 12)
    with pytest.raises(ValueError, match="`eps`"):
        sparsity_l0(U, eps=-1)


def test_hoyer_closed_forms():
    assert hoyer(np.array([0.0, 0.0, 3.0, 0.0])) == pytest.approx(1.0)
    assert hoyer(np.full(7, 2.5)) == pytest.approx(0.0)
    x = np.array([1.0, 2.0, 0.0, 0.0])
    expected = (2.0 - 3.0 / np.sqrt(5.0)) / (2.0 - 1.0)
    assert hoyer(x) == pytest.approx(expected)
    # mean over rows; signs do not matter; an all-zero row counts as maximally sparse
    U = np.stack([x, -x, np.ones(4), np.zeros(4)])
    assert hoyer(U) == pytest.approx((2 * expected + 0.0 + 1.0) / 4)
    with pytest.raises(ValueError, match="at least 2 columns"):
        hoyer(np.ones((3, 1)))


# --------------------------------------------------------------------------- Fréchet
def test_frechet_identical_sets_is_zero():
    A = np.random.default_rng(1).standard_normal((200, 6))
    assert frechet_distance(A, A) == pytest.approx(0.0, abs=1e-9)


def test_frechet_matches_scipy_formula_for_non_commuting_covariances():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 5)) + 1.0
    B = rng.standard_normal((400, 5)) @ rng.standard_normal((5, 5)) - 0.5
    value = frechet_distance(A, B)
    assert value == pytest.approx(frechet_reference(A, B), rel=1e-8)
    assert value == pytest.approx(frechet_distance(B, A), rel=1e-8)


def test_frechet_isotropic_gaussians_closed_form():
    rng = np.random.default_rng(3)
    d, n = 4, 200_000
    mu1, mu2 = np.zeros(d), np.array([1.0, -2.0, 0.5, 0.0])
    s1, s2 = 1.0, 2.0
    A = mu1 + s1 * rng.standard_normal((n, d))
    B = mu2 + s2 * rng.standard_normal((n, d))
    expected = np.sum((mu1 - mu2) ** 2) + d * (s1 - s2) ** 2  # 5.25 + 4 = 9.25
    assert frechet_distance(A, B) == pytest.approx(expected, rel=0.01)


def test_frechet_more_features_than_rows():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((20, 64))
    assert frechet_distance(A, A) == pytest.approx(0.0, abs=1e-8)
    B = A + 3.0
    assert frechet_distance(A, B) == pytest.approx(64 * 9.0, rel=1e-6)  # pure mean shift
    value = frechet_distance(A, rng.standard_normal((30, 64)))
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(A[:1], A)


# --------------------------------------------------------------------------- matching
def test_matched_cosine_recovers_permutation_scale_and_sign():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((6, 10))
    perm = rng.permutation(6)
    scaled = W[perm] * rng.uniform(0.5, 3.0, (6, 1))
    score, rows, cols = matched_cosine(W, scaled, return_pairs=True)
    assert score == pytest.approx(1.0)
    np.testing.assert_array_equal(perm[cols], rows)
    flipped = scaled * np.array([1, -1, 1, -1, 1, 1])[:, None]
    assert matched_cosine(W, flipped) < 0.9
    assert matched_cosine(W, flipped, absolute=True) == pytest.approx(1.0)
    # rectangular: every row of the small set finds its partner in the large one
    assert matched_cosine(W[:3], np.vstack([rng.standard_normal((4, 10)), W])) == pytest.approx(1.0)
    # orthogonal sets score 0
    assert matched_cosine(np.eye(3, 6), np.eye(6)[3:]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="`W2` must have 10 columns"):
        matched_cosine(W, W[:, :4])


# --------------------------------------------------------------------------- stability
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # NMF of pure noise
def test_stability_high_for_planted_low_for_noise():
    A, _ = planted_nmf()
    planted = stability(NMF(4, random_state=0), A, n_bootstrap=4, seed=0)
    noise = np.abs(np.random.default_rng(6).standard_normal(A.shape)).astype(np.float32)
    unstable = stability(NMF(4, random_state=0), noise, n_bootstrap=4, seed=0)
    assert planted >= 0.95
    assert unstable < 0.9 and unstable < planted - 0.1
    # same seed, same subsets, same answer
    assert stability(NMF(4, random_state=0), A, n_bootstrap=4, seed=0) == planted


def test_stability_validates():
    A, _ = planted_nmf()
    with pytest.raises(ValueError, match="`n_bootstrap`"):
        stability(NMF(4), A, n_bootstrap=1)
    with pytest.raises(ValueError, match="`subset_fraction`"):
        stability(NMF(4), A, subset_fraction=1.5)
    with pytest.raises(ValueError, match="fewer than n_concepts"):
        stability(NMF(4), A[:6], subset_fraction=0.5)
    # subset= is the old name (CMuFidelity says subset_fraction=): it still works, and warns
    with pytest.warns(DeprecationWarning, match=r"`subset` of stability\(\)"):
        with pytest.raises(ValueError, match="`subset_fraction`"):
            stability(NMF(4), A, subset=1.5)
    with pytest.raises(TypeError, match="`factorizer`"):
        stability(object(), A)


# --------------------------------------------------------------------------- the registry
def test_registry_directions():
    expected = {"relative_l2": False, "sparsity_l0": False, "hoyer": True,
                "frechet_distance": False, "stability": True, "dead_codes": False,
                "seed_stability": True}
    assert {name: m.higher_is_better for name, m in EXTRACTION_METRICS.items()} == expected


def test_extraction_metrics_agree_with_direct_calls():
    A, _ = planted_nmf()
    est = NMF(4, random_state=0).fit(A)
    results = extraction_metrics(est, A, n_bootstrap=3, seed=1)
    U = est.transform(A)
    A_hat = est.inverse_transform(U)
    assert set(results) == set(EXTRACTION_METRICS)
    assert results["relative_l2"] == pytest.approx(relative_l2(A, A_hat))
    assert results["sparsity_l0"] == pytest.approx(sparsity_l0(U))
    assert results["hoyer"] == pytest.approx(hoyer(U))
    assert results["frechet_distance"] == pytest.approx(frechet_distance(A, A_hat))
    assert results["stability"] == pytest.approx(stability(est, A, n_bootstrap=3, seed=1))
    assert 0 < results["relative_l2"] < 0.1 and results["stability"] > 0.95
    # torch input works the same way
    torch_results = extraction_metrics(est, torch.from_numpy(A), ["relative_l2", "hoyer"])
    assert torch_results["relative_l2"] == pytest.approx(results["relative_l2"], rel=1e-5)
    with pytest.raises(ValueError, match="`metrics`.*Did you mean 'hoyer'"):
        extraction_metrics(est, A, ["hoyr"])
    with pytest.raises(TypeError, match="list of names"):
        extraction_metrics(est, A, "hoyer")


def test_signed_factorizer_stability_ignores_signs():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((400, 3)) * np.array([5.0, 3.0, 1.0]) @ np.linalg.qr(
        rng.standard_normal((12, 3)))[0].T
    assert stability(PCAConcepts(3), A, n_bootstrap=3, seed=0) > 0.99
