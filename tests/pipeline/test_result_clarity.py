"""What a reader of an explanation sees: where the report goes, one label per concept,
near-duplicate concepts flagged, Sobol values explained, per-concept heatmaps, short reprs,
`metrics` as a property."""

from __future__ import annotations

import json
import re
import types
import warnings

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit.pipeline._notes import importance_notes, near_duplicates
from conceptkit.report import plot_concept_heatmaps
from conceptkit.report._heatmaps import heatmap_strength

IMAGES = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(6))


@pytest.fixture(scope="module")
def fitted():
    explainer = conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=4, seed=0,
                                            progress=False)
    return explainer.fit(IMAGES, 2)


def test_report_returns_its_page_and_an_unnamed_class_is_not_named_twice(fitted, tmp_path):
    page = fitted.report(tmp_path)
    assert page == str(tmp_path / "class-2" / "index.html")
    html = open(page, encoding="utf-8").read()
    assert "<h1>Class 2</h1>" in html and "class 2 · class 2" not in html.lower()


def test_one_label_per_concept(fitted, tmp_path):
    page = fitted.report(tmp_path)
    report = json.loads((tmp_path / "class-2" / "report.json").read_text())
    assert [row["label"] for row in report["concepts"]] == [
        f"concept {int(c)}" for c in fitted.ranking]
    assert [row["index"] for row in report["concepts"]] == [int(c) for c in fitted.ranking]
    html = open(page, encoding="utf-8").read()
    assert "bank index" not in html and not re.search(r"#\d+ concept", html)
    assert fitted.concept_label(3) == "concept 3"


def test_near_duplicates_are_flagged_in_the_result_and_the_report(fitted, tmp_path):
    codes = fitted.bank.codes.clone()
    try:
        fitted.bank.codes[:, 3] = 2 * fitted.bank.codes[:, 1] + 1e-3  # concept 3 copies concept 1
        pairs = fitted.near_duplicates()
        assert [p["concepts"] for p in pairs] == [(1, 3)]
        assert pairs[0]["correlation"] == pytest.approx(1.0)
        assert pairs[0]["shared_exemplars"] == pairs[0]["n_exemplars"] == 10
        fitted.report(tmp_path)
        report = json.loads((tmp_path / "class-2" / "report.json").read_text())
        extra = {row["index"]: row["extra"] for row in report["concepts"]}
        assert extra[1] == {"near-duplicate of": "concept 3"}
        assert extra[3] == {"near-duplicate of": "concept 1"}
        assert extra[0] == {} and extra[2] == {}
        assert any(n.startswith("concept 1 and concept 3 look like one concept: their codes "
                                "correlate at r = 1.00") for n in report["notes"])
    finally:
        fitted.bank.codes.copy_(codes)


def test_independent_codes_are_not_duplicates():
    rng = np.random.default_rng(0)
    bank = types.SimpleNamespace(codes=torch.from_numpy(rng.random((200, 5))))
    assert near_duplicates(bank) == []
    codes = rng.random((200, 5))
    codes[:, 4] = codes[:, 0] + 0.05 * rng.random(200)  # r ~ 0.99
    pairs = near_duplicates(types.SimpleNamespace(codes=torch.from_numpy(codes)))
    assert [p["concepts"] for p in pairs] == [(0, 4)]
    r = np.corrcoef(codes[:, 0], codes[:, 4])[0, 1]
    assert pairs[0]["correlation"] == pytest.approx(r)


def test_sobol_values_that_need_a_sentence():
    label = "concept {}".format
    sobol = types.SimpleNamespace(method="sobol", params={"n_designs": 32, "order": "total"},
                                  importances=np.array([1.07, 0.3, 0.01]),
                                  ci_low=np.array([0.9, 0.1, -0.02]), ci_high=np.ones(3))
    notes = importance_notes(sobol, label, 12)
    assert len(notes) == 2
    assert notes[0].startswith("Total Sobol index above 1 for concept 0 (1.07)")
    assert "at most 1" in notes[0] and "32 designs" in notes[0]
    assert notes[1].startswith("The confidence interval of concept 2 starts below 0 and ends "
                               "above it: over these 12 images")
    # an interval wholly below 0 is not "cannot be told from 0": it says the concept counts
    # against the class (the note said the opposite of the numbers)
    against = types.SimpleNamespace(method="ablation", params={},
                                    importances=np.array([0.3, -0.01]),
                                    ci_low=np.array([0.2, -0.018]),
                                    ci_high=np.array([0.4, -0.004]))
    (note,) = importance_notes(against, label, 12)
    assert note.startswith("The confidence interval of concept 1 lies wholly below 0")
    assert "counts against the class" in note
    other = types.SimpleNamespace(method="gradient_input", params={},
                                  importances=np.array([1.5, 0.2]), ci_low=None, ci_high=None)
    assert importance_notes(other, label, 12) == []


def test_heatmap_grid_has_a_row_per_concept_and_a_column_per_image():
    rng = np.random.default_rng(0)
    images = rng.random((3, 3, 40, 40)).astype(np.float32)
    maps = rng.random((3, 4, 10, 10)).astype(np.float32)
    fig = plot_concept_heatmaps(images, maps, ["a", "b", "c", "d"], image_ids=["x.jpg", 7, 8],
                                n_top_concepts=2)
    axes = fig.axes
    assert len(axes) == 2 * 3
    assert [ax.get_title() for ax in axes[:3]] == ["x.jpg", "image 7", "image 8"]
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["a", "b"]
    assert all(ax.collections for ax in axes)  # a contour in every panel
    strength = heatmap_strength(maps)
    np.testing.assert_allclose(strength.max(axis=(0, 2, 3)), 1.0)
    np.testing.assert_allclose(strength[:, 1], maps[:, 1] / maps[:, 1].max(), rtol=1e-6)


def test_reprs_are_short_and_say_what_is_held(fitted, tmp_path):
    text = repr(fitted)
    assert text.startswith("ClassConcepts(class 2 'class 2', 4 concepts, ice at 'block2'")
    assert "8 fitted images in memory" in text and "tensor(" not in text and len(text) < 400
    assert "per_input=array(8, 4) float64" in repr(fitted.importance)
    assert len(repr(fitted.bank)) < 400
    path = fitted.save(tmp_path / "cc.safetensors", n_images=5)
    loaded = conceptkit.load(path)
    assert "concept_maps() returns the maps of the 5 saved images only" in repr(loaded)
    assert loaded.concept_maps().shape[0] == 5
    assert "first ``n_images`` images only" in type(loaded).concept_maps.__doc__


def test_metrics_is_a_property_and_the_call_still_works(fitted):
    metrics = fitted.metrics
    assert set(metrics) == {"extraction", "importance"}
    assert metrics == fitted.compute_metrics()
    with pytest.warns(DeprecationWarning, match="`ClassConcepts.metrics` is a property now"):
        called = fitted.metrics()
    assert called == metrics
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        json.dumps(dict(fitted.metrics["extraction"]))  # the property itself never warns
