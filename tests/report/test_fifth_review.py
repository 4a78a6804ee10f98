"""Fifth review (a newcomer): the class page and report.json say what their numbers mean.

The page named the importance method only ("Class-level pixel_ablation importance"), gave no
level or kind of interval, listed metrics with a direction only, and report.json had no seed,
no conceptkit version, and two different counts both called ``n_concepts``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import conceptkit
from conceptkit.pipeline._notes import importance_notes
from conceptkit.report import ClassReport, ConceptSummary, write_class_report
from conceptkit.report._write import importance_meaning


def _report(importance_method="pixel_ablation", importance_params=None, seed=7, ci=True):
    rng = np.random.default_rng(0)
    k, n = 3, 12
    concepts = [ConceptSummary(index=j, label=f"concept {j}", importance=0.3 - 0.1 * j,
                               ci_low=(0.2 - 0.1 * j) if ci else None,
                               ci_high=(0.4 - 0.1 * j) if ci else None,
                               exemplars=rng.random((2, 3, 8, 8)), exemplar_sources=[4, 4])
                for j in range(k)]
    metrics = {"extraction": {"relative_l2": {"value": 0.2, "higher_is_better": False},
                              "my_metric": {"value": 1.0, "higher_is_better": True}},
               "importance": {"c_deletion": {"value": 1.5, "higher_is_better": False}}}
    return ClassReport(class_id=1, class_name="cat", method="ice",
                       importance_method=importance_method, layer="block4", model_name="m",
                       concepts=concepts, images=rng.random((2, 3, 16, 16)), image_ids=[0, 1],
                       maps=rng.random((2, k, 4, 4)), per_image_importance=rng.random((n, k)),
                       codes=rng.random((20, k)), metrics=metrics, seed=seed,
                       importance_params={"confidence": 0.95, "score": "probability"}
                       if importance_params is None else importance_params)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    report = _report()
    page = write_class_report(report, tmp_path_factory.mktemp("r"), embedding="pca", dpi=30)
    return report, page


def test_page_says_what_the_importance_and_its_interval_are(written):
    _, page = written
    text = page.read_text(encoding="utf-8")
    # the importance of pixel ablation is the mean drop of P(class) when the region is painted out
    assert "the mean drop of the class probability P(class) when the concept&#x27;s region" in text
    assert "median colour" in text
    # the interval: its level, its kind, over how many images
    assert ("the 95 % confidence interval of the mean over the 12 images (Student-t, from the "
            "per-image importances)") in text
    assert "Error bars span the 95 % confidence interval" in text
    # several exemplars from one image are listed once for each, and the page says so
    assert "4, 4" in text and "listed once for each" in text


def test_metrics_have_a_one_line_definition(written):
    _, page = written
    text = page.read_text(encoding="utf-8")
    assert "<th>what it measures</th>" in text
    assert "the reconstruction error of the activations by the concepts" in text
    assert "remove the concepts from most to least important" in text


def test_report_json_records_seed_version_interval_and_the_shown_count(written):
    report, page = written
    data = json.loads((page.parent / "report.json").read_text(encoding="utf-8"))
    assert data["seed"] == 7 and data["conceptkit_version"] == conceptkit.__version__
    assert data["ci_level"] == 0.95 and data["ci_kind"] == "student_t_over_images"
    assert data["importance_meaning"].startswith("The mean drop of the class probability P(class)")
    # the overlays' count is the shown count, n_top_concepts (docs/conventions.md)
    assert data["overlays"]["n_top_concepts"] == 3 and "n_concepts" not in data["overlays"]
    assert data["n_concepts"] == report.n_concepts
    assert set(data["metric_definitions"]) == {"relative_l2", "c_deletion"}  # known ones only
    assert "FID" not in data["metric_definitions"]["relative_l2"]


def test_no_interval_and_no_seed_are_not_invented(tmp_path):
    report = _report(seed=None, ci=False, importance_params={})
    page = write_class_report(report, tmp_path, embedding="pca", dpi=30)
    data = json.loads((page.parent / "report.json").read_text(encoding="utf-8"))
    assert data["seed"] is None and data["ci_level"] is None and data["ci_kind"] is None
    text = page.read_text(encoding="utf-8")
    assert "confidence interval of the mean" not in text and "Explanation seed" not in text


def test_each_importance_method_has_its_own_sentence():
    assert "class probability" in importance_meaning("ablation", {})
    assert "class logit" in importance_meaning("pixel_ablation", {"score": "logit"})
    assert importance_meaning("sobol", {}).startswith("the total Sobol index")
    assert importance_meaning("sobol", {"order": "first"}).startswith("the first-order")
    assert importance_meaning("rise", {}).startswith("RISE")
    for method in ("closed_form", "gradient_input", "integrated_gradients", "occlusion"):
        assert "the class logit" in importance_meaning(method, {})
    assert importance_meaning("my_method", {}) == ""


def test_interval_note_agrees_in_number():
    importance = SimpleNamespace(importances=np.array([0.1, 0.05, 0.2]), method="pixel_ablation",
                                 params={}, ci_low=np.array([-0.1, -0.2, 0.1]),
                                 ci_high=np.array([0.3, 0.2, 0.3]))
    notes = importance_notes(importance, lambda c: f"concept {c}", 10)
    assert notes == ["The confidence intervals of concept 0 and concept 1 start below 0 and end "
                     "above it: over these 10 images the mean importance cannot be told from 0. "
                     "Each interval is a Student-t interval of the per-image values."]
    importance.ci_low = np.array([-0.1, 0.01, 0.1])
    notes = importance_notes(importance, lambda c: f"concept {c}", 10)
    assert notes[0].startswith("The confidence interval of concept 0 starts below 0 and ends "
                               "above it")
