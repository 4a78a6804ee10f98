"""reliance(): drops of a planted linear colour model against their closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _evaluate_planted import (
    BACKGROUND,
    PART_NAMES,
    ColourMeanNet,
    closed_logits,
    painted,
    planted_images,
    softmax_prob,
)
from scipy import ndimage, stats

from conceptkit.evaluate import Reliance, gaussian_blur, reliance


@pytest.fixture(scope="module")
def world():
    images, masks = planted_images(12, seed=0)
    return ColourMeanNet(), images, masks


def closed_drops(images, masks, class_id, fill):
    """Per image and part the (probability, logit) drops, NaN where the part is absent."""
    x = images.double().numpy()
    m = masks.numpy()
    base = closed_logits(x)
    drop_p = np.full(m.shape[:2], np.nan)
    drop_l = np.full(m.shape[:2], np.nan)
    for p in range(m.shape[1]):
        rows = m[:, p].any((1, 2))
        logits = closed_logits(painted(x[rows], m[rows, p], fill[rows] if fill.shape[0] > 1 else fill))
        drop_l[rows, p] = base[rows, class_id] - logits[:, class_id]
        drop_p[rows, p] = softmax_prob(base[rows], class_id) - softmax_prob(logits, class_id)
    return drop_p, drop_l


@pytest.mark.parametrize("fill", ["zero", "median", "mean"])
@pytest.mark.parametrize("class_id", [0, 1])
def test_drops_match_closed_form(world, fill, class_id):
    model, images, masks = world
    x = images.double().numpy()
    colour = {"zero": np.zeros((1, 3, 1, 1)),
              "median": np.full((1, 3, 1, 1), BACKGROUND),  # parts cover < half of each image
              "mean": x.mean(axis=(0, 2, 3)).reshape(1, 3, 1, 1)}[fill]
    result = reliance(model, images, masks, class_id, fill, part_names=PART_NAMES, progress=False)
    drop_p, drop_l = closed_drops(images, masks, class_id, colour)
    assert isinstance(result, Reliance) and result.fill == fill
    np.testing.assert_array_equal(np.isnan(result.per_image), ~masks.flatten(2).any(-1).numpy())
    np.testing.assert_allclose(result.per_image_logit, drop_l, atol=2e-6, equal_nan=True)
    np.testing.assert_allclose(result.per_image, drop_p, atol=2e-6, equal_nan=True)
    present = ~np.isnan(drop_p)
    np.testing.assert_allclose(result.mean, np.nanmean(drop_p, 0), atol=2e-6)
    np.testing.assert_allclose(result.expected, np.where(present, drop_p, 0).mean(0), atol=2e-6)
    np.testing.assert_allclose(result.mean_logit, np.nanmean(drop_l, 0), atol=2e-6)
    np.testing.assert_allclose(result.base_logit, closed_logits(x)[:, class_id], atol=2e-6)


def test_ranking_follows_the_planted_weights(world):
    model, images, masks = world
    zero = reliance(model, images, masks, 0, "zero", part_names=PART_NAMES, progress=False)
    # class 0 weighs red 3, green 1, blue 0: blue's pixels are (0, 0, 1), so zeroing them is free
    assert list(zero.ranking()) == [0, 1, 2] and zero.most_relied() == 0
    np.testing.assert_allclose(zero.expected_logit[2], 0.0, atol=1e-7)
    assert zero.name(0) == "red square" and zero.name(-1) == "background"
    other = reliance(model, images, masks, 1, "zero", progress=False)
    assert other.most_relied() == 2 and other.part_names is None


def test_callable_and_blur_fills(world):
    model, images, masks = world
    half = reliance(model, images, masks, 0, lambda x: torch.full_like(x, 0.5), progress=False)
    _, drop_l = closed_drops(images, masks, 0, np.full((1, 3, 1, 1), 0.5))
    np.testing.assert_allclose(half.per_image_logit, drop_l, atol=2e-6, equal_nan=True)
    blurred = gaussian_blur(images.double(), 2.0).numpy()
    blur = reliance(model, images, masks, 0, "blur", blur_sigma=2.0, progress=False)
    _, drop_l = closed_drops(images, masks, 0, blurred)
    np.testing.assert_allclose(blur.per_image_logit, drop_l, atol=2e-6, equal_nan=True)
    assert blur.fill == "blur (sigma 2 px)"


def test_gaussian_blur_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 20, 17))
    # torch's "reflect" padding is scipy's "mirror"; both kernels reach ceil(3 sigma) = 6 px
    ours = gaussian_blur(torch.from_numpy(x), 2.0).numpy()
    ref = ndimage.gaussian_filter(x, sigma=(0, 0, 2.0, 2.0), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_model_left_as_found(world, snapshot):
    model, images, masks = world
    model.train()
    model.fc.weight.requires_grad_(False)
    before = snapshot(model)
    reliance(model, images, masks, 0, progress=False)
    assert snapshot(model) == before
    model.eval()
    model.fc.weight.requires_grad_(True)


def test_to_dict_and_repr(world):
    model, images, masks = world
    result = reliance(model, images, masks, 0, "zero", part_names=PART_NAMES, progress=False)
    out = result.to_dict()
    assert out["part_names"] == list(PART_NAMES) and out["n_present"] == list(result.n_present)
    assert "red square" in repr(result)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"masks": torch.zeros(12, 24, 24, dtype=torch.bool)}, ValueError, "part axis"),
    ({"masks": torch.zeros(11, 3, 24, 24, dtype=torch.bool)}, ValueError, "11 images"),
    ({"masks": torch.zeros(12, 3, 12, 12, dtype=torch.bool)}, ValueError, "image size"),
    ({"masks": torch.full((12, 3, 24, 24), 0.5)}, ValueError, "only 0 and 1"),
    ({"masks": [[0]]}, TypeError, "masks"),
    ({"fill": "noise"}, ValueError, "`fill` must be one of"),
    ({"class_id": 5}, ValueError, "2 outputs"),
    ({"class_id": -1}, ValueError, "class_id"),
    ({"model": "net"}, TypeError, "torch.nn.Module"),
    ({"part_names": ["a"]}, ValueError, "part_names"),
    ({"fill": lambda x: x[:, :1]}, ValueError, "shape of its input"),
    ({"blur_sigma": 0.0, "fill": "blur"}, ValueError, "blur_sigma"),
    ({"device": "cuda:0"} if torch.cuda.is_available() else {"device": "gpu"}, ValueError, "device"),
])
def test_bad_inputs(world, kwargs, error, match):
    model, images, masks = world
    args = {"model": model, "images": images, "masks": masks, "class_id": 0, "progress": False}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        reliance(**args)


def planted_reliance(per_image: np.ndarray) -> Reliance:
    """A Reliance whose per-image probability drops are given (NaN: part absent)."""
    present = ~np.isnan(per_image)
    n = per_image.shape[0]
    expected = np.where(present, per_image, 0.0).mean(0)
    mean = np.array([per_image[present[:, p], p].mean() if present[:, p].any() else np.nan
                     for p in range(per_image.shape[1])])
    return Reliance(per_image=per_image, mean=mean, expected=expected,
                    per_image_logit=per_image, mean_logit=mean, expected_logit=expected,
                    base_probability=np.ones(n), base_logit=np.zeros(n), present=present,
                    class_id=0, fill="median", part_names=("a", "b", "c", "d"))


def test_most_relied_parts_separate_only_what_the_images_can(world):
    model, images, masks = world
    # planted weights: red 3, green 1 for class 0, so red is relied on more in every image
    zero = reliance(model, images, masks, 0, "zero", part_names=PART_NAMES, progress=False)
    assert list(zero.most_relied_parts()) == [0]
    rng = np.random.default_rng(0)
    a = 0.5 + 0.05 * rng.standard_normal(40)
    drops = np.stack([a, a - 0.01 + 0.05 * rng.standard_normal(40),  # b: a near tie with a
                      a - 0.3 + 0.01 * rng.standard_normal(40),      # c: clearly less
                      np.where(np.arange(40) < 20, a, np.nan)], 1)   # d: absent half the time
    result = planted_reliance(drops)
    most = result.most_relied()
    expect = [most]
    for part in result.ranking()[1:]:  # the decision against scipy's paired interval
        diff = np.nan_to_num(drops[:, most]) - np.nan_to_num(drops[:, part])
        low, _ = stats.t.interval(0.95, diff.size - 1, loc=diff.mean(), scale=stats.sem(diff))
        if low <= 0:
            expect.append(int(part))
    assert set(expect) == {0, 1}  # the planted near tie ties, the others do not (d counts 0 when absent)
    assert list(result.most_relied_parts()) == expect
    assert list(result.most_relied_parts(confidence=1e-6)) == [most]  # ~no interval: the maximum
    for limit in (0.0, 1.0):  # no interval / an infinite one: refused, not a degenerate answer
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            result.most_relied_parts(confidence=limit)
    single = planted_reliance(drops[:1])
    # one image, no interval: only an equal drop ties (d shows a's drop in image 0)
    assert drops[0, 0] == drops[0, 3] and drops[0, 1] != drops[0, 0]
    assert sorted(single.most_relied_parts()) == [0, 3]
    with pytest.raises(ValueError, match="confidence"):
        result.most_relied_parts(confidence=1.5)


def test_relies_on_a_part_only_when_the_largest_drop_is_told_from_zero():
    rng = np.random.default_rng(1)
    noise = 0.01 * rng.standard_normal((30, 3))
    clear = planted_reliance(noise + np.array([0.4, 0.1, 0.0]))
    assert clear.most_relied() == 0 and clear.relies_on_a_part()
    # noise-level drops around 0 (a class told by either of two parts): the largest is noise
    none = planted_reliance(noise)
    low, high = stats.t.interval(0.95, 29, loc=noise.mean(0), scale=stats.sem(noise, axis=0))
    most = none.most_relied()
    assert low[most] <= 0 <= high[most]  # scipy agrees the largest mean drop is not told from 0
    assert not none.relies_on_a_part()
    # a drop told from 0 that is negative is not reliance either
    assert not planted_reliance(noise - 0.3).relies_on_a_part()
    # no part shown at all
    assert not planted_reliance(np.full((5, 2), np.nan)).relies_on_a_part()
    with pytest.raises(ValueError, match="confidence"):
        clear.relies_on_a_part(confidence=2.0)


def test_a_blur_fill_is_recorded_so_that_it_reads_back_exactly(world):
    # the deletion curves paint with the fill a Reliance recorded in words: six significant
    # digits read back another sigma (1/3 became 0.333333), a blur unlike the reliance's
    from conceptkit.evaluate._fill import Fill

    _, images, _ = world
    for sigma, words in ((2.0, "blur (sigma 2 px)"), (1 / 3, f"blur (sigma {1 / 3!r} px)")):
        fill = Fill("blur", images, sigma)
        assert fill.describe() == words
        assert Fill.parse(fill.describe()) == ("blur", sigma)
    assert Fill.parse("median") == ("median", None) and Fill.parse("my_fill") is None
