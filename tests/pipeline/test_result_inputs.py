"""The explanation result's maps and exemplars take what the docs say, check what they are
given, and never serve a cached answer after their inputs changed in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import conceptkit
from conceptkit.datasets import load_world
from conceptkit.maps import mask_iou, pixel_maps, pointing_game


@pytest.fixture(scope="module")
def world():
    shapes = load_world("shapes")
    data = shapes.sample(n_per_class=6, seed=0, split="test")
    return shapes, data.images[data.labels == 0][:6]


def _fit(world, method="ice", k=4):
    shapes, images = world
    model = shapes.model()
    explainer = conceptkit.ConceptExplainer(model, shapes.layer, n_concepts=k, seed=0,
                                            method=method, progress=False)
    return model, explainer.fit(images.clone(), 0)


def test_ace_exemplars_of_segments_of_different_sizes_stack(world):
    _, result = _fit(world, method="ace")
    examples, ids = result.top_examples(0, 5)
    assert examples.shape[0] == len(ids) >= 2 and examples.shape[-1] == examples.shape[-2]
    notes = result.notes()
    if result.n_concepts < 4:  # ACE's outlier rule dropped clusters: the result says so
        assert any(n.startswith(f"ACE kept {result.n_concepts} of the 4 clusters") for n in notes)


def test_image_size_is_an_int_or_a_pair_and_is_checked(world):
    _, result = _fit(world)
    for kind in ("coefficient", "dominant", "pixel"):
        assert result.concept_maps(kind=kind, image_size=32).shape[-2:] == (32, 32)
        assert result.concept_maps(kind=kind, image_size=(16, 24)).shape[-2:] == (16, 24)
        for bad in (0, -4, (0, 0), 2.5, "64", True):
            with pytest.raises((ValueError, TypeError), match="image_size"):
                result.concept_maps(kind=kind, image_size=bad)
    assert result.top_examples(0, 2, image_size=(20, 20))[0].shape[-2:] == (20, 20)
    for bad in (0, -3, True, (20, 30)):
        with pytest.raises((ValueError, TypeError), match="image_size"):
            result.top_examples(0, 2, image_size=bad)


def test_a_loaded_result_honours_image_size(world, tmp_path):
    _, result = _fit(world)
    loaded = conceptkit.load(result.save(tmp_path / "r.safetensors", n_images=2))
    assert loaded.concept_maps(image_size=32).shape == (2, result.n_concepts, 32, 32)


def test_images_of_another_channel_count_or_too_small_are_refused_clearly(world):
    _, result = _fit(world)
    images = world[1]
    with pytest.raises(ValueError, match="images"):
        result.concept_maps(images[:2, :1], kind="pixel")
    with pytest.raises(ValueError, match="(?i)small|size"):
        result.concept_maps(torch.rand(2, 3, 7, 7), kind="gradient")


def test_maps_are_recomputed_after_in_place_changes(world):
    model, result = _fit(world)
    before = result.concept_maps(kind="pixel")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # the same model object, other weights
    after = result.concept_maps(kind="pixel")
    torch.testing.assert_close(after, pixel_maps(model, result.images, result.bank))
    assert not torch.allclose(after, before)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    result.images.mul_(0.5)  # the fitted images, edited in place
    torch.testing.assert_close(result.concept_maps(kind="pixel"),
                               pixel_maps(model, result.images, result.bank))
    model.block1[0].weight.data.mul_(-1.0)  # through `.data`: no version counter sees it
    torch.testing.assert_close(result.concept_maps(kind="pixel"),
                               pixel_maps(model, result.images, result.bank))


def test_codes_and_maps_follow_the_factorizers_settings(world):
    _, result = _fit(world)
    before = result.concept_maps(kind="coefficient").clone()
    result.bank.factorizer.set_params(alpha_W=50.0, l1_ratio=1.0)  # other codes, same objects
    codes = torch.as_tensor(result.bank.encode(result.activations))
    torch.testing.assert_close(result._class_codes(), codes)
    assert not torch.allclose(result.concept_maps(kind="coefficient"), before)


def test_metrics_and_trust_follow_a_replaced_bank(world):
    _, first = _fit(world)
    _, other = _fit(world, k=3)
    metrics = first.compute_metrics()
    first.bank, first.importance, first.activations = other.bank, other.importance, \
        other.activations
    assert first.compute_metrics() is not metrics


def test_iou_of_a_signed_map_counts_positive_values_only():
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2:6, 2:6] = True
    maps = masks.astype(np.float64)
    assert mask_iou(maps, masks)[0] == 1.0
    maps[0, 0, 0] = -1e-3  # one negative pixel no longer turns every zero pixel on
    assert mask_iou(maps, masks)[0] == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(maps, masks, tolerance=-1)
    assert pointing_game(maps, masks, tolerance=10**6)[0] == 1.0  # capped, not 3.6 TiB
    with pytest.raises(ValueError, match="N = 0"):
        pointing_game(np.zeros((0, 8, 8)), np.zeros((0, 8, 8), bool))


def test_map_settings_are_checked_by_name(world):
    model, result = _fit(world)
    images = world[1][:2]
    maps = pixel_maps(model, images, result.bank, sigma=np.float32(2.0))
    torch.testing.assert_close(maps, pixel_maps(model, images, result.bank, sigma=2.0))
    for bad in (float("inf"), 0, True):
        with pytest.raises((ValueError, TypeError), match="sigma"):
            pixel_maps(model, images, result.bank, sigma=bad)
    with pytest.raises(TypeError, match="bank"):
        pixel_maps(model, images, None)
    assert result.concept_label(result.labels[1]) == result.labels[1]
