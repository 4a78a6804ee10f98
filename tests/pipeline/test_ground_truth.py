"""Discovered concepts localise the true parts, and the important ones are the causal parts, on the
ground-truth dataset and the reference CNN.

The evaluation itself lives in ``benchmarks/eval_ground_truth.py`` (what BENCHMARKS.md reports);
these tests run it at a smaller setting (30 train images per class, CRAFT and ICE, seed 0) and
assert thresholds measured over seeds 0-4 with a margin (the measured ranges are in the comments).
ACE and the full setting (60 images per class) are marked ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.importance import ConceptImportance

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_ground_truth.py"
_SPEC = importlib.util.spec_from_file_location("eval_ground_truth", _PATH)
gt = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gt)

IMPORTANCES = ["sobol", "gradient_input"]

# CRAFT and ICE keep scikit-learn's 200 NMF iterations (the CRAFT reference), which often end
# before the tolerance is met; the warning says nothing about these tests.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def quick():
    return gt.evaluate(30, ("ice", "craft"), tuple(IMPORTANCES), seed=0)


def _classes(results, method, kind="auto"):
    return results["methods"][method]["maps"][kind]


def _plain(method):
    """The map kind the spurious-cue thresholds were measured with (plain coefficient maps for
    CRAFT, whose default is scale-matched maps)."""
    return "coefficient" if method == "craft" else "auto"


# ----------------------------------------------------------------------------- the scoring itself

def _importance(importances: np.ndarray, class_id: int) -> ConceptImportance:
    per_input = np.asarray(importances, dtype=float)[None]
    return ConceptImportance(per_input=per_input, importances=per_input[0], ci_low=None,
                             ci_high=None, method="given", class_id=class_id)


def test_scoring_with_ground_truth_masks_as_maps():
    """Maps equal to the masks localise every concept perfectly; maps moved by half the image
    localise nothing; the top concept is judged by what it localises."""
    data = make_concept_dataset(8, seed=3)
    class_id = 2
    rows = gt.class_rows(data, class_id)
    maps = data.masks[rows].float()                      # concept j's map is mask j
    tables = gt.localisation_tables(maps, data, rows)
    shown = data.concepts[rows].sum(0)
    distractor = max(data.distractor_concepts, key=lambda g: shown[g])
    assert shown[distractor] >= 3                         # frequent enough to be named
    causal = data.class_concepts[class_id][1]
    ranking = {"distractor_on_top": np.eye(10)[distractor], "causal_on_top": np.eye(10)[causal]}
    scored = gt.score_class(tables, {k: _importance(v, class_id) for k, v in ranking.items()},
                            data, class_id)
    for row, g in zip(scored["causal"], data.class_concepts[class_id]):
        assert row["truth"] == data.concept_names[g]
        assert row["concept"] == g
        assert row["pointing_game"] == row["relevance_mass"] == row["iou"] == 1.0
        expected_area = data.masks[rows, g].float().mean().item()   # every image shows g
        assert row["mask_area"] == pytest.approx(expected_area)
    assert scored["all_causal_localised"]
    top = scored["top"]
    assert not top["distractor_on_top"]["is_causal"]
    assert top["distractor_on_top"]["best_truth"] == data.concept_names[distractor]
    assert top["distractor_on_top"]["causal_score"] == 0.0
    assert top["causal_on_top"]["is_causal"]
    assert top["causal_on_top"]["causal_truth"] == data.concept_names[causal]

    # Parts are at most 22 px with a 4 px tolerance, so a 32 px shift on both axes never hits.
    # (Another concept's moved map may still land on a part now and then, by chance.)
    shifted = torch.roll(maps, shifts=(32, 32), dims=(-2, -1))
    moved_tables = gt.localisation_tables(shifted, data, rows)
    for g in data.class_concepts[class_id]:
        assert moved_tables["pointing_game"][g, g] == 0.0
        assert moved_tables["relevance_mass"][g, g] == 0.0 and moved_tables["iou"][g, g] == 0.0
    moved = gt.score_class(moved_tables,
                           {"causal_on_top": _importance(ranking["causal_on_top"], class_id)},
                           data, class_id)
    assert all(row["pointing_game"] < 0.5 for row in moved["causal"])
    assert not moved["all_causal_localised"]
    assert not moved["top"]["causal_on_top"]["is_causal"]
    counts = gt.rates([scored, moved], ["causal_on_top"])
    assert counts["causal_localised"] == (2, 4)
    assert counts["classes_all_localised"] == (1, 2)
    assert counts["top_causal_on_top_causal"] == (1, 2)


def test_tolerance_and_scale_matched_maps_need_craft():
    assert gt.tolerance_for(64) == 4 and gt.tolerance_for(224) == 14 and gt.tolerance_for(8) == 1
    data = make_concept_dataset(3, seed=0)
    cc, _ = gt.fit_class(reference_model(), data, 0, "ice", seed=0)
    with pytest.raises(ValueError, match="CRAFT"):
        gt.scale_matched_maps(cc)
    assert gt.map_kinds("craft") == ("coefficient", "scale_matched")
    assert gt.map_kinds("ice") == ("auto",)


# ----------------------------------------------------------------------------- discovery: localisation

def test_ice_localises_every_causal_concept_of_every_class(quick):
    # Measured (30 per class, seeds 0-4): lowest pointing game 0.60-0.87; relevance mass of the
    # best concept 3.1-3.5x the mask area (the relevance mass of a uniform map).
    for cls in _classes(quick, "ice"):
        assert cls["all_causal_localised"], cls
        for row in cls["causal"]:
            assert row["pointing_game"] >= 0.5, (cls["class_name"], row)
            assert row["relevance_mass"] >= 2.0 * row["mask_area"], (cls["class_name"], row)


def test_craft_localises_causal_concepts_with_scale_matched_maps(quick):
    # Measured (30 per class, seeds 0-4): scale-matched maps localise 12/12 causal concepts
    # (lowest 0.53-0.77, striped patch of class 4), mean pointing game 0.95-0.98 and relevance
    # mass 0.43-0.49; the default coefficient maps 10-11/12, 0.83-0.87 and 0.21-0.25.
    default = _classes(quick, "craft", "coefficient")
    matched = _classes(quick, "craft", "scale_matched")
    assert all(cls["all_causal_localised"] for cls in matched)
    r_default, r_matched = gt.rates(default, IMPORTANCES), gt.rates(matched, IMPORTANCES)
    assert r_matched["mean_pointing_game"] >= r_default["mean_pointing_game"] + 0.05
    assert r_matched["mean_relevance_mass"] >= 1.5 * r_default["mean_relevance_mass"]
    assert r_default["causal_localised"][0] >= 9


# ----------------------------------------------------------------------------- importance: the causal parts

def test_top_concept_localises_a_causal_concept(quick):
    # Measured (30 per class, seeds 0-4): ICE 5/6 (6/6 at seed 1; the miss is class 5, or the
    # cue on top of class 0 at seed 3), CRAFT with scale-matched maps 6/6, both importances.
    ice = gt.rates(_classes(quick, "ice"), IMPORTANCES)
    craft = gt.rates(_classes(quick, "craft", "scale_matched"), IMPORTANCES)
    for method in IMPORTANCES:
        assert ice[f"top_{method}_causal"][0] >= 5
        assert craft[f"top_{method}_causal"] == (6, 6)


def test_spurious_cue_is_flagged(quick):
    # Measured (30 per class, seeds 0-4): the cue concept's Sobol importance is 2.9-11x higher on
    # train images (cue in 90 %) than on spurious-free test images; gradient x input 1.9-4.5x;
    # drawing the cue into the test images restores it (3.2-11x the test value). Ranks move less
    # (CRAFT: 3-6 on train, 3-10 on test), so they are reported by the benchmark, not asserted.
    for method in ("ice", "craft"):
        entry = quick["spurious"][method][_plain(method)]
        assert entry["pointing_game"] >= 0.75
        assert entry["cue_rate"]["train"] >= 0.8 and entry["cue_rate"]["test"] <= 0.1
        sobol, grad = entry["importance"]["sobol"], entry["importance"]["gradient_input"]
        assert sobol["train"]["value"] >= 2.5 * sobol["test"]["value"], sobol
        assert grad["train"]["value"] >= 1.5 * grad["test"]["value"], grad
        assert sobol["test_with_cue"]["value"] >= 2.0 * sobol["test"]["value"], sobol
    effect = quick["spurious_cue_effect"]
    # Measured: the spurious-class margin grows by 1.9-2.0 logits when the cue is drawn in.
    assert effect["spurious_margin_shift"] > 0.5
    assert effect["spurious_probability_shift"] > 0.0


# ----------------------------------------------------------------------------- the script

def test_same_seed_same_results():
    first = gt.evaluate(4, ("ice",), ("sobol",), seed=1)
    second = gt.evaluate(4, ("ice",), ("sobol",), seed=1)
    for results in (first, second):
        results["methods"]["ice"].pop("seconds")
    assert json.dumps(first, default=float) == json.dumps(second, default=float)


def test_command_line_writes_json(tmp_path, capsys):
    path = tmp_path / "results.json"
    assert gt.main(["--n-per-class", "4", "--methods", "craft", "--importances", "sobol",
                    "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "CRAFT (scale-matched maps, the default)" in printed and "top concept is causal: sobol" in printed
    saved = json.loads(path.read_text())
    assert saved["setting"]["n_per_class"] == 4 and saved["setting"]["tolerance_px"] == 4
    assert len(saved["methods"]["craft"]["maps"]["scale_matched"]) == 6


# ----------------------------------------------------------------------------- full setting

@pytest.mark.slow
def test_full_setting_with_ace():
    # Measured (60 per class, seeds 0 and 1; about 6-10 min on 2 cores, ACE takes most of it):
    # ICE 12/12 causal concepts and 6/6 top concepts; CRAFT with scale-matched maps 12/12, 6/6;
    # ACE 10/12 (the striped patch of classes 3 and 4 is missed) and 6/6 or 4/6 top concepts;
    # Sobol train/test ratio of the cue concept 3.4-11x.
    results = gt.evaluate(60, ("craft", "ice", "ace"), tuple(IMPORTANCES), seed=0)
    ice = gt.rates(_classes(results, "ice"), IMPORTANCES)
    assert ice["classes_all_localised"] == (6, 6)
    assert ice["top_sobol_causal"][0] >= 5
    craft = gt.rates(_classes(results, "craft", "scale_matched"), IMPORTANCES)
    assert craft["classes_all_localised"] == (6, 6)
    assert craft["top_sobol_causal"] == (6, 6)
    ace = gt.rates(_classes(results, "ace"), IMPORTANCES)
    assert ace["causal_localised"][0] >= 9
    assert ace["top_sobol_causal"][0] >= 4
    for method in ("craft", "ice", "ace"):
        sobol = results["spurious"][method][_plain(method)]["importance"]["sobol"]
        assert sobol["train"]["value"] >= 2.5 * sobol["test"]["value"], (method, sobol)
