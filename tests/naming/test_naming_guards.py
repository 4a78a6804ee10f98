"""Guards found by the second review of naming: a rare small part cannot name a background
concept, ties at the dissection threshold are off (M = a > T), a concept whose activation is
constant over the probe stays unnamed with a note, and bad arguments are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import conceptkit
from conceptkit.datasets import load_world
from conceptkit.naming import (
    ConceptNames,
    cos_cubed,
    iou_table,
    name_by_clip,
    name_by_masks,
    soft_wpmi,
)
from conceptkit.naming._probe import ConceptSource

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def shapes():
    """The reviewer's setup: class 0 (red disk + blue square) of the shapes world, 6 concepts."""
    world = load_world("shapes")
    probe = world.sample(30, seed=0)
    model = world.model()
    cc = conceptkit.ConceptExplainer(model, "block3", 6, seed=0, progress=False,
                                     importance="gradient_input").fit(
        probe.images[probe.labels == 0], 0)
    return cc, probe


def _by_hand(cc, probe, quantile):
    """Binary maps a > T over the class-0 probe images (T: a share `quantile` strictly above)."""
    rows = probe.labels == 0
    maps = cc.concept_maps(probe.images[rows], kind="coefficient").double()
    masks = probe.masks[rows].bool()
    on = torch.zeros(maps.shape, dtype=torch.bool)
    for j in range(maps.shape[1]):
        values = np.sort(maps[:, j].reshape(-1).numpy())[::-1]
        n_on = int(round(quantile * values.size))
        on[:, j] = maps[:, j] > float(values[n_on])
    return on, masks


def test_a_part_seen_in_one_probe_image_names_no_concept(shapes):
    """Before: concept 4 was named "yellow ring" (IoU 0.044) although 3104 of its 3384 top pixels
    lay on no part and the ring is in 1 of the 30 class-0 probe images."""
    cc, probe = shapes
    rows = probe.labels == 0
    masks = probe.masks[rows].bool()
    shown = masks.flatten(2).any(-1).sum(0).numpy()
    ring = list(probe.concept_names).index("yellow ring")
    assert shown[ring] == 1
    names = name_by_masks(cc, probe)
    assert names[4].name is None
    # no concept takes the name of a part shown in fewer than 3 probe images, nor a runner-up
    rare = {probe.concept_names[g] for g in np.flatnonzero((shown > 0) & (shown < 3))}
    assert "yellow ring" in rare
    assert not rare & {e.name for e in names}
    assert not rare & {n for e in names for n, _ in e.runner_ups}
    assert names.params["min_images"] == 3
    assert any("yellow ring (1)" in note for note in names.notes)
    # the automatic quantile is the mean pixel share of the parts that may name a concept
    allowed = (shown >= 3) & (masks.flatten(2).float().mean(-1).amin(0).numpy() < 0.99)
    cover = masks.flatten(2).float().mean(dim=(0, 2)).numpy()
    assert names.params["quantile"] == pytest.approx(float(cover[allowed].mean()))
    # the causal parts still name the concepts that found them (as before the fix)
    assert [e.name for e in names][:4] == ["red disk", "blue square", "red disk", "red disk"]
    assert names[5].name == "blue square"
    # part_share: the share of the concept's top pixels on the named part, by hand
    on, masks = _by_hand(cc, probe, names.params["quantile"])
    for e in names:
        if e.name is None:
            continue
        g = list(probe.concept_names).index(e.name)
        share = float((on[:, e.concept] & masks[:, g]).sum() / on[:, e.concept].sum())
        assert e.part_share == pytest.approx(share)
        inter = float((on[:, e.concept] & masks[:, g]).sum())
        union = float((on[:, e.concept] | masks[:, g]).sum())
        assert e.score == pytest.approx(inter / union)
    # names resting on less than a quarter of the top pixels are said to
    small = [e for e in names if e.name is not None and e.part_share < 0.25]
    assert small, [e.part_share for e in names]
    for e in small:
        assert any(note.startswith(f"concept {e.concept} ({e.name!r}") and "of its top pixels"
                   in note for note in names.notes)
    assert "note: concept" in repr(names) and "on part" in repr(names)
    back = ConceptNames.from_dict(names.to_dict())
    assert back.notes == names.notes
    assert [e.part_share for e in back] == pytest.approx([e.part_share for e in names],
                                                           nan_ok=True)


def test_min_images_is_checked_and_a_probe_without_frequent_parts_is_refused(shapes):
    cc, probe = shapes
    with pytest.raises(ValueError, match=r"`min_images`=31 of the 30 probe images.*lower "
                                         r"`min_images`"):
        name_by_masks(cc, probe, min_images=31)
    with pytest.raises(ValueError, match="min_images"):
        name_by_masks(cc, probe, min_images=0)
    # min_images=1 lets the ring back into the quantile and the names: its IoU is read again
    loose = name_by_masks(cc, probe, min_images=1)
    assert loose.params["quantile"] < name_by_masks(cc, probe).params["quantile"]


def test_a_constant_map_names_nothing_even_without_min_score(shapes, monkeypatch):
    """Concept 2's maps set to 0 on every probe pixel: no pixel is a top pixel. Before, with
    min_score=None, it was named after the first part at IoU 0."""
    cc, probe = shapes
    real = ConceptSource.maps
    unpatched = name_by_masks(cc, probe, min_score=None)

    def flat_concept_2(self, images, kind="coefficient"):
        maps = real(self, images, kind).clone()
        maps[:, 2] = 0.0
        return maps

    monkeypatch.setattr(ConceptSource, "maps", flat_concept_2)
    names = name_by_masks(cc, probe, min_score=None)
    assert names[2].name is None and np.isnan(names[2].score) and names[2].runner_ups == ()
    assert ("concept 2 stays unnamed: its map is constant over the probe images, so no pixel "
            "stands out.") in names.notes
    assert [e.name for e in names if e.concept != 2] == \
        [e.name for e in unpatched if e.concept != 2]


def test_ties_at_the_threshold_are_off():
    """M = a > T: with maps 0 on most pixels the threshold is 0 and only the positive pixels
    are on (before, every pixel was on and the row was left at 0)."""
    masks = torch.zeros(4, 2, 16, 16, dtype=torch.bool)
    masks[:, 0, :8, :8] = True
    masks[:, 1, 8:, 8:] = True
    maps = torch.zeros(4, 1, 16, 16)
    maps[:, 0, :4, :4] = 1.0
    np.testing.assert_allclose(iou_table(maps, masks, 0.25), [[0.25, 0.0]])
    # one slightly negative pixel: before, 1023 pixels were on and both parts scored ~0.25
    maps[0, 0, 15, 15] = -1e-6
    np.testing.assert_allclose(iou_table(maps, masks, 0.25), [[0.25, 0.0]])


def test_iou_table_names_bad_arguments():
    maps = torch.rand(3, 2, 8, 8)
    masks = torch.zeros(3, 2, 8, 8, dtype=torch.bool)
    masks[:, 0, :4] = True
    with pytest.raises(ValueError, match=r"`masks` \(4, 2, 8, 8\) must have the N, H and W of "
                                         r"`maps`"):
        iou_table(maps, masks.repeat(2, 1, 1, 1)[:4], 0.1)
    with pytest.raises(ValueError, match="`masks` must be bool"):
        iou_table(maps, masks.float() * 0.5, 0.1)
    with pytest.raises(ValueError, match="`maps` hold NaN"):
        iou_table(torch.full_like(maps, float("nan")), masks, 0.1)
    with pytest.raises(ValueError, match=r"`maps` must be a real tensor of concept maps"):
        iou_table(maps[0], masks, 0.1)
    # 0/1 float masks are masks
    np.testing.assert_allclose(iou_table(maps, masks.float(), 0.5), iou_table(maps, masks, 0.5))


def test_naming_arguments_are_checked(shapes):
    cc, probe = shapes
    with pytest.raises(TypeError, match="`class_images_only` must be True, False or None"):
        name_by_masks(cc, probe, class_images_only="no")
    with pytest.raises(ValueError, match="kind='coefficient'") as err:
        name_by_masks(cc, probe, kind="provenance")
    assert "images=None" not in str(err.value)


class _SameClip:
    """A CLIP stand-in: every image embeds to the same vector, words to distinct ones."""

    def encode_image(self, images):
        return torch.ones(images.shape[0], 4)

    def encode_text(self, texts):
        return torch.eye(4)[: len(texts)] + 0.1


def test_a_concept_with_constant_activations_stays_unnamed(shapes):
    """Six copies of one image: every concept's activation is the same on all of them, so no
    image is among its "top" images. Before, soft-WPMI took the first images and named every
    concept (the same word for all, at a finite score)."""
    cc, probe = shapes
    same = probe.images[:1].repeat(6, 1, 1, 1)
    for similarity in ("soft_wpmi", "cos3"):
        names = name_by_clip(cc, same, _SameClip(), vocabulary=["disk", "square", "ring"],
                             patch_size=None, similarity=similarity)
        assert [e.name for e in names] == [None] * 6
        assert all(np.isnan(e.score) and e.runner_ups == () for e in names)
        assert len(names.notes) == 6
        assert names.notes[0].startswith("concept 0 stays unnamed: its activation is the same")
        assert "on all 6 probe images" in names.notes[0]


def test_soft_wpmi_and_cos_cubed_check_their_arguments():
    torch.manual_seed(0)
    sims, acts = torch.randn(30, 5) * 0.1, torch.rand(30, 3)
    for kwargs, match in ((dict(p_start=2.0), "`p_start` must be <= 1.0"),
                          (dict(p_end=-1.0), "`p_end` must be >= 0.0"),
                          (dict(min_prob=-1.0), "`min_prob` must be > 0.0")):
        with pytest.raises(ValueError, match=match):
            soft_wpmi(sims, acts, **kwargs)
    bad = acts.clone()
    bad[5, 1] = float("nan")
    for score in (soft_wpmi, cos_cubed):
        with pytest.raises(ValueError, match="`activations` holds NaN"):
            score(sims, bad)
        with pytest.raises(ValueError, match="`clip_sims` has 30 rows and `activations` 10"):
            score(sims, acts[:10])
    assert torch.isfinite(soft_wpmi(sims, acts, p_start=1.0, p_end=0.0)).all()
