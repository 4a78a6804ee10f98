"""Found by the third review of naming: blank class names, soft-WPMI's top set of inactive
inputs, settings of ``name_by_clip`` that cannot apply, no bar while the vocabulary is encoded,
``min_score``, a head with NaN weights, and errors that named the wrong argument."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from _shared import FakeClip, two_block_cnn
from torch import nn

import conceptkit
from conceptkit.bottleneck import ClipEncoders
from conceptkit.extraction import crops as crop_set
from conceptkit.naming import (
    name_by_classes,
    name_by_clip,
    name_by_masks,
    soft_wpmi,
    visualize_concept,
)

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

WORDS = ["cat", "dog", "car", "tree", "sky", "road"]


@pytest.fixture(scope="module")
def fitted():
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cc = conceptkit.ConceptExplainer(two_block_cnn(), "block2", 4, seed=0, progress=False,
                                     importance="gradient_input").fit(images, 0)
    probe = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return cc, probe


# ---------------------------------------------------------------- 2: blank class names
@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_blank_class_names_are_refused_before_they_name_a_concept(fitted, blank):
    """A blank name was given to concepts, saved, and the file then failed to load."""
    cc, _ = fitted
    with pytest.raises(ValueError, match=r"`class_names` has empty or blank names at outputs \[3\]"):
        name_by_classes(cc, class_names=["a", "b", "c", blank])


def test_class_names_equal_but_for_spaces_are_one_name(fitted):
    cc, _ = fitted
    with pytest.raises(ValueError, match=r"`class_names` names \['a'\] more than once"):
        name_by_classes(cc, class_names=["a", "b", "c", "a "])


def test_named_explanation_with_real_class_names_saves_and_loads(fitted, tmp_path):
    cc, _ = fitted
    names = name_by_classes(cc, class_names=["zero", "one", "two", "three"], min_score=None)
    assert all(e.name in {"one", "two", "three"} for e in names)  # the own class left out
    cc.names = names
    back = conceptkit.load(cc.save(tmp_path / "cc.safetensors"))
    assert [e.name for e in back.names] == [e.name for e in names]
    cc.names = None


# ---------------------------------------------------------------- 3: soft-WPMI's top set
def _one_fire(n: int = 40):
    """Concept 0 fires on input 7 only (0 elsewhere), where word A shows; concept 1 on all;
    word B shows on four inputs where concept 0 is inactive."""
    sims = torch.full((n, 3), 0.2, dtype=torch.float64)
    sims[7, 0] = 0.9
    sims[:, 1] = 0.2 + 0.05 * torch.rand(n, generator=torch.Generator().manual_seed(0))
    sims[[37, 27, 36, 38], 1] = 0.9
    acts = torch.zeros(n, 2, dtype=torch.float64)
    acts[7, 0] = 1.0
    acts[:, 1] = torch.rand(n, generator=torch.Generator().manual_seed(1))
    return sims, acts


@pytest.mark.parametrize("prior", ["probe", "concepts"])
def test_soft_wpmi_scores_a_concept_on_the_inputs_where_it_is_active_in_any_order(prior):
    """The top 5 of a concept active on one input of 40 held four inactive ones, picked by
    the probe's order: it was named B (where B showed) or A depending on the order."""
    sims, acts = _one_fire()
    tables = []
    for seed in (0, 1, 2):
        order = torch.randperm(len(sims), generator=torch.Generator().manual_seed(seed))
        tables.append(soft_wpmi(sims[order], acts[order], prior=prior))
    for table in tables[1:]:
        torch.testing.assert_close(table, tables[0])
    assert int(tables[0][0].argmax()) == 0  # word A, shown where the concept fires
    # concept 0 is scored on its one active input: as with top_k=1 (same rank probability)
    alone = soft_wpmi(sims, acts, top_k=1, prior=prior)
    if prior == "probe":  # the prior does not depend on the other concepts
        torch.testing.assert_close(tables[0][0], alone[0])


def test_soft_wpmi_gives_no_score_to_a_concept_active_nowhere():
    sims, acts = _one_fire()
    acts[:, 0] = 0.3
    table = soft_wpmi(sims, acts)
    assert torch.isnan(table[0]).all() and torch.isfinite(table[1]).all()


def test_a_single_input_at_a_positive_minimum_stays_in_the_top_set():
    """On a probe no larger than top_k every input enters the top set: the one at a concept's
    lowest positive activation is active, not dropped for being last (0 or a lowest value
    several inputs share is the floor of an inactive concept)."""
    from conceptkit.naming._clip import active_inputs, top_inputs

    acts = torch.tensor([[0.4, 0.0, 0.2], [0.9, 0.0, 0.2], [0.5, 0.7, 0.6], [0.6, 0.0, 0.8]],
                        dtype=torch.float64)
    active = active_inputs(acts)
    assert active[:, 0].all()                                 # a unique positive minimum
    assert active[:, 1].tolist() == [False, False, True, False]  # ReLU zeros
    assert active[:, 2].tolist() == [False, False, True, True]   # a shared lowest value
    _, sizes = top_inputs(acts, 5)
    assert sizes.tolist() == [4, 1, 2]
    # the scores of concept 0 then equal those of the reference rule (every input in the set)
    sims = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probs = torch.softmax(10.0 * sims, dim=1)
    order = torch.argsort(acts[:, 0], descending=True)
    in_set = torch.linspace(0.998, 0.97, 5, dtype=torch.float64)[:4]
    expected = torch.log(1 + in_set[:, None] * (probs[order] - 1) + 1e-7).sum(0)
    got = soft_wpmi(sims, acts, top_k=4, lam=0.0)
    torch.testing.assert_close(got[0], expected)


def test_name_by_clip_names_a_rarely_active_concept_alike_in_any_probe_order(fitted,
                                                                            monkeypatch):
    """Concept 0 fires on the probe image of brightest corner only: scored on that image in
    every order of the probe, with a note that says so."""
    from conceptkit.naming._probe import ConceptSource

    def summaries(self, images, summary="mean", maps=None, kind="coefficient"):
        corner = images[:, 0, 0, 0].double()
        out = images.double().mean((2, 3))[:, :1].repeat(1, self.n_concepts) + \
            torch.arange(self.n_concepts, dtype=torch.float64) * images.double().std((1, 2, 3))[:, None]
        out[:, 0] = (corner == corner.max()).double()
        return out.numpy()

    monkeypatch.setattr(ConceptSource, "summaries", summaries)
    cc, probe = fitted
    results = []
    for seed in (0, 1, 2):
        order = torch.randperm(len(probe), generator=torch.Generator().manual_seed(seed))
        names = name_by_clip(cc, probe[order], FakeClip(), vocabulary=WORDS, patch_size=None,
                             top_k=5)
        results.append(names)
        notes = [n for n in names.notes if "fewer than top_k" in n]
        assert notes == ["concept 0 is active (not at its floor: 0 or below, or a lowest value "
                         "several share) on only 1 of the 20 probe images, fewer than top_k=5: "
                         "soft-WPMI scored it on those 1, and its name rests on them."]
    for other in results[1:]:  # the same names and scores (up to float summation order)
        assert [e.name for e in other] == [e.name for e in results[0]]
        assert [[n for n, _ in e.runner_ups] for e in other] == \
            [[n for n, _ in e.runner_ups] for e in results[0]]
        np.testing.assert_allclose([e.score for e in other], [e.score for e in results[0]],
                                   rtol=1e-9)


# ---------------------------------------------------------------- 4: settings that cannot apply
@pytest.mark.parametrize("kwargs, argument", [
    ({"patch_size": 16, "summary": "max"}, "summary"),
    ({"patch_size": 16, "crop_activation": "resized", "kind": "pixel"}, "kind"),
    ({"patch_size": None, "stride": 5}, "stride"),
    ({"patch_size": None, "crop_activation": "resized"}, "crop_activation"),
    ({"patch_size": None, "crop_activation": "map"}, "crop_activation"),
])
def test_name_by_clip_refuses_a_setting_it_would_ignore(fitted, kwargs, argument):
    cc, probe = fitted
    with pytest.raises(ValueError, match=rf"^`{argument}` .*: .*leave `{argument}` out"):
        name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS, **kwargs)


@pytest.mark.parametrize("kwargs", [{"kind": "nonsense"},
                                    {"kind": "nonsense", "patch_size": 16,
                                     "crop_activation": "resized"}])
def test_name_by_clip_checks_kind_always(fitted, kwargs):
    cc, probe = fitted
    with pytest.raises(ValueError, match="`kind` must be one of"):
        name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS, **kwargs)


def test_name_by_clip_records_only_the_settings_that_ran(fitted):
    cc, probe = fitted
    crops = name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS, patch_size=16)
    assert crops.params["summary"] is None and crops.params["crop_activation"] == "map"
    assert crops.params["stride"] == crop_set(probe, 16).stride  # the default stride, as used
    assert crops.params["kind"] == "coefficient"
    resized = name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS, patch_size=16,
                           crop_activation="resized")
    assert resized.params["kind"] is None and resized.params["crop_activation"] == "resized"
    whole = name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS, patch_size=None,
                         summary="max")
    assert whole.params["summary"] == "max" and whole.params["crop_activation"] is None
    assert whole.params["stride"] is None


# ---------------------------------------------------------------- 5: a bar over the vocabulary
@pytest.mark.parametrize("progress", [True, False])
def test_the_vocabulary_is_encoded_under_a_bar(fitted, progress):
    cc, probe = fitted
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        name_by_clip(cc, probe, FakeClip(), vocabulary=[f"w{i}" for i in range(150)],
                     progress=progress)
    assert ("CLIP texts" in err.getvalue()) is progress


# ---------------------------------------------------------------- 6: min_score
@pytest.mark.parametrize("value, error, message", [
    ("0.5", TypeError, "`min_score` must be a number"),
    (float("nan"), ValueError, "`min_score` must be finite"),
    (float("inf"), ValueError, "`min_score` must be finite")])
def test_name_by_clip_checks_min_score(fitted, value, error, message):
    cc, probe = fitted
    with pytest.raises(error, match=message):
        name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS, min_score=value)


def test_name_by_clip_min_score_leaves_low_scores_unnamed(fitted):
    cc, probe = fitted
    names = name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS)
    cut = float(np.nanmedian([e.score for e in names]))
    again = name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS, min_score=cut)
    assert [e.name for e in again] == [e.name if e.score > cut else None for e in names]


# ---------------------------------------------------------------- 7: a head with NaN weights
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_head_with_non_finite_weights_is_named_in_the_error(bad):
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = two_block_cnn()
    cc = conceptkit.ConceptExplainer(model, "block2", 3, seed=0, progress=False,
                                     importance="gradient_input").fit(images, 0)
    with torch.no_grad():
        model.fc.weight[1, 0] = bad
    with pytest.raises(ValueError, match=r"logit gains of concepts \[.*\] hold NaN or infinite.*"
                                         r"Check the model's weights"):
        name_by_classes(cc)


# ---------------------------------------------------------------- 8: errors that name the argument
@pytest.mark.parametrize("template, error, message", [
    ("{} {}", ValueError, "exactly once"), ("{{}}", ValueError, "exactly once"),
    ("photo", ValueError, "exactly once"), ("a {", ValueError, "not a valid format string"),
    ("{0}", ValueError, "exactly once"), (3, TypeError, "`template` must be a str")])
def test_a_bad_template_is_named(fitted, template, error, message):
    cc, probe = fitted
    with pytest.raises(error, match=message):
        name_by_clip(cc, probe, FakeClip(), vocabulary=WORDS, template=template)
    with pytest.raises(error, match=message):
        ClipEncoders.wrap(FakeClip()).text_embeddings(WORDS, template=template)


def test_a_good_template_is_used_once_per_word():
    clip = FakeClip()
    ClipEncoders.wrap(clip).text_embeddings(["cat", "dog"], template="a photo of a {}")
    assert list(clip.words) == ["a photo of a cat", "a photo of a dog"]


def test_a_probe_outside_zero_one_is_named_probe(fitted):
    cc, probe = fitted
    for kwargs in ({}, {"patch_size": 16}):
        with pytest.raises(ValueError, match=r"^`probe` must hold pixel colours in \[0, 1\]"):
            name_by_clip(cc, probe * 3, FakeClip(), vocabulary=WORDS, **kwargs)


def test_maco_on_a_one_channel_model_says_why():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("block1", nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(8, 2))
    gray = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    cc = conceptkit.ConceptExplainer(model, "block1", 3, seed=0, progress=False,
                                     importance="gradient_input").fit(gray, 0)
    with pytest.raises(ValueError, match="MACO draws RGB images .* `model` takes 1-channel"):
        visualize_concept(model, cc.bank, 0, gray, steps=2, progress=False)


def test_part_names_equal_but_for_spaces_are_one_name(fitted):
    cc, probe = fitted
    masks = torch.zeros(20, 2, 32, 32, dtype=torch.bool)
    masks[:, 0, :8, :8] = True
    masks[:, 1, 8:, 8:] = True
    with pytest.raises(ValueError, match=r"names \['a'\] more than once \(spaces around"):
        name_by_masks(cc, (probe, masks, ["a", "a "]))
