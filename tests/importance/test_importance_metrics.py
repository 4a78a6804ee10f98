"""C-Deletion, C-Insertion and C-μFidelity against closed forms on planted affine heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from conceptkit.importance import concept_importance
from conceptkit.importance.metrics import (
    CDeletion,
    CInsertion,
    CMuFidelity,
    ConceptMetric,
    MetricResult,
    _spearman_rows,
)


class OrthoBank:
    """Orthonormal components: ``encode`` recovers planted codes exactly."""

    def __init__(self, components):
        self.components = components

    def encode(self, activations):
        return torch.einsum("nc...,kc->nk...", torch.as_tensor(activations), self.components)


def linear_setup(n=20, k=8, channels=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, k, 2, 2, generator=gen) * torch.linspace(0.2, 2.0, k)[:, None, None]
    components = torch.linalg.qr(torch.randn(channels, k, generator=gen))[0].T.contiguous()
    acts = torch.einsum("nkhw,kc->nchw", codes, components)
    torch.manual_seed(seed)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 4))
    row = head[-1].weight[1].detach().double()
    beta = (codes.double().mean((2, 3)) * (components.double() @ row)).numpy()
    intercept = head[-1].bias[1].item()
    return head, acts, OrthoBank(components), beta, intercept


def expected_curves(beta, intercept, importances, deletion):
    """Class score after t = 0..k steps, from y(m) = b + m . beta."""
    n, k = beta.shape
    order = np.argsort(-np.broadcast_to(importances, beta.shape), axis=1, kind="stable")
    curves = np.empty((n, k + 1))
    for i in range(n):
        for t in range(k + 1):
            mask = np.zeros(k) if not deletion else np.ones(k)
            mask[order[i, :t]] = 0.0 if deletion else 1.0
            curves[i, t] = intercept + mask @ beta[i]
    return curves


@pytest.mark.parametrize("metric_class,deletion", [(CDeletion, True), (CInsertion, False)])
@pytest.mark.parametrize("per_input", [True, False])
def test_curves_match_closed_form(metric_class, deletion, per_input):
    head, acts, bank, beta, intercept = linear_setup()
    importances = beta if per_input else beta.mean(0)
    result = metric_class().evaluate(head, acts, bank, 1, importances)
    expected = expected_curves(beta, intercept, importances, deletion)
    assert isinstance(result, MetricResult) and result.curves.shape == (20, 9)
    np.testing.assert_allclose(result.curves, expected, atol=1e-5)
    area = np.trapezoid(expected, dx=1 / 8, axis=1)
    np.testing.assert_allclose(result.per_input, area, atol=1e-5)
    assert result.score == pytest.approx(area.mean(), abs=1e-5)
    assert result.higher_is_better is (not deletion)


def test_correct_ranking_beats_reversed_ranking():
    head, acts, bank, beta, _ = linear_setup()
    deletion, insertion = CDeletion(), CInsertion()
    assert not deletion.higher_is_better and insertion.higher_is_better
    assert deletion(head, acts, bank, 1, beta) < deletion(head, acts, bank, 1, -beta)
    assert insertion(head, acts, bank, 1, beta) > insertion(head, acts, bank, 1, -beta)
    rng = np.random.default_rng(0)
    shuffled = rng.permuted(beta, axis=1)
    assert deletion(head, acts, bank, 1, beta) < deletion(head, acts, bank, 1, shuffled)
    assert insertion(head, acts, bank, 1, beta) > insertion(head, acts, bank, 1, shuffled)


def test_mu_fidelity_of_exact_and_random_attributions():
    head, acts, bank, beta, _ = linear_setup(n=40)
    metric = CMuFidelity(n_samples=200, seed=0)
    assert metric.higher_is_better
    exact = metric.evaluate(head, acts, bank, 1, beta)
    assert exact.curves is None
    assert exact.per_input.min() > 0.999
    assert metric(head, acts, bank, 1, -beta) < -0.999
    noise = np.random.default_rng(1).normal(size=beta.shape)
    random_score = metric.evaluate(head, acts, bank, 1, noise)
    assert abs(random_score.score) < 0.1
    assert random_score.per_input.std() > 0.1     # it is noise, not a constant


def test_mu_fidelity_is_seeded_and_uses_subset_fraction():
    head, acts, bank, beta, _ = linear_setup(n=10)
    noise = np.random.default_rng(1).normal(size=beta.shape)
    first = CMuFidelity(n_samples=50, seed=3).evaluate(head, acts, bank, 1, noise)
    again = CMuFidelity(n_samples=50, seed=3).evaluate(head, acts, bank, 1, noise)
    other = CMuFidelity(n_samples=50, seed=4).evaluate(head, acts, bank, 1, noise)
    np.testing.assert_array_equal(first.per_input, again.per_input)
    assert not np.array_equal(first.per_input, other.per_input)
    # Removing everything (fraction 1) makes every subset equal: no correlation to measure, so
    # the setting is refused (it returned 0.0 without a word); a fraction that never removes a
    # concept in these draws gives 0 with a warning that it is undefined.
    with pytest.raises(ValueError, match="`subset_fraction` must be < 1"):
        CMuFidelity(n_samples=20, subset_fraction=1.0, seed=0)(head, acts, bank, 1, beta)
    with pytest.warns(RuntimeWarning, match="undefined there"):
        tiny = CMuFidelity(n_samples=20, subset_fraction=1e-9, seed=0)(head, acts, bank, 1, beta)
    assert tiny == 0.0


def test_spearman_rows_matches_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 6, 30))
    x[0, :5] = 1.0      # ties
    expected = [spearmanr(a, b).statistic for a, b in zip(x, y)]
    values, defined = _spearman_rows(x, y)
    np.testing.assert_allclose(values, expected, atol=1e-12)
    assert defined.all()
    values, defined = _spearman_rows(np.ones((1, 5)), y[:1, :5])
    assert values[0] == 0.0 and not defined[0]


def test_accepts_concept_importance_results_and_nonlinear_heads():
    head, acts, bank, beta, _ = linear_setup(n=10, k=5)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8), nn.Tanh(),
                        nn.Linear(8, 3))
    result = concept_importance(mlp, acts, bank, 1, "occlusion", progress=False)
    for metric in (CDeletion(), CInsertion(), CMuFidelity(seed=0, n_samples=50)):
        assert isinstance(metric, ConceptMetric)
        from_result = metric(mlp, acts, bank, 1, result)
        from_array = metric(mlp, acts, bank, 1, result.per_input)
        assert from_result == from_array and np.isfinite(from_result)
    assert CDeletion()(mlp, acts, bank, 1, result) < CDeletion()(mlp, acts, bank, 1, -result.per_input)


class CountingHead(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("make_metric", [CDeletion, CInsertion, lambda **kw: CMuFidelity(seed=0, **kw)])
def test_fast_path_gives_the_metric_of_h_itself(make_metric):
    # An affine head is collapsed to one vector per input: same values as running h on every
    # masked reconstruction, with a few probing passes of h instead of one per mask and input
    # (the probe, and the collapse checked on three masks of every input: 150 rows here).
    head, acts, bank, beta, _ = linear_setup(n=30)
    importances = beta + np.random.default_rng(2).normal(scale=0.3, size=beta.shape)
    counted = CountingHead(head)
    fast = make_metric().evaluate(counted, acts, bank, 1, importances)
    fast_rows, counted.rows = counted.rows, 0
    slow = make_metric(fast_path=False).evaluate(counted, acts, bank, 1, importances)
    np.testing.assert_allclose(fast.per_input, slow.per_input, atol=1e-5)
    if slow.curves is not None:
        np.testing.assert_allclose(fast.curves, slow.curves, atol=1e-5)
    assert fast_rows <= 150 < counted.rows
    # A nonlinear head is never collapsed: "auto" falls back to h, True refuses it.
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8), nn.Tanh(),
                        nn.Linear(8, 3))
    auto = make_metric().evaluate(mlp, acts, bank, 1, importances)
    off = make_metric(fast_path=False).evaluate(mlp, acts, bank, 1, importances)
    np.testing.assert_array_equal(auto.per_input, off.per_input)
    with pytest.raises(ValueError, match="fast_path=True.*affine"):
        make_metric(fast_path=True)(mlp, acts, bank, 1, importances)
    with pytest.raises(ValueError, match="fast_path"):
        make_metric(fast_path="yes")(head, acts, bank, 1, importances)


def test_errors_name_the_argument():
    head, acts, bank, beta, _ = linear_setup(n=5, k=4)
    with pytest.raises(ValueError, match=r"importances.*\(4,\).*\(5, 4\)"):
        CDeletion()(head, acts, bank, 1, beta[:, :3])
    bad = beta.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        CInsertion()(head, acts, bank, 1, bad)
    with pytest.raises(TypeError, match="importances"):
        CInsertion()(head, acts, bank, 1, "high")
    with pytest.raises(ValueError, match="n_samples"):
        CMuFidelity(n_samples=1)(head, acts, bank, 1, beta)
    with pytest.raises(ValueError, match="subset_fraction"):
        CMuFidelity(subset_fraction=0.0)(head, acts, bank, 1, beta)
    with pytest.raises(ValueError, match="class_id"):
        CDeletion()(head, acts, bank, 9, beta)
    assert "n_samples=200" in repr(CMuFidelity())
