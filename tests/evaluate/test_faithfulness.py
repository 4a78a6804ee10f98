"""faithfulness(): planted importances give known rank correlations; deletion curves of the
planted linear model equal their closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _evaluate_planted import (
    BACKGROUND,
    BIAS,
    PART_NAMES,
    WEIGHTS,
    ColourMeanNet,
    PlantedExplanation,
    closed_logits,
    painted,
    planted_images,
    planted_maps,
)
from scipy import stats

from conceptkit.evaluate import Faithfulness, faithfulness, localisation, reliance


@pytest.fixture(scope="module")
def world():
    images, masks = planted_images(12, seed=0)
    return ColourMeanNet(), images, masks, planted_maps(masks)


def closed_reliance(images, masks):
    """Expected logit drop of class 0 per part with the median (background) fill."""
    x = images.double().numpy()
    m = masks.numpy()
    base = closed_logits(x)[:, 0]
    drops = []
    for p in range(3):
        after = closed_logits(painted(x, m[:, p], np.full((1, 3, 1, 1), BACKGROUND)))[:, 0]
        drops.append((base - after).mean())  # absent parts change nothing: drop 0
    return np.array(drops)


def closed_curve(images, regions_in_order):
    x = images.double().numpy()
    removed = np.zeros((x.shape[0], *x.shape[-2:]), dtype=bool)
    curve = [closed_logits(x)[:, 0].mean()]
    for region in regions_in_order:
        removed |= region
        curve.append(closed_logits(painted(x, removed, np.full((1, 3, 1, 1), BACKGROUND)))[:, 0].mean())
    return np.array(curve)


def run(world, importances, **kwargs):
    model, images, masks, maps = world
    kwargs.setdefault("measure", "logit")
    return faithfulness(PlantedExplanation(maps, importances), model, images, masks, PART_NAMES,
                        progress=False, **kwargs)


def test_the_planted_reliance_is_strictly_ordered(world):
    _, images, masks, _ = world
    # median fill: red +2.2, green +0.2, blue -0.8 per pixel (background concept: 0)
    drops = closed_reliance(images, masks)
    assert drops[0] > drops[1] > 0 > drops[2]


@pytest.mark.parametrize("importances, rho", [([0.9, 0.5, 0.1, 0.3], 1.0),
                                               ([0.1, 0.3, 0.9, 0.5], -1.0)])
def test_spearman_and_kendall_are_exactly_one_or_minus_one(world, importances, rho):
    result = run(world, importances, deletion=False)
    assert isinstance(result, Faithfulness)
    assert result.concept_parts.tolist() == [0, 1, 2, -1]
    assert result.spearman == pytest.approx(rho) and result.kendall == pytest.approx(rho)
    _, images, masks, _ = world
    np.testing.assert_allclose(result.concept_reliance,
                               [*closed_reliance(images, masks), 0.0], atol=1e-6)


def test_correlations_match_scipy_on_a_partial_order(world):
    _, images, masks, _ = world
    importances = [0.9, 0.1, 0.5, 0.3]
    result = run(world, importances, deletion=False)
    truth = [*closed_reliance(images, masks), 0.0]
    assert result.spearman == pytest.approx(stats.spearmanr(importances, truth).statistic)
    assert result.kendall == pytest.approx(stats.kendalltau(importances, truth).statistic)
    assert result.spearman == pytest.approx(0.2) and result.kendall == pytest.approx(0.0, abs=1e-12)


def test_duplicate_concepts_count_once_at_part_level(world):
    model, images, masks, _ = world
    m = masks.float()
    maps = torch.stack([m[:, 0], m[:, 0], m[:, 1], m[:, 2]], 1)   # two concepts on red
    importances = [0.5, 0.05, 0.3, 0.1]
    result = faithfulness(PlantedExplanation(maps, importances), model, images, masks,
                          measure="logit", deletion=False, progress=False)
    drops = closed_reliance(images, masks)
    concept_truth = [drops[0], drops[0], drops[1], drops[2]]
    assert result.spearman == pytest.approx(stats.spearmanr(importances, concept_truth).statistic)
    assert result.spearman < 0.8                          # the weak duplicate breaks the order
    np.testing.assert_allclose(result.part_importances, [0.55, 0.3, 0.1])
    assert result.part_spearman == pytest.approx(1.0) and result.part_kendall == pytest.approx(1.0)


def test_reliance_floor_zeroes_small_reliance(world):
    _, images, masks, _ = world
    drops = closed_reliance(images, masks)      # red, green (small, > 0), blue (< 0)
    floor = (abs(drops[1]) + min(abs(drops[0]), abs(drops[2]))) / 2   # above green only
    importances = [0.9, 0.5, 0.1, 0.3]
    result = run(world, importances, deletion=False, reliance_floor=floor)
    truth = [drops[0], 0.0, drops[2], 0.0]
    np.testing.assert_allclose(result.concept_reliance, truth, atol=1e-6)
    assert result.spearman == pytest.approx(stats.spearmanr(importances, truth).statistic)
    with pytest.raises(ValueError, match="reliance_floor"):
        run(world, importances, deletion=False, reliance_floor=-1.0)


def test_deletion_curves_match_the_closed_form(world):
    _, images, masks, maps = world
    importances = np.array([0.1, 0.9, 0.3, 0.5])         # order: green, background, blue, red
    result = run(world, importances)
    curves = result.deletion
    assert curves.concept_order.tolist() == [1, 3, 2, 0]
    assert curves.part_order.tolist() == [0, 1, 2]        # reliance: red, green, blue
    m = masks.numpy()
    regions = maps.numpy() > 0
    expected_parts = closed_curve(images, [m[:, p] for p in (0, 1, 2)])
    expected_concepts = closed_curve(images, [regions[:, j] for j in (1, 3, 2, 0)])
    np.testing.assert_allclose(curves.part_curve, expected_parts, atol=2e-6)
    np.testing.assert_allclose(curves.concept_curve, expected_concepts, atol=2e-6)
    # both on 4 steps (the part curve stays at its end value), trapezoid over [0, 1]
    parts = np.append(expected_parts, expected_parts[-1])
    area = ((expected_concepts - parts)[1:] + (expected_concepts - parts)[:-1]).sum() / 8
    assert curves.area_between == pytest.approx(area, abs=2e-6)
    faithful = run(world, [0.9, 0.5, 0.1, 0.3]).deletion
    assert faithful.area_between < curves.area_between


def test_removing_concept_contributions_from_activations():
    """A bank whose concepts are the colour channels of the first layer: removing concept ``j``
    subtracts channel ``j``, so the logit loses ``W[0, j] x mean(x_j)`` exactly."""
    images, masks = planted_images(12, seed=0)
    model = ColourMeanNet()

    class Bank:
        components = torch.eye(3)

        @staticmethod
        def encode(acts):
            return acts

    class Explainer:
        def __init__(self):
            self.model = model
            self.maps_head = torch.nn.Sequential(model.pool, torch.nn.Flatten(), model.fc)

        def activations(self, images, with_context=False):
            acts = model.features(images).detach()
            return (acts, None) if with_context else acts

    planted = PlantedExplanation(masks.float(), [0.2, 0.7, 0.4])
    planted.bank, planted.model_at_layer, planted.activations = Bank(), Explainer(), None
    result = faithfulness(planted, model, images, masks, removal="activations", measure="logit",
                          progress=False)
    means = images.double().mean((2, 3)).numpy()
    kept = np.ones(3)
    expected = [(means @ WEIGHTS[0] + BIAS[0]).mean()]
    for j in (1, 2, 0):
        kept[j] = 0.0
        expected.append(((means * kept) @ WEIGHTS[0] + BIAS[0]).mean())
    np.testing.assert_allclose(result.deletion.concept_curve, expected, atol=2e-6)
    assert result.deletion.removal == "activations"


def test_all_concepts_on_background_is_nan_with_a_note(world):
    model, images, masks, _ = world
    maps = torch.zeros(12, 2, 24, 24)
    maps[:, :, 14:, 14:] = 1.0
    result = faithfulness(PlantedExplanation(maps, [0.5, 0.2]), model, images, masks,
                          deletion=False, progress=False)
    assert np.isnan(result.spearman) and np.isnan(result.kendall)
    assert "undefined" in result.notes[0]
    assert result.to_dict()["spearman"] is None


def test_precomputed_reliance_and_localisation_are_reused(world):
    model, images, masks, maps = world
    rel = reliance(model, images, masks, 0, "median", progress=False)
    loc = localisation(maps, images, masks)
    planted = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3])
    result = faithfulness(planted, model, images, masks, reliance=rel, localisation=loc,
                          deletion=False, progress=False)
    assert planted.calls == [] and result.reliance is rel and result.localisation is loc
    with pytest.raises(ValueError, match="class 0, not 1"):  # a reliance of another class
        faithfulness(PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3], class_id=1), model, images,
                     masks, reliance=rel, localisation=loc, progress=False)
    with pytest.raises(TypeError, match="Reliance"):
        faithfulness(planted, model, images, masks, reliance=loc, progress=False)
    with pytest.raises(ValueError, match="4 concepts"):
        faithfulness(PlantedExplanation(maps, [1, 2, 3]), model, images, masks,
                     localisation=loc, reliance=rel, progress=False)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"removal": "occlusion"}, ValueError, "removal"),
    ({"measure": "accuracy"}, ValueError, "measure"),
    ({"removal": "activations"}, ValueError, "concept bank"),
])
def test_bad_options(world, kwargs, error, match):
    with pytest.raises(error, match=match):
        run(world, [0.9, 0.5, 0.1, 0.3], **kwargs)


def test_explanation_without_importances_is_refused(world):
    model, images, masks, _ = world
    with pytest.raises(TypeError, match="importances"):
        faithfulness(object(), model, images, masks, progress=False)
    bad = PlantedExplanation(torch.zeros(12, 1, 24, 24), [np.nan])
    with pytest.raises(ValueError, match="NaN"):
        faithfulness(bad, model, images, masks, progress=False)


def test_spearman_significant_zeroes_what_the_images_cannot_tell_from_zero(world):
    from conceptkit.evaluate import Reliance
    _, images, masks, _ = world
    rng = np.random.default_rng(1)
    n = images.shape[0]
    present = masks.flatten(2).any(-1).numpy()
    drops = np.stack([0.6 + 0.05 * rng.standard_normal(n),     # red: relied on
                      0.02 * rng.standard_normal(n),           # green: noise around 0
                      -0.3 + 0.05 * rng.standard_normal(n)], 1)  # blue: consistently negative
    drops = np.where(present, drops, np.nan)
    expected = np.nan_to_num(drops).mean(0)
    given = Reliance(per_image=drops, mean=np.nanmean(drops, 0), expected=expected,
                     per_image_logit=drops, mean_logit=np.nanmean(drops, 0),
                     expected_logit=expected, base_probability=np.ones(n), base_logit=np.zeros(n),
                     present=present, class_id=0, fill="median", part_names=PART_NAMES)
    # the same decision by scipy: the t interval of the mean drop (absent = 0) excludes 0
    sig = []
    for p in range(3):
        column = np.nan_to_num(drops[:, p])
        low, high = stats.t.interval(0.95, n - 1, loc=column.mean(), scale=stats.sem(column))
        sig.append(bool(low > 0 or high < 0))
    assert sig == [True, False, True]
    assert given.significant().tolist() == sig
    importances = [0.9, 0.1, 0.5, 0.3]   # red, green, blue, background
    result = run(world, importances, deletion=False, reliance=given, measure="probability")
    truth = [expected[0], expected[1], expected[2], 0.0]
    assert result.spearman == pytest.approx(stats.spearmanr(importances, truth).statistic)
    zeroed = [expected[0], 0.0, expected[2], 0.0]
    assert result.spearman_significant == pytest.approx(
        stats.spearmanr(importances, zeroed).statistic)
    assert result.spearman_significant != pytest.approx(result.spearman)
    assert result.to_dict()["spearman_significant"] == pytest.approx(result.spearman_significant)


def test_rank_correlations_of_nothing_are_nan():
    """A class whose images show no part leaves no concept on a part: empty or single vectors
    give NaN (no correlation), not numpy's error on an empty reduction."""
    from conceptkit.evaluate._faithfulness import rank_correlations

    for size in (0, 1):
        rho, tau = rank_correlations(np.zeros(size), np.zeros(size))
        assert np.isnan(rho) and np.isnan(tau)
