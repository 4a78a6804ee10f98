"""Fourth review of conceptkit.evaluate: a callable fill known by the object (not its name),
constant maps that stay constant through resizing, a clear error for maps without the image or
concept axis, a note that names the parts a class measurably relies on, and the docs."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conceptkit.evaluate import (
    class_row,
    default_tolerance,
    faithfulness,
    localisation,
    reliance,
)
from conceptkit.maps import upsample

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


# ---------------------------------------------------------------- 1. a callable fill's identity
class GreenNet(nn.Module):
    """Logits ``[0, 4 (mean green − 0.5)]``: painting green up raises class 1, down lowers it."""

    def forward(self, x):
        green = x[:, 1].mean((1, 2))
        return torch.stack([torch.zeros_like(green), 4 * (green - 0.5)], 1)


class MaskExplanation:
    """One concept whose maps are the part's masks."""

    class_id = 1
    importances = np.array([1.0])

    def __init__(self, masks):
        self.masks = masks

    def concept_maps(self, images, kind="auto"):
        return self.masks.float()


@pytest.fixture(scope="module")
def grey():
    images = torch.full((4, 3, 16, 16), 0.5)
    masks = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    masks[:, 0, :8] = True  # half of every image
    return GreenNet(), images, masks


def zeros_fill(x):
    return torch.zeros_like(x)


def constant_fill(x, value):
    return torch.full_like(x, value)


# p(class 1) of the untouched grey images, and after the top half is painted 0 (green mean 0.25)
BASE = 0.5
PAINTED_ZERO = float(torch.sigmoid(torch.tensor(-1.0)))


def test_another_lambda_than_the_reliance_was_measured_with_is_refused(grey):
    """Every lambda is named "<lambda>": before, a second lambda (painting 1s, which *raises*
    the score) passed as the fill of a reliance measured with a first (painting 0s), and the
    deletion curves then painted with the second."""
    model, images, masks = grey
    rel = reliance(model, images, masks, 1, fill=lambda x: torch.zeros_like(x), progress=False)
    assert rel.fill == "<lambda>"
    assert rel.expected[0] == pytest.approx(BASE - PAINTED_ZERO, abs=1e-6)
    with pytest.raises(ValueError, match=r"`fill` is another callable than the one `reliance` "
                                         r"was measured with \(both are named '<lambda>'\)"):
        faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel,
                     fill=lambda x: torch.ones_like(x), progress=False)


def test_another_partial_is_refused_and_the_same_object_passes(grey):
    model, images, masks = grey
    painter = functools.partial(constant_fill, value=0.0)
    rel = reliance(model, images, masks, 1, fill=painter, progress=False)
    assert rel.fill == "partial"
    with pytest.raises(ValueError, match="both are named 'partial'"):
        faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel,
                     fill=functools.partial(constant_fill, value=1.0), progress=False)
    # the very object the reliance was measured with: accepted, and the curves paint with it
    same = faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel,
                        fill=painter, progress=False)
    np.testing.assert_allclose(same.deletion.part_curve, [BASE, PAINTED_ZERO], atol=1e-6)
    np.testing.assert_allclose(same.deletion.concept_curve, [BASE, PAINTED_ZERO], atol=1e-6)
    # left out: the reliance's own callable is used
    default = faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel,
                           progress=False)
    np.testing.assert_allclose(default.deletion.part_curve, [BASE, PAINTED_ZERO], atol=1e-6)


def test_a_bound_method_read_twice_is_the_same_fill(grey):
    """``obj.method`` is a new object each time it is read; it is still the same fill."""
    model, images, masks = grey

    class Painter:
        def fill(self, x):
            return torch.zeros_like(x)

    painter = Painter()
    rel = reliance(model, images, masks, 1, fill=painter.fill, progress=False)
    result = faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel,
                          fill=painter.fill, progress=False)
    np.testing.assert_allclose(result.deletion.part_curve, [BASE, PAINTED_ZERO], atol=1e-6)
    with pytest.raises(ValueError, match="both are named 'fill'"):
        faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel,
                     fill=Painter().fill, progress=False)


def test_a_function_named_like_a_builtin_fill_is_not_that_fill(grey):
    """A function named "median" describes itself as "median", as the built-in fill does."""
    model, images, masks = grey

    def median(x):
        return torch.zeros_like(x)

    rel = reliance(model, images, masks, 1, fill="median", progress=False)
    with pytest.raises(ValueError, match=r"`fill` is another callable than the one `reliance` "
                                         r"was measured with \(both are named 'median'\)"):
        faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel, fill=median,
                     progress=False)
    rel_own = reliance(model, images, masks, 1, fill=median, progress=False)
    with pytest.raises(ValueError, match="both are named 'median'"):
        faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel_own,
                     fill="median", progress=False)


def test_builtin_fills_are_still_compared_by_their_setting(grey):
    model, images, masks = grey
    rel = reliance(model, images, masks, 1, fill="blur", blur_sigma=2.0, progress=False)
    ok = faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel, fill="blur",
                      blur_sigma=2.0, progress=False)
    assert ok.reliance is rel
    with pytest.raises(ValueError, match=r"`fill` \('blur \(sigma 3 px\)'\) differs from the "
                                         r"fill `reliance` was measured with"):
        faithfulness(MaskExplanation(masks), model, images, masks, reliance=rel, fill="blur",
                     blur_sigma=3.0, progress=False)


# ------------------------------------------------------------ 2. constant maps stay constant
def old_resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The resizing of ``checked_maps`` before this review (area shrink, bilinear enlarge)."""
    maps = maps.float()
    if maps.shape[-2] > size[0] or maps.shape[-1] > size[1]:
        maps = F.adaptive_avg_pool2d(maps, (min(maps.shape[-2], size[0]),
                                            min(maps.shape[-1], size[1])))
    return upsample(maps, size)


def test_float32_resizing_rounds_a_constant_map():
    """The premise: the old resize makes a constant 0.7 map non-constant by float32 rounding."""
    up = old_resize(torch.full((1, 1, 8, 8), 0.7), (64, 64))
    assert up.max() > up.min()


def test_a_constant_map_points_nowhere_after_resizing():
    """The reviewer's case: a part drawn around the pixel where rounding put the maximum was a
    pointing-game hit (1.0) and the AUC 0.492; documented: 0 and 0.5."""
    maps = torch.full((1, 1, 8, 8), 0.7)
    y, x = divmod(int(old_resize(maps, (64, 64))[0, 0].argmax()), 64)
    masks = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    masks[0, 0, max(0, y - 2):y + 3, max(0, x - 2):x + 3] = True
    loc = localisation(maps, None, masks, tolerance=0, min_images=1)
    assert loc.pointing_game[0, 0] == 0.0
    assert loc.auc[0, 0] == 0.5
    assert torch.equal(loc.maps[0, 0], torch.full((64, 64), 0.7))
    # relevance mass of a constant positive map: the part's share of the image
    assert loc.relevance_mass[0, 0] == pytest.approx(float(masks.float().mean()))


@pytest.mark.parametrize("shape", [(7, 7), (100, 30), (64, 64), (1, 1)])
def test_constant_maps_of_every_size_stay_exactly_constant(shape):
    value = 1 / 3
    masks = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    masks[:, 0, 20:30, 20:30] = True
    loc = localisation(torch.full((2, 1, *shape), value), None, masks, min_images=1)
    assert torch.unique(loc.maps).tolist() == [torch.tensor(value).item()]
    assert loc.pointing_game[0, 0] == 0.0
    assert loc.auc[0, 0] == 0.5


def test_non_constant_maps_are_scored_exactly_as_before():
    """Only constant maps changed: every other map is resized bit for bit as before, and its
    scores equal those of the old resize's maps."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 2, 64, 64, dtype=torch.bool)
    masks[:, 0, 20:30, 20:30] = True
    masks[:2, 1, 40:52, 5:30] = True
    for shape in ((8, 8), (100, 30), (64, 64), (256, 256)):
        maps = torch.rand(3, 3, *shape, generator=g) - 0.3
        maps[1, 2] = 0.25  # one constant map among them
        loc = localisation(maps, None, masks, min_images=1)
        before = old_resize(maps, (64, 64))
        varying = torch.ones(3, 3, dtype=torch.bool)
        varying[1, 2] = False
        assert torch.equal(loc.maps[varying], before[varying])
        old = localisation(before, None, masks, min_images=1)  # already at the masks' size
        for metric in ("pointing_game", "relevance_mass", "iou", "auc"):
            new_values, old_values = loc.per_image[metric], old.per_image[metric]
            keep = varying.numpy()[:, :, None].repeat(2, 2)
            np.testing.assert_array_equal(new_values[keep], old_values[keep])
        assert torch.equal(loc.maps[1, 2], torch.full((64, 64), 0.25))


# ------------------------------------------------------------------ 3. maps of the wrong rank
def test_three_d_maps_name_the_argument_and_the_shape():
    """Before: "`masks` has 4 images but `result` (the concept maps) has 2"."""
    masks = torch.zeros(4, 2, 16, 16, dtype=torch.bool)
    masks[:, 0, :4, :4] = True
    with pytest.raises(ValueError) as caught:
        localisation(masks.float()[0], None, masks)
    message = str(caught.value)
    assert message.startswith("`result` must be concept maps of shape (N, k, H, W) (one map "
                              "per image and concept); got torch.Tensor of shape (2, 16, 16)")
    assert "result[:, None]" in message and "result[None]" in message
    assert "`masks` has" not in message
    with pytest.raises(ValueError, match=r"got numpy array of shape \(16, 16\).*"
                                         r"result\[None, None\]"):
        localisation(masks.float()[0, 0].numpy(), None, masks)


def test_docs_give_the_default_tolerance_the_code_uses():
    assert default_tolerance(8) == 1 and default_tolerance(64) == 4
    text = DOCS.read_text()
    assert "max(1, round(side / 16))" in text
    assert "Default tolerance: `round(side / 16)`" not in text


# ------------------------------------------- 5. a note that names the parts relied on
class RedRegionNet(nn.Module):
    """``logit_1 = 10 · mean red in rows/cols 2:8``, ``logit_0 = 0`` (the reviewer's t_rel)."""

    def __init__(self):
        super().__init__()
        region = torch.zeros(16, 16)
        region[2:8, 2:8] = 1.0
        self.register_buffer("region", region)

    def forward(self, x):
        red = (x[:, 0] * self.region).sum((1, 2)) / self.region.sum()
        return torch.stack([torch.zeros_like(red), 10 * red], 1)


@pytest.fixture(scope="module")
def uneven():
    """Part 2 (all of the region) has the largest mean drop but is absent from image 0, so
    these 4 images cannot tell it from 0; part 0 (half of it) drops steadily in every image."""
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(4, 3, 16, 16, dtype=torch.bool)
    masks[:, 0, 2:5, 2:8] = True
    masks[:, 1, 10:14, 10:14] = True
    masks[1:, 2, 2:8, 2:8] = True
    model = RedRegionNet()
    rel = reliance(model, images, masks, 1, fill="zero", progress=False)
    return model, images, masks, rel


def test_the_decision_reads_only_the_largest_mean_drop(uneven):
    """Kept as it was (the yardstick of BENCHMARKS.md)."""
    rel = uneven[3]
    assert rel.most_relied() == 2
    assert rel.significant().tolist() == [True, False, False]
    assert rel.relies_on_a_part() is False


def test_the_note_names_the_significant_part_and_asks_for_more_images(uneven):
    rel = uneven[3]
    assert rel.unrelied_note() == (
        f"the part with the largest mean probability drop, part 2 ({rel.expected[2]:+.3g}), "
        f"cannot be told from 0 in these 4 images, but part 0 ({rel.expected[0]:+.3g}) can be "
        f"(95% interval): the model does rely on that part, whose drop is smaller but "
        f"steadier; more images would tell whether part 2's drop differs from 0.")
    assert f"{rel.expected[2]:+.3g}" == "+0.369" and f"{rel.expected[0]:+.3g}" == "+0.0875"
    assert "relies on no single part" not in rel.unrelied_note()
    assert "mean logit drop, part 2 (+3.67)" in rel.unrelied_note("logit")


def test_class_row_carries_the_note(uneven):
    model, images, masks, rel = uneven
    explanation = SimpleNamespace(class_id=1, importances=np.array([1.0, 0.5, 0.2]),
                                  concept_maps=lambda images, kind="auto": masks.float())
    result = faithfulness(explanation, model, images, masks, ["half", "outside", "whole"],
                          reliance=rel, deletion=False, progress=False)
    row = class_row(result, 1, "red")
    assert row["most_relied_significant"] is False  # the decision, unchanged
    assert row["spearman"] is None  # and the columns it leaves undefined
    assert row["most_relied_note"].startswith(
        "the part with the largest mean probability drop, part 2 (+0.369), cannot be told from 0 "
        "in these 4 images, but part 0 (+0.0875) can be")


def test_the_note_when_no_part_is_relied_on_and_when_one_is(grey):
    model, images, masks = grey
    # painting the grey half grey changes nothing: no drop anywhere
    rel = reliance(model, images, masks, 1, fill=lambda x: x, progress=False)
    assert rel.relies_on_a_part() is False
    assert rel.unrelied_note() == (
        "no part's painting-out lowers the class score on average: the part with the largest "
        "mean probability drop, part 0 (+0), is not a drop, and no other part's drop can be "
        "told to lie above 0: the model relies on no single part these images show (a class "
        "told by either of two parts, or by the absence of others), or these images are too "
        "few to tell; more images would say which.")
    one = reliance(model, images[:1], masks[:1], 1, fill="zero", progress=False)
    assert one.unrelied_note() == (
        f"the part with the largest mean probability drop, part 0 ({one.expected[0]:+.3g}), "
        f"cannot be told from 0 with one image (one image has no spread): evaluate more images "
        f"of the class.")
    # a steady drop in every image: relied on, no note
    noisy = images + 0.1 * torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    relied = reliance(model, noisy, masks, 1, fill="zero", progress=False)
    assert relied.relies_on_a_part() is True and relied.unrelied_note() is None
