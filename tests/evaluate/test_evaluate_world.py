"""evaluate(): the table of a planted world with planted explanations, the world and data forms it
accepts, and one end-to-end run on the shapes world."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _evaluate_planted import (
    PART_NAMES,
    ColourMeanNet,
    PlantedExplanation,
    planted_images,
    planted_maps,
)

from conceptkit.evaluate import METRIC_COLUMNS, Evaluation, evaluate, faithfulness
from conceptkit.evaluate import reliance as evaluate_reliance


class PlantedWorld:
    """A World-like object: ``sample(n_per_class, seed=, split=)`` and ``model()``."""

    def __init__(self):
        self.calls = []

    def sample(self, n_per_class, seed=0, split="test"):
        self.calls.append((n_per_class, seed, split))
        images, masks = planted_images(2 * n_per_class, seed=seed)
        return SimpleNamespace(images=images, masks=masks,
                               labels=torch.arange(2 * n_per_class) % 2,
                               concept_names=list(PART_NAMES), class_names=["warm", "cool"],
                               class_concepts=[[0, 1], [2, 1]])

    def model(self):
        return ColourMeanNet()


def planted_explanations(data, importances):
    """Per class, concepts on red, green, blue and the empty bottom-right quarter."""
    out = {}
    for class_id, values in importances.items():
        rows = data.labels.numpy() == class_id
        out[class_id] = PlantedExplanation(planted_maps(data.masks[rows]), values, class_id)
    return out


# Class logits with the median fill: class 0 ("warm", 3R + G) relies on red > green > 0 > blue;
# class 1 (G + 2B) on blue > green > 0 > red. (In probability green lowers class 0: painting it
# out costs class 1 more.) These importances follow class 0's order, and rank class 1's parts
# 1 (red), 3, 4, 2 where its reliance ranks them 4, 2, 1, 3: Spearman -0.8, Kendall -2/3.
FAITHFUL = {0: [0.9, 0.5, 0.1, 0.3]}
BOTH = {0: [0.9, 0.5, 0.1, 0.3], 1: [0.9, 0.5, 0.1, 0.3]}


def test_planted_world_table():
    world = PlantedWorld()
    data = world.sample(8, seed=3, split="val")
    result = evaluate(planted_explanations(data, BOTH), world, n_per_class=8, seed=3,
                      split="val", measure="logit", progress=False)
    assert world.calls[-1] == (8, 3, "val")
    assert isinstance(result, Evaluation) and len(result.rows) == 2
    warm, cool = result.table
    assert (warm["class_name"], warm["most_relied_part"], warm["top_part"]) == (
        "warm", "red square", "red square")
    assert warm["top_on_most_relied"] and warm["top_on_causal"]
    for column in ("top_pointing", "relied_pointing", "relied_relevance_mass", "relied_iou",
                   "relied_auc", "causal_pointing", "spearman", "kendall", "part_spearman",
                   "part_kendall"):
        assert warm[column] == pytest.approx(1.0), column
    # class 1 relies most on blue, but its top concept sits on red (not even a causal part)
    assert (cool["most_relied_part"], cool["top_part"]) == ("blue square", "red square")
    assert not cool["top_on_most_relied"] and not cool["top_on_causal"]
    # the planted reliances are far apart: no part ties with the most relied-on one
    assert warm["most_relied_parts"] == ["red square"] and warm["top_on_most_relied_parts"]
    assert cool["most_relied_parts"] == ["blue square"] and not cool["top_on_most_relied_parts"]
    assert cool["top_pointing_parts"] == cool["top_pointing"] == 0.0
    assert warm["top_pointing_parts"] == pytest.approx(1.0)
    assert cool["top_pointing"] == 0.0 and cool["relied_pointing"] == pytest.approx(1.0)
    assert warm["top_reliance_ratio"] == pytest.approx(1.0)
    logit = result.details[1].reliance.expected_logit          # red < 0 < blue for class 1
    assert cool["top_reliance_ratio"] == pytest.approx(logit[0] / logit[2])
    assert cool["top_reliance_ratio"] < 0
    assert cool["spearman"] == pytest.approx(-0.8) and cool["kendall"] == pytest.approx(-2 / 3)
    assert result.summary["top_on_most_relied"] == 0.5
    assert result.summary["spearman"] == pytest.approx(0.1)
    assert result.worst["spearman"] == pytest.approx(-0.8)
    assert result.worst["deletion_area"] == max(r["deletion_area"] for r in result.rows)
    assert result.details[1].deletion.area_between == pytest.approx(cool["deletion_area"])
    assert set(METRIC_COLUMNS) <= set(warm)
    text = json.dumps(result.to_dict())
    assert '"most_relied_part": "blue square"' in text
    markdown = result.to_markdown()
    assert markdown.count("\n") == 1 + 2 + 2 and "| 1 cool | blue square (" in markdown
    assert "spearman=0.100" in repr(result)


def test_a_class_with_too_few_images_to_place_a_concept_is_undetermined_not_a_miss():
    world = PlantedWorld()
    data = world.sample(8, seed=3, split="val")        # 8 images per class: no part in 9 of them
    result = evaluate(planted_explanations(data, BOTH), world, n_per_class=8, seed=3,
                      split="val", measure="logit", min_images=9, progress=False)
    for row in result.rows:
        assert row["top_part"] == "undetermined"
        for column in ("top_on_most_relied", "top_on_most_relied_parts", "top_on_causal",
                       "top_reliance_ratio"):
            assert row[column] is None, column
        assert row["top_pointing"] is not None       # the pointing game itself is still measured
    assert result.summary["top_on_most_relied"] is None   # left out, not averaged as 0
    assert "enough images" in result.details[0].notes[0]
    # with enough images the same explanations are placed (the planted table above)
    placed = evaluate(planted_explanations(world.sample(8, seed=3, split="val"), BOTH), world,
                      n_per_class=8, seed=3, split="val", measure="logit", progress=False)
    assert placed.rows[0]["top_part"] == "red square"


def test_model_and_data_pair_and_dict_data():
    world = PlantedWorld()
    data = world.sample(8)
    explanation = planted_explanations(data, FAITHFUL)[0]
    as_dict = {"images": data.images, "labels": data.labels.numpy(), "masks": data.masks,
               "part_names": PART_NAMES}
    result = evaluate(explanation, (ColourMeanNet(), as_dict), measure="logit", deletion=False,
                      progress=False)
    row = result.table[0]
    assert row["class_name"] == "class 0" and row["top_on_causal"] is None
    assert row["causal_pointing"] is None and row["deletion_area"] is None
    assert row["spearman"] == pytest.approx(1.0)
    assert result.summary["top_on_causal"] is None


def test_bad_worlds_and_explanations():
    world = PlantedWorld()
    data = world.sample(4)
    explanations = planted_explanations(data, FAITHFUL)
    with pytest.raises(TypeError, match="World"):
        evaluate(explanations, data, progress=False)
    with pytest.raises(TypeError, match="ClassConcepts"):
        evaluate({}, world, progress=False)
    with pytest.raises(TypeError, match="labels"):
        evaluate(explanations, (ColourMeanNet(), {"images": data.images}), progress=False)
    stray = PlantedExplanation(torch.zeros(4, 1, 24, 24), [1.0], class_id=5)
    with pytest.raises(ValueError, match="no image of class 5"):
        evaluate(stray, world, n_per_class=4, progress=False)


def test_shapes_world_end_to_end(snapshot):
    """The shapes world (test split: no spurious cue), 20 images per class, k=5, two classes,
    default settings (ICE, pixel-ablation importance, pixel maps). Measured at seed 0 (and seeds
    1, 2 in brackets): the top concept sits on a designed causal part in 2/2 classes (2/2, 2/2)
    — at seed 0 in one of them on the part relied on second most, whose reliance is close to the
    first (top reliance ratio 0.97 (1.00, 1.00)) and not measurably below it (both in
    ``most_relied_parts``); top pointing on those parts 1.00 (1.00, 1.00); relied-on part's best
    ROC-AUC 0.99 (0.99, 0.99); causal pointing 1.00 (1.00, 1.00); Spearman 0.46 (0.90, 0.82);
    deletion area 0.03 (0.03, 0.05). Reliance on the causal parts 0.45-0.80, on every other
    part |drop| <= 0.003. (With one region size, the top decile, Spearman was 0.65 (0.90, 0.71):
    over five concepts and two classes one swapped pair moves it by 0.2; the four-world grid
    is where the region rule was chosen.)"""
    from conceptkit import ConceptManager
    from conceptkit.datasets import make_concept_dataset, reference_model

    model = reference_model()
    data = make_concept_dataset(20, seed=0, split="test")
    manager = ConceptManager(model, "block4", n_concepts=5, seed=0, progress=False,
                             class_names=data.class_names)
    manager.fit(data.images, data.labels, classes=[0, 4])
    before = snapshot(model)
    result = evaluate(manager, (model, data), progress=False)
    assert snapshot(model) == before
    for class_id, detail in result.details.items():
        causal = data.class_concepts[class_id]
        others = [p for p in range(data.n_concepts) if p not in causal]
        assert detail.reliance.expected[causal].min() > 0.35
        assert np.abs(detail.reliance.expected[others]).max() < 0.05
    summary = result.summary
    assert summary["top_on_causal"] == 1.0 and summary["top_on_most_relied"] >= 0.5
    # class 4's two causal parts are relied on alike: 20 images cannot tell which is first, and
    # the top concept sits on one of them (measured: top pointing there 1.00)
    assert [row["most_relied_parts"] for row in result.rows] == [
        ["red disk"], ["checkerboard patch", "striped patch"]]
    assert summary["top_on_most_relied_parts"] == 1.0 and summary["top_pointing_parts"] >= 0.9
    assert summary["top_reliance_ratio"] >= 0.9
    assert summary["relied_auc"] >= 0.95 and summary["causal_pointing"] >= 0.9

    # Removing concepts from the activations: the reference CNN's head after block4 is global
    # average pooling and a linear layer, so removing the concepts S lowers the class logit by
    # exactly sum over S of fc_c . mean_positions(u_j w_j).
    cc = manager.classes_[4]
    rows = data.class_indices(4)
    curves = faithfulness(cc, model, data.images[rows], data.masks[rows], measure="logit",
                          removal="activations", progress=False).deletion
    acts = cc.activations.double()
    codes = torch.as_tensor(cc.bank.encode(cc.activations)).double()
    weight = model.fc.weight[4].detach().double()
    contributions = codes.mean((2, 3)) * (cc.bank.components.double() @ weight)   # (N, k)
    logit = acts.mean((2, 3)) @ weight + float(model.fc.bias[4].detach())
    expected = [float(logit.mean())]
    for j in curves.concept_order:
        logit = logit - contributions[:, int(j)]
        expected.append(float(logit.mean()))
    np.testing.assert_allclose(curves.concept_curve, expected, atol=1e-4)
    assert summary["spearman"] >= 0.4
    assert 0.0 < summary["deletion_area"] < 0.15


def test_reliance_agrees_with_the_worlds_training_record():
    """Two independent implementations of the same measure: conceptkit.datasets records each
    world model's reliance (median fill, true-class probability, mean over the images showing the
    part) with its own code; evaluate.reliance().mean must give the same numbers."""
    from conceptkit.datasets import load_world
    from conceptkit.datasets._world_training import part_reliance

    world = load_world("textures")
    model, data = world.model(), world.sample(4, seed=5, split="test")
    record = part_reliance(model, data)
    for class_id in range(data.n_classes):
        rows = data.class_indices(class_id)
        ours = evaluate_reliance(model, data.images[rows], data.masks[rows], class_id,
                                 progress=False)
        np.testing.assert_allclose(ours.mean, record[class_id], atol=1e-5, equal_nan=True)


def test_class_names_placeholder_gives_way_to_the_worlds():
    """A fit without ``class_name`` is named "class 0"; the world's name for the class wins over
    that placeholder, a name the user gave wins over the world's."""
    world = PlantedWorld()
    data = world.sample(8)
    explanations = planted_explanations(data, BOTH)
    explanations[0].class_name = "class 0"
    explanations[1].class_name = "my cool class"
    result = evaluate(explanations, world, n_per_class=8, deletion=False, progress=False)
    assert [row["class_name"] for row in result.table] == ["warm", "my cool class"]


# Measured with the defaults (ICE, pixel ablation over four region sizes grown to superpixels,
# pixel maps, 10 concepts), 30 test images per class, seeds 0, 1, 2: the top concept's pointing
# game on the most relied-on part and Spearman, per seed (benchmarks/results/
# issue13_segments_cnn.json; the shapes world, whose three-seed Spearman is 0.80, is tested
# below against the rule it replaced).
DEFAULT_MEETS_THE_BAR = {
    "scales": {"pointing": (0.975, 0.950, 0.992), "spearman": (0.866, 0.841, 0.859)},
    "textures": {"pointing": (1.000, 0.892, 0.983), "spearman": (0.899, 0.903, 0.921)},
}


@pytest.mark.parametrize("name", sorted(DEFAULT_MEETS_THE_BAR))
def test_default_explanation_meets_the_bar(name):
    """The two worlds where the library's defaults meet issue 13's bar on the grid's three-seed
    means: the top concept on the most relied-on part in every class and seed, Spearman >= 0.8
    in every seed, and the top concept's pointing game >= 0.95 on average (textures: 0.958
    measured; the test allows one image of 120 less, 0.94, for arithmetic that differs between
    machines). The values measured are in ``DEFAULT_MEETS_THE_BAR``."""
    import conceptkit
    from conceptkit.datasets import load_world

    world = load_world(name)
    model = world.model()
    pointing = []
    for seed in (0, 1, 2):
        data = world.sample(30, seed=seed, split="test")
        manager = conceptkit.ConceptManager(model, world.layer, seed=seed, progress=False)
        manager.fit(data.images, data.labels)
        summary = evaluate(manager, world, n_per_class=30, seed=seed, deletion=False,
                           progress=False).summary
        assert summary["top_on_most_relied"] == 1.0, (seed, summary)
        assert summary["spearman"] >= 0.8, (seed, summary)
        pointing.append(summary["top_pointing"])
    assert np.mean(pointing) >= 0.94, pointing


def test_regions_grown_to_superpixels_rank_the_shapes_worlds_concepts_by_reliance():
    """On the shapes world (seed 0, every class) the default regions, grown to the superpixels
    they cover at least half of, rank concepts by the model's reliance on their parts with
    Spearman 0.806; the map's regions alone (``n_segments=None``, the rule before) 0.699,
    because a concept on most of the red disk left a rim the model still read the disk from.
    Five seeds: 0.816 against 0.754 (BENCHMARKS.md, "Regions grown to superpixels")."""
    import conceptkit
    from conceptkit.datasets import load_world

    world = load_world("shapes")
    model = world.model()
    data = world.sample(30, seed=0, split="test")
    spearman = {}
    for rule, n_segments in (("grown", 50), ("alone", None)):
        manager = conceptkit.ConceptManager(model, world.layer, seed=0, progress=False,
                                            importance_kwargs={"n_segments": n_segments})
        fitted = manager.fit(data.images, data.labels)
        assert all(cc.importance.params["n_segments"] == n_segments for cc in fitted.values())
        summary = evaluate(manager, world, n_per_class=30, seed=0, deletion=False,
                           progress=False).summary
        assert summary["top_on_most_relied"] == 1.0, (rule, summary)
        spearman[rule] = summary["spearman"]
    assert spearman["grown"] >= 0.78 and spearman["alone"] <= 0.73, spearman
    assert spearman["grown"] >= spearman["alone"] + 0.05, spearman


def test_default_maps_of_a_vit_sit_on_the_parts_and_rank_better_than_pixel_maps():
    """Why ``kind="auto"`` is coefficient maps on transformer tokens: on the shapes world's ViT
    (seed 0, classes 0-2, 30 test images each) the default explanation of its patch tokens (no
    factorizer given: the token autoencoder) has its top concept on the most relied-on part of every class, pointing
    at it in every image, and ranks the concepts as the model relies on them (measured Spearman
    0.903). Pixel maps of the same concepts, differentiated through attention, find the parts
    too since their image codes are the mean of the tokens' codes (tie-aware top concept 3 of 3;
    before, most of them were all zero), but rank and point worse (measured: strict top on the
    most relied-on part 1 of 3, relied-on part pointing 0.844, Spearman 0.478)."""
    import conceptkit
    from conceptkit.datasets import load_world

    world = load_world("shapes")
    model, layer = world.model("vit"), world.layers["vit"]
    data = world.sample(30, seed=0, split="test")
    summaries = {}
    for kind in ("auto", "pixel"):
        fits = {}
        for c in (0, 1, 2):
            rows = data.labels == c
            explainer = conceptkit.ConceptExplainer(  # the default factorizer: TopKSAE here
                model, layer, seed=0, progress=False, tokens="patches",
                importance_kwargs=None if kind == "auto" else {"kind": "pixel"})
            fits[c] = explainer.fit(data.images[rows], c)
        assert fits[0].importance.params["maps"] == ("coefficient" if kind == "auto" else "pixel")
        assert fits[0].params["factorizer"] == "TopKSAE"
        summaries[kind] = evaluate(fits, (model, data), kind=kind, deletion=False,
                                   progress=False).summary
    auto, pixel = summaries["auto"], summaries["pixel"]
    assert auto["top_on_most_relied"] == 1.0 and auto["top_pointing"] >= 0.95
    assert auto["spearman"] >= 0.85
    assert pixel["top_on_most_relied_parts"] >= 2 / 3  # not empty
    assert pixel["top_on_most_relied"] <= 1 / 3 + 1e-9
    assert pixel["relied_pointing"] <= 0.9 and pixel["spearman"] <= 0.6


def test_a_class_that_relies_on_no_single_part_is_marked():
    """The shapes ViT tells class 4 (the two textured patches) by the absence of a coloured
    pair: painting out either patch leaves it (measured drops within +-0.01 of 0), so its "most
    relied-on part" is noise and the row says so; class 0 relies on both its shapes (0.98, 1.00)."""
    import conceptkit
    from conceptkit.concepts import SemiNMF
    from conceptkit.datasets import load_world

    world = load_world("shapes")
    model, layer = world.model("vit"), world.layers["vit"]
    data = world.sample(20, seed=0, split="test")
    fits = {c: conceptkit.ConceptExplainer(model, layer, factorizer=SemiNMF(4, random_state=0),
                                           seed=0, progress=False).fit(data.images[data.labels == c], c)
            for c in (0, 4)}
    result = evaluate(fits, (model, data), deletion=False, progress=False)
    rows = {row["class_id"]: row for row in result.rows}
    assert rows[0]["most_relied_significant"] and rows[0]["most_relied_drop"] > 0.9
    assert not rows[4]["most_relied_significant"] and abs(rows[4]["most_relied_drop"]) < 0.02
    text = result.to_markdown()
    assert text.count("not told from 0") == 1 and "| 4 striped patch + checkerboard patch" in text
    # scored against noise, the columns that read the most relied-on part or rank by reliance
    # would mean nothing: class 4 leaves them undefined, and the means judge class 0 alone
    from conceptkit.evaluate import UNDEFINED_WITHOUT_RELIANCE

    assert "top_on_most_relied" in UNDEFINED_WITHOUT_RELIANCE and "spearman" in UNDEFINED_WITHOUT_RELIANCE
    assert all(rows[4][column] is None for column in UNDEFINED_WITHOUT_RELIANCE)
    assert all(rows[0][column] is not None for column in ("top_on_most_relied", "top_pointing",
                                                         "spearman", "relied_pointing"))
    for column in ("top_on_most_relied", "top_pointing", "spearman", "relied_pointing"):
        assert result.summary[column] == pytest.approx(float(rows[0][column]))
        assert result.worst[column] == pytest.approx(float(rows[0][column]))
    # the designed causal parts are still scored on class 4
    assert rows[4]["top_on_causal"] is not None and rows[4]["causal_pointing"] is not None
    assert result.summary["causal_pointing"] == pytest.approx(
        (rows[0]["causal_pointing"] + rows[4]["causal_pointing"]) / 2)
    assert "1 not judged (largest drop not told from 0)" in repr(result)


def test_the_default_explanation_of_the_textures_vit_reads_its_cls_token_and_finds_the_texture():
    """Why ``tokens="auto"`` reads the CLS token of a CLS-pooled ViT: the textures world's ViT
    recognises the textures in its CLS token, not in its patch tokens. On classes 0 and 1
    (12 test images each), for each of the factorizer seeds 0, 1 and 2, the default
    explanation reads the CLS token; on class 1 its top concept sits on the texture the model
    relies on most (dots) and points at it in every image, while the same explanation of the
    patch tokens points worse and puts class 0's top concept on a distractor; on both classes
    the concepts of the CLS path localise the designed textures better. Class 0's reliance on
    its checkerboard (0.19) is not told from 0 by these 12 images, so the columns that read it
    are undefined there.

    Measured on two machines: one seed is not enough to hold a value to. Seed 0 alone gave a
    class-1 Spearman of 0.81 on the machine the test was written on and 0.43 on an AMD EPYC
    (the top-k autoencoder's training follows the CPU's float rounding); the claims below
    hold for every seed on the EPYC, and the Spearman is asserted over the three seeds."""
    import conceptkit
    from conceptkit.datasets import load_world

    world = load_world("textures")
    model, layer = world.model("vit"), world.layers["vit"]
    data = world.sample(12, seed=0, split="test")
    spearman = {"auto": [], "patches": []}
    for seed in (0, 1, 2):
        rows = {}
        for tokens in ("auto", "patches"):
            fits = {c: conceptkit.ConceptExplainer(model, layer, n_concepts=6, seed=seed,
                                                   tokens=tokens, progress=False).fit(
                        data.images[data.labels == c], c)
                    for c in (0, 1)}
            result = evaluate(fits, (model, data), deletion=False, progress=False)
            rows[tokens] = {row["class_id"]: row for row in result.rows}
            if tokens == "auto":
                assert {f.params["tokens"] for f in fits.values()} == {"cls"}
            if rows[tokens][1]["spearman"] is not None:
                spearman[tokens].append(rows[tokens][1]["spearman"])
        cls, patches = rows["auto"], rows["patches"]
        # measured on the EPYC, seeds 0 / 1 / 2: class 1 top on dots, pointing 1.00 in each
        # (CLS) against 0.75 / 0.67 / 0.58 (patches); class 0's top concept on the grid lines
        # in each (patches); causal pointing CLS 0.58 / 0.67 / 0.42 (class 0) and 0.92 / 0.88 /
        # 0.88 (class 1) against 0.42 / 0.33 / 0.38 and 0.50 for the patch tokens
        assert not cls[0]["most_relied_significant"] and cls[0]["top_on_most_relied"] is None
        assert cls[1]["top_on_most_relied"] and cls[1]["top_pointing"] >= 0.95
        assert patches[1]["top_pointing"] <= 0.8
        assert not patches[0]["top_on_causal"]
        for c in (0, 1):
            assert cls[c]["causal_pointing"] > patches[c]["causal_pointing"], (seed, c)
    # class 1's Spearman, CLS: 0.43 / 0.93 / 0.75 (mean 0.70); patch tokens: undefined (NaN,
    # seed 0) / -0.17 / 0.65
    assert np.mean(spearman["auto"]) >= 0.6
    assert np.mean(spearman["auto"]) > np.mean(spearman["patches"]) + 0.2
