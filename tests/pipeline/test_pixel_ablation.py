"""Pixel-space concept importance: the class-probability drop when a concept's region is painted
out with the image's median colour, checked by hand on a model whose output is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit import ConceptExplainer
from conceptkit._torchutils import median_colour as median_fill
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.pipeline._pixel import (
    concept_regions,
    grow_to_segments,
    pixel_ablation,
    superpixels,
)


class RedVsBlue(nn.Module):
    """Logits (mean red - mean blue, mean blue - mean red, 0): a red part raises class 0."""

    def forward(self, x):
        red, blue = x[:, 0].mean((1, 2)), x[:, 2].mean((1, 2))
        return torch.stack([red - blue, blue - red, torch.zeros_like(red)], dim=1) * 20


def images_with_parts(n=6, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = 0.4 + 0.02 * torch.rand(n, 3, size, size, generator=gen)
    images[:, 0, 2:6, 2:6] = 1.0                    # a red square, top left
    images[:, 2, 10:14, 10:14] = 1.0                # a blue square, bottom right
    maps = torch.zeros(n, 3, size, size)
    maps[:, 0, 2:6, 2:6] = 1.0                      # concept 0 on the red square
    maps[:, 1, 10:14, 10:14] = 1.0                  # concept 1 on the blue square
    maps[:, 2] = -1.0                               # concept 2 negative everywhere: no region
    maps[: n // 2, 0] *= 2.0                        # stronger in the first half of the images
    return images, maps


def test_regions_are_the_top_quantile_of_each_concept_over_all_images():
    _, maps = images_with_parts()
    regions = concept_regions(maps, 0.9)
    # Concept 0 takes values 0, 1 and 2 over the images; its 90th percentile is 1, so the whole
    # square counts in every image. Concept 2 is never positive: never a region.
    assert regions[:, 0].sum() == 6 * 16 and regions[:, 1].sum() == 6 * 16
    assert not regions[:, 2].any()
    higher = concept_regions(maps, 0.995)
    assert higher[:3, 0].sum() == 3 * 16 and not higher[3:, 0].any()


def test_probability_drop_by_hand():
    images, maps = images_with_parts()
    model = RedVsBlue()
    result = pixel_ablation(model, images, maps, 0, progress=False, batch_size=4, quantile=0.9)
    fill = median_fill(images)
    expected = np.zeros((6, 3))
    with torch.no_grad():
        base = torch.softmax(model(images), 1)[:, 0]
        for j, (rows, cols) in enumerate([(slice(2, 6), slice(2, 6)), (slice(10, 14), slice(10, 14))]):
            painted = images.clone()
            painted[:, :, rows, cols] = fill.expand_as(images)[:, :, rows, cols]
            expected[:, j] = (base - torch.softmax(model(painted), 1)[:, 0]).numpy()
    np.testing.assert_allclose(result.per_input, expected, rtol=1e-5, atol=1e-7)
    assert result.importances[0] > 0 > result.importances[1] and result.importances[2] == 0
    assert result.method == "pixel_ablation" and result.params["quantile"] == 0.9
    # concept 2 has no region anywhere: its 0 is recorded and said, not passed off as measured
    from conceptkit.pipeline._notes import importance_notes

    assert result.params["no_region"] == [2]
    said = importance_notes(result, lambda c: f"concept {c}", 6)
    assert any(n.startswith("concept 2 has no region in any of these 6 images") for n in said)
    assert not any("no region" in n for n in importance_notes(
        pixel_ablation(model, images, maps[:, :2], 0, progress=False), str, 6))
    assert np.all(result.ci_low <= result.importances) and np.all(result.importances <= result.ci_high)


def test_the_default_averages_the_drops_of_four_region_sizes():
    """Default regions: the top 10 %, 7.5 %, 5 % and 2.5 % of each concept's map values, and the
    mean of the four drops. Concept 0 covers 6.25 % of the pixels, twice as strong in the first
    three images (3.125 %): its top 2.5 % is the square of those three images only, so the last
    three images keep their square at one size of four and score 3/4 of its drop."""
    images, maps = images_with_parts()
    model = RedVsBlue()
    result = pixel_ablation(model, images, maps, 0, progress=False)
    assert result.params["quantile"] == [0.9, 0.925, 0.95, 0.975]
    full = pixel_ablation(model, images, maps, 0, progress=False, quantile=0.9).per_input[:, 0]
    np.testing.assert_allclose(result.per_input[:3, 0], full[:3], rtol=1e-9)
    np.testing.assert_allclose(result.per_input[3:, 0], 0.75 * full[3:], rtol=1e-9)
    singles = [pixel_ablation(model, images, maps, 0, progress=False, quantile=q).per_input
               for q in (0.9, 0.925, 0.95, 0.975)]
    np.testing.assert_allclose(result.per_input, np.mean(singles, axis=0), rtol=1e-9, atol=1e-12)
    as_array = pixel_ablation(model, images, maps, 0, progress=False,
                              quantile=np.array([0.9, 0.925, 0.95, 0.975]))
    np.testing.assert_array_equal(as_array.per_input, result.per_input)
    # given thresholds: one row per region size
    rows = np.array([[0.5, 0.5, 0.5]] * 3 + [[5.0, 0.5, 0.5]])
    given = pixel_ablation(model, images, maps, 0, progress=False, thresholds=rows)
    np.testing.assert_allclose(given.per_input[:, 0], 0.75 * full, rtol=1e-9)
    with pytest.raises(ValueError, match=r"`thresholds` must hold one row of 3 values"):
        pixel_ablation(model, images, maps, 0, progress=False, thresholds=[0.5, 0.5, 0.5])
    for bad in ([], [0.9, 1.5], "high"):
        with pytest.raises((ValueError, TypeError), match="quantile"):
            pixel_ablation(model, images, maps, 0, progress=False, quantile=bad)


def test_logit_drop_and_given_thresholds_by_hand():
    """``score="logit"``: the drop of the class logit itself (here linear in the mean red minus
    mean blue). ``thresholds``: one cut per concept replaces the quantile over these images — a
    cut above every value of concept 0 leaves it no region and an importance of exactly 0."""
    images, maps = images_with_parts()
    model = RedVsBlue()
    result = pixel_ablation(model, images, maps, 0, progress=False, score="logit", quantile=0.9)
    fill = median_fill(images)
    painted = images.clone()
    painted[:, :, 2:6, 2:6] = fill.expand_as(images)[:, :, 2:6, 2:6]
    with torch.no_grad():
        expected = (model(images)[:, 0] - model(painted)[:, 0]).double().numpy()
    np.testing.assert_allclose(result.per_input[:, 0], expected, rtol=1e-5, atol=1e-6)
    assert result.params["score"] == "logit"
    cut = pixel_ablation(model, images, maps, 0, progress=False, thresholds=[5.0, 0.5, 0.5],
                         quantile=0.9)
    assert np.all(cut.per_input[:, 0] == 0) and np.all(cut.per_input[:, 1] != 0)
    with pytest.raises(ValueError, match="thresholds"):
        pixel_ablation(model, images, maps, 0, progress=False, thresholds=[1.0, 1.0],
                       quantile=0.9)
    with pytest.raises(ValueError, match="score"):
        pixel_ablation(model, images, maps, 0, progress=False, score="margin")


def test_nothing_to_paint_is_an_error_not_zeros():
    images, maps = images_with_parts()
    with pytest.raises(ValueError, match="no concept map is positive"):
        pixel_ablation(RedVsBlue(), images, -maps.abs() - 1, 0, progress=False)
    with pytest.raises(ValueError, match="must be"):
        pixel_ablation(RedVsBlue(), images, maps[:, :, :8], 0, progress=False)


def test_images_and_maps_are_checked_before_any_region_or_superpixel():
    images, maps = images_with_parts()
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    for n_segments in (None, 50):  # NaN importances without superpixels, scikit-image's error with
        with pytest.raises(ValueError, match="`images` contains NaN"):
            pixel_ablation(RedVsBlue(), bad, maps, 0, n_segments=n_segments, progress=False)
    with pytest.raises(ValueError, match="`images` must hold pixel colours in \\[0, 1\\]"):
        pixel_ablation(RedVsBlue(), images * 255, maps, 0, progress=False)
    # a NaN in one map made that concept's quantile NaN: an empty region read as "absent", 0
    nan_map = maps.clone()
    nan_map[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`maps` contains NaN"):
        pixel_ablation(RedVsBlue(), images, nan_map, 0, progress=False)
    # numpy arrays are taken as tensors are
    result = pixel_ablation(RedVsBlue(), images.numpy(), maps.numpy(), 0, n_segments=None,
                            progress=False)
    assert result.importances[0] > 0


def test_given_thresholds_above_every_value_are_a_measurement_not_an_error():
    """The atlas paints regions cut at a whole dataset's quantiles: a chunk of images in which
    no concept reaches its cut is measured as 'not in these images' (zeros, every concept in
    ``no_region``), not refused; maps nowhere positive are refused with or without thresholds."""
    images, maps = images_with_parts()
    result = pixel_ablation(RedVsBlue(), images, maps, 0, progress=False,
                            thresholds=[9.0, 9.0, 9.0], quantile=0.9)
    assert np.all(result.per_input == 0)
    assert result.params["no_region"] == [0, 1, 2]
    with pytest.raises(ValueError, match="no concept map is positive"):
        pixel_ablation(RedVsBlue(), images, -maps.abs() - 1, 0, progress=False,
                       thresholds=[-9.0, -9.0, -9.0], quantile=0.9)


def test_explainer_with_pixel_ablation_on_the_reference_cnn():
    data = make_concept_dataset(6, seed=0)
    rows = np.flatnonzero(data.labels.numpy() == 0)
    model = reference_model().train()
    result = ConceptExplainer(model, "block4", n_concepts=4, method="ice",
                              importance="pixel_ablation", seed=0, progress=False).fit(
        data.images[rows], 0)
    assert model.training
    assert result.importance.method == "pixel_ablation"
    assert result.importance.params["maps"] == "pixel"   # the default maps
    assert result.importance.params["n_segments"] == 50  # grown on a convolutional layer
    assert result.importance.per_input.shape == (len(rows), 4)
    assert np.all(np.isfinite(result.importances)) and np.abs(result.importances).max() > 0.01
    with pytest.raises(TypeError, match="quantile"):
        ConceptExplainer(model, "block4", n_concepts=4, method="ice", importance="pixel_ablation",
                         importance_kwargs={"n_designs": 4}, progress=False).fit(
            data.images[rows], 0)


def test_explainer_paints_the_regions_of_the_map_kind_asked_for():
    data = make_concept_dataset(6, seed=0)
    rows = np.flatnonzero(data.labels.numpy() == 0)
    model = reference_model()
    result = ConceptExplainer(model, "block4", n_concepts=4, method="ice", seed=0,
                              importance_kwargs={"kind": "coefficient"}, progress=False).fit(
        data.images[rows], 0)
    assert result.importance.params["maps"] == "coefficient"
    by_hand = pixel_ablation(model, data.images[rows], result.concept_maps(kind="coefficient"),
                             0, progress=False)
    np.testing.assert_allclose(result.importances, by_hand.importances, rtol=1e-6, atol=1e-9)
    pixel = result.concept_maps(kind="pixel")
    other = pixel_ablation(model, data.images[rows], pixel, 0, progress=False)
    assert not np.allclose(other.importances, by_hand.importances)   # the kind mattered
    with pytest.raises(ValueError, match="kind"):
        ConceptExplainer(model, "block4", n_concepts=4, method="ice", seed=0,
                         importance_kwargs={"kind": "heat"}, progress=False).fit(
            data.images[rows], 0)


def test_a_region_grows_to_the_superpixels_it_covers_at_least_half_of():
    """By hand on planted labels: segment 0 (the left half, 8 pixels) is covered 5/8 and joins;
    segment 1 (the right half) 3/8 and does not, so only its 3 pixels stay; a concept covering
    exactly half of a segment takes it; an empty region stays empty."""
    labels = torch.tensor([[0, 0, 1, 1]] * 4)[None]
    regions = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    regions[0, 0, :, 0] = True                       # 4 pixels of segment 0
    regions[0, 0, 0, 1] = True                       # a fifth
    regions[0, 0, 1:4, 2] = True                     # 3 pixels of segment 1
    regions[0, 1, :2, 2:] = True                     # exactly half of segment 1
    grown = grow_to_segments(regions, labels)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, :2] = True
    expected[1:4, 2] = True
    assert torch.equal(grown[0, 0], expected)
    assert torch.equal(grown[0, 1], labels[0] == 1)
    assert not grown[0, 2].any()
    assert torch.equal(regions[0, 0].sum(), torch.tensor(8))     # the input is left as it was


def disk_images(n=4, size=32, seed=0):
    """Grey noisy images with a red disk; a map that covers the disk's left 60 %."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.02 * torch.rand(n, 3, size, size, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = ((yy - 12) ** 2 + (xx - 14) ** 2) <= 25
    for channel, value in enumerate((1.0, 0.1, 0.1)):
        images[:, channel][:, disk] = value
    maps = torch.zeros(n, 1, size, size)
    maps[:, 0][:, disk & (xx <= 14)] = 1.0
    return images, maps, disk


def test_superpixels_are_scikit_images_slic_with_aces_settings():
    from skimage.segmentation import slic

    images, _, _ = disk_images()
    labels = superpixels(images, 8)
    for image, mine in zip(images, labels):
        theirs = slic(image.permute(1, 2, 0).double().numpy(), n_segments=8, compactness=20.0,
                      sigma=1.0, start_label=0, channel_axis=-1)
        np.testing.assert_array_equal(mine.numpy(), theirs)
    grey = superpixels(images[:, :1], 8)                   # one channel: read as grey levels
    assert grey.shape == (4, 32, 32) and int(grey.min()) == 0


def test_the_default_paints_each_region_grown_to_its_superpixels_by_hand():
    """The default (``n_segments=50``) paints the map's region joined by the SLIC superpixels
    it covers at least half of; ``n_segments=None`` the map's region alone. Both drops by hand,
    with scikit-image's SLIC as the reference segmentation: on these images the grown region
    takes more of the red disk, so the class loses more."""
    from skimage.segmentation import slic

    images, maps, disk = disk_images()
    model = RedVsBlue()
    fill = median_fill(images)

    def drop(region):
        painted = torch.where(region[:, None], fill, images)
        with torch.no_grad():
            return (torch.softmax(model(images), 1)[:, 0]
                    - torch.softmax(model(painted), 1)[:, 0]).double().numpy()

    raw = maps[:, 0] > 0
    alone = pixel_ablation(model, images, maps, 0, progress=False, quantile=0.9, n_segments=None)
    np.testing.assert_allclose(alone.per_input[:, 0], drop(raw), rtol=1e-6, atol=1e-9)
    assert alone.params["n_segments"] is None

    grown = torch.zeros_like(raw)
    for i, image in enumerate(images):
        labels = slic(image.permute(1, 2, 0).double().numpy(), n_segments=50, compactness=20.0,
                      sigma=1.0, start_label=0, channel_axis=-1)
        for label in np.unique(labels):
            segment = torch.as_tensor(labels == label)
            if (raw[i] & segment).sum() >= 0.5 * segment.sum():
                grown[i] |= segment
        grown[i] |= raw[i]
    assert bool((grown & disk & ~raw).any())               # it did grow, on the disk
    result = pixel_ablation(model, images, maps, 0, progress=False, quantile=0.9)
    assert result.params["n_segments"] == 50
    np.testing.assert_allclose(result.per_input[:, 0], drop(grown), rtol=1e-6, atol=1e-9)
    assert np.all(result.per_input[:, 0] > alone.per_input[:, 0])
    for bad in (1, 2.5, "50"):
        with pytest.raises((ValueError, TypeError), match="n_segments"):
            pixel_ablation(model, images, maps, 0, progress=False, n_segments=bad)


@pytest.mark.parametrize("options, error, match", [
    ({"n_segments": 0}, ValueError, r"importance_kwargs\['n_segments'\]: `n_segments` must be >= 2"),
    ({"quantile": 1.5}, ValueError, r"importance_kwargs\['quantile'\]"),
    ({"confidence": 2}, ValueError, r"importance_kwargs\['confidence'\]"),
    ({"score": "odds"}, ValueError, r"importance_kwargs\['score'\]"),
    ({"kind": "grad"}, ValueError, r"importance_kwargs\['kind'\]"),
    ({"n_designs": 8}, TypeError, r"unexpected importance_kwargs \['n_designs'\]"),
])
def test_pixel_options_are_refused_when_given_not_after_discovery(options, error, match):
    from conceptkit import ConceptAtlas

    with pytest.raises(error, match=match):
        ConceptExplainer(reference_model(), "block4", importance="pixel_ablation",
                         importance_kwargs=options)
    if "kind" not in options:  # the atlas takes the same options but for the map kind
        with pytest.raises(error, match=match):
            ConceptAtlas(reference_model(), "block4", 3, importance="pixel_ablation",
                         importance_kwargs=options)
    # the public function checks its confidence too (a level of 2 gave NaN intervals)
    images, maps = images_with_parts()
    with pytest.raises(ValueError, match="`confidence` must be < 1"):
        pixel_ablation(RedVsBlue(), images, maps, 0, confidence=1.0, progress=False)


@pytest.mark.parametrize("argument, value, error, message", [
    ("class_id", -1, ValueError, "`class_id` must be >= 0"),
    ("class_id", True, TypeError, "`class_id` must be an integer"),
    ("class_id", 1.0, TypeError, "`class_id` must be an integer"),
    ("class_id", "1", TypeError, "`class_id` must be an integer"),
    ("batch_size", 0, ValueError, "`batch_size` must be >= 1"),
    ("batch_size", -1, ValueError, "`batch_size` must be >= 1"),
    ("batch_size", 2.5, TypeError, "`batch_size` must be an integer"),
])
def test_pixel_ablation_names_a_bad_class_id_or_batch_size(argument, value, error, message):
    """-1 scored the last class silently; the others failed deep in numpy, torch or range()."""
    images, maps = images_with_parts()
    kwargs = {"class_id": 0, "batch_size": 4, argument: value}
    class_id = kwargs.pop("class_id")
    with pytest.raises(error, match=message):
        pixel_ablation(RedVsBlue(), images, maps, class_id, progress=False, n_segments=None,
                       **kwargs)
