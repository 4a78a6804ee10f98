"""localisation(): pointing game, relevance mass, IoU, ROC-AUC and part assignment on hand-made
maps and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _evaluate_planted import PART_NAMES, PlantedExplanation, planted_images
from sklearn.metrics import roc_auc_score

from conceptkit.evaluate import Localisation, localisation, roc_auc


def square(size, top, left, side):
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_pointing_game_with_tolerance_on_hand_made_masks():
    # one part (a 4x4 square at rows/cols 8..11) in three 20x20 images; one concept whose map
    # peaks inside it (image 0), 2 px beside it (image 1), and 6 px away (image 2)
    masks = np.stack([square(20, 8, 8, 4)] * 3)[:, None]
    maps = np.zeros((3, 1, 20, 20))
    maps[0, 0, 9, 9] = 1.0
    maps[1, 0, 9, 13] = 1.0   # column 13: 2 px right of the last mask column (11)
    maps[2, 0, 9, 17] = 1.0   # 6 px right
    exact = localisation(maps, None, masks, tolerance=0)
    assert exact.per_image["pointing_game"][:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    near = localisation(maps, None, masks, tolerance=2)
    assert near.per_image["pointing_game"][:, 0, 0].tolist() == [1.0, 1.0, 0.0]
    assert near.pointing_game[0, 0] == pytest.approx(2 / 3)
    # the default tolerance is the image side / 16, here 1 px
    assert localisation(maps, None, masks).tolerance == 1


def test_constant_map_points_nowhere_and_absent_parts_are_nan():
    masks = np.zeros((3, 2, 16, 16), dtype=bool)
    masks[:, 0] = square(16, 2, 2, 5)
    masks[0, 1] = square(16, 10, 10, 4)  # part 1 only in image 0
    maps = np.zeros((3, 1, 16, 16))
    maps[0, 0, 3, 3] = 2.0            # image 0 points at part 0; images 1 and 2: constant maps
    result = localisation(maps, None, masks)
    assert result.per_image["pointing_game"][:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert result.per_image["relevance_mass"][:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert np.isnan(result.per_image["pointing_game"][1:, 0, 1]).all()
    assert result.n_present.tolist() == [3, 1]
    assert result.pointing_game[0, 1] == 0.0 and result.pointing_game[0, 0] == pytest.approx(1 / 3)


def test_relevance_mass_and_iou_closed_form():
    mask = square(10, 0, 0, 5)                     # 25 px
    maps = np.zeros((1, 1, 10, 10))
    maps[0, 0, :5, :5] = 1.0                        # 25 px of mass 1 inside
    maps[0, 0, 5:, 5:] = 3.0                        # 25 px of mass 3 outside
    result = localisation(maps, None, mask[None, None], quantile=0.5)
    assert result.relevance_mass[0, 0] == pytest.approx(25 / 100)
    # at the 0.5 quantile the thresholded map is its 50 non-zero pixels: IoU = 25 / 50
    assert result.iou[0, 0] == pytest.approx(0.5)
    high = localisation(maps, None, mask[None, None], quantile=0.75)
    assert high.iou[0, 0] == pytest.approx(0.0)    # only the outside block survives


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 4, size=(4, 3, 12, 12)).astype(float)   # many ties
    masks = rng.random((4, 2, 12, 12)) < 0.3
    ours = roc_auc(maps, masks)
    for i in range(4):
        for j in range(3):
            for p in range(2):
                ref = roc_auc_score(masks[i, p].ravel(), maps[i, j].ravel())
                assert ours[i, j, p] == pytest.approx(ref, abs=1e-12)
    full = np.ones((1, 1, 12, 12), dtype=bool)
    assert np.isnan(roc_auc(maps[:1], full)).all()


def test_planted_maps_give_their_parts_and_background():
    images, masks = planted_images(12, seed=0)
    m = masks.float()
    # concepts 0..2 sit on parts 2, 0, 1; concept 3 lights the empty bottom-right quarter
    maps = torch.stack([m[:, 2], m[:, 0], m[:, 1], torch.zeros_like(m[:, 0])], 1)
    maps[:, 3, 14:, 14:] = 1.0
    result = localisation(PlantedExplanation(maps, [1, 2, 3, 4]), images, masks, PART_NAMES)
    assert isinstance(result, Localisation)
    assert result.concept_parts.tolist() == [2, 0, 1, -1]
    assert result.best_concept.tolist() == [1, 2, 0]
    np.testing.assert_allclose(np.diag(result.pointing_game[[1, 2, 0]]), 1.0)
    np.testing.assert_allclose(np.diag(result.relevance_mass[[1, 2, 0]]), 1.0)
    np.testing.assert_allclose(np.diag(result.auc[[1, 2, 0]]), 1.0)
    np.testing.assert_allclose(np.diag(result.iou[[1, 2, 0]]), 1.0)
    assert result.pointing_game[3].max() == 0.0
    assert result.to_dict()["concept_parts"] == [2, 0, 1, -1]
    assert "c3->background" in repr(result)


def test_min_images_and_threshold_decide_the_assignment():
    images, masks = planted_images(12, seed=0)
    masks = masks.clone()
    masks[3:, 2] = False                              # blue now shown in images 0..2 only
    maps = masks.float()[:, [2]]
    assert localisation(maps, images, masks, min_images=3).concept_parts.tolist() == [2]
    assert localisation(maps, images, masks, min_images=4).concept_parts.tolist() == [-1]
    half = maps.clone()
    half[1:3] = 0.0                                   # points at blue in 1 of 3 images
    assert localisation(half, images, masks, assign_threshold=0.3).concept_parts.tolist() == [2]
    assert localisation(half, images, masks, assign_threshold=0.5).concept_parts.tolist() == [-1]


def test_too_few_images_of_every_part_leave_the_part_undetermined_not_background():
    images, masks = planted_images(12, seed=0)
    maps = masks.float()[:, [2]]                      # a perfect map of part 2
    most = int(masks.flatten(2).any(-1).sum(0).max())  # images showing the most shown part
    result = localisation(maps, images, masks, PART_NAMES, min_images=most + 1)
    assert result.concept_parts.tolist() == [-2]      # not -1: nothing says it misses the parts
    assert result.name(-2) == "undetermined" and "c0->undetermined" in repr(result)
    assert result.pointing_game[0, 2] == 1.0          # still scored


def test_wilson_lower_matches_scipy():
    from scipy.stats import binomtest

    from conceptkit.evaluate._localisation import wilson_lower

    hits_of = [(3, 3), (26, 30), (10, 10), (12, 30), (0, 5), (1, 1)]
    ours = wilson_lower(np.array([h / n for h, n in hits_of]), np.array([n for _, n in hits_of]))
    ref = [binomtest(h, n).proportion_ci(0.95, method="wilson").low for h, n in hits_of]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert np.isnan(wilson_lower(np.array([0.5]), np.array([0])))[0]


def test_a_pointing_game_over_few_images_does_not_outrank_one_over_many():
    """The shapes ViT's case (class 2, seed 0): a concept points at the red disk in the 3
    images that show it and at the green triangle in 26 of the 30 that show the triangle. By
    the pointing game alone it would sit on the disk (1.00 > 0.87); by what the images
    support (Wilson lower bounds 0.44 and 0.70) it sits on the triangle."""
    n, size = 30, 16
    masks = np.zeros((n, 3, size, size), dtype=bool)
    masks[:, 0] = square(size, 1, 1, 4)            # part 0 (the triangle): every image
    masks[:3, 1] = square(size, 10, 10, 4)         # part 1 (the disk): images 0..2 only
    masks[10:20, 2] = square(size, 1, 10, 4)       # part 2: images 10..19
    maps = np.zeros((n, 2, size, size))
    maps[:, 0, 2, 2] = 1.0                          # concept 0 peaks on part 0 ...
    maps[:3, 0, 2, 2] = 0.0
    maps[:3, 0, 11, 11] = 1.0                       # ... except on part 1 where part 1 is shown
    maps[26:, 0, 2, 2] = 0.0
    maps[26:, 0, 14, 2] = 1.0                       # and nowhere on parts in images 26..29
    result = localisation(maps[:, :1], None, masks, tolerance=0)
    assert result.pointing_game[0, 1] == 1.0 and result.pointing_game[0, 0] == pytest.approx(23 / 30)
    assert result.concept_parts.tolist() == [0]
    # a part shown in 10 images and always pointed at still beats 10 hits in 30 (0.72 > 0.19)
    maps[:, 1, 2, 2] = 1.0
    maps[12:, 1, 2, 2] = 0.0
    maps[12:, 1, 14, 2] = 1.0
    maps[10:20, 1] = 0.0
    maps[10:20, 1, 2, 11] = 1.0
    result = localisation(maps, None, masks, tolerance=0)
    assert result.pointing_game[1, 0] == pytest.approx(10 / 30)
    assert result.pointing_game[1, 2] == 1.0 and result.concept_parts.tolist() == [0, 2]
    # the threshold still reads the chosen part's own pointing game
    assert localisation(maps, None, masks, tolerance=0, assign_threshold=0.8).concept_parts.tolist() == [-1, 2]


def test_small_maps_are_resized_and_an_explanation_of_ones_own_is_asked_for_its_maps():
    images, masks = planted_images(12, seed=0)
    coarse = torch.nn.functional.avg_pool2d(masks.float(), 4)        # (12, 3, 6, 6)
    result = localisation(coarse, images, masks)
    assert result.maps.shape == (12, 3, 24, 24) and result.concept_parts.tolist() == [0, 1, 2]
    planted = PlantedExplanation(masks.float(), [3, 2, 1], images=images)
    localisation(planted, images, masks, kind="coefficient")
    localisation(planted, images * 0.99, masks)  # other images, still pixels
    # not a ClassConcepts: its concept_maps is given the images even when they are its own
    assert planted.calls == [("new", "coefficient"), ("new", "auto")]


@pytest.mark.parametrize("args, error, match", [
    ((np.zeros((2, 1, 8, 8)), None, np.zeros((3, 1, 8, 8), bool)), ValueError, "3 images"),
    ((np.zeros((2, 8, 8)), None, np.zeros((2, 1, 8, 8), bool)), ValueError, r"\(N, k, H, W\)"),
    ((np.full((2, 1, 8, 8), np.nan), None, np.zeros((2, 1, 8, 8), bool)), ValueError, "NaN"),
    (("maps", torch.zeros(2, 3, 8, 8), np.zeros((2, 1, 8, 8), bool)), TypeError, "concept_maps"),
])
def test_bad_inputs(args, error, match):
    with pytest.raises(error, match=match):
        localisation(*args)


def test_bad_options():
    maps, masks = np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 8), bool)
    with pytest.raises(ValueError, match="quantile"):
        localisation(maps, None, masks, quantile=1.5)
    with pytest.raises(ValueError, match="tolerance"):
        localisation(maps, None, masks, tolerance=-1)
    with pytest.raises(ValueError, match="part_names"):
        localisation(maps, None, masks, ["a", "b"])
