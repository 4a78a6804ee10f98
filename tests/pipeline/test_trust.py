"""How far to trust an explanation: stability across seeds, interval overlaps, notes."""

from __future__ import annotations

import types

import numpy as np
import pytest

from conceptkit.concepts import NMF, KMeansConcepts
from conceptkit.importance import ConceptImportance
from conceptkit.pipeline._trust import STABLE, concept_stability, interval_overlaps, trust


def planted_rows(n=300, c=20, k=4, seed=0):
    rng = np.random.default_rng(seed)
    parts = np.eye(k, c) * 3 + 0.05 * rng.random((k, c))
    codes = rng.exponential(1.0, (n, k)) * (rng.random((n, k)) < 0.5)
    return (codes @ parts).astype(np.float32)


def bank_of(factorizer, rows):
    fitted = factorizer.fit(rows)
    return types.SimpleNamespace(factorizer=fitted, activations=rows,
                                 components=np.asarray(fitted.components_))


def test_planted_concepts_are_stable_and_noise_clusters_are_not():
    stable = concept_stability(bank_of(NMF(4, random_state=0), planted_rows()), n_seeds=3)
    assert stable["mean"] > 0.99 and min(stable["per_concept"]) > STABLE
    assert len(stable["seeds"]) == 3 and stable["subset"] == 0.8
    # 8 k-means centroids of isotropic noise move with the seed and the sample.
    noise = np.random.default_rng(1).normal(size=(300, 20)).astype(np.float32)
    shaky = concept_stability(bank_of(KMeansConcepts(8, random_state=0), noise), n_seeds=3)
    assert shaky["mean"] < stable["mean"] - 0.05
    assert min(shaky["per_concept"]) < STABLE


def test_matched_cosine_by_hand_for_a_refit_equal_to_the_bank():
    rows = planted_rows(seed=2)
    bank = bank_of(NMF(4, random_state=0), rows)
    result = concept_stability(bank, n_seeds=1, seed=5)
    # the refit starts from a random initialisation drawn from its seed (NNDSVDA would not
    # depend on the seed)
    assert result["init"] == "random"
    refit = NMF(4, random_state=1005, init="random").fit(rows[np.sort(
        np.random.default_rng(1005).choice(300, 240, replace=False))]).components_
    a = bank.components / np.linalg.norm(bank.components, axis=1, keepdims=True)
    b = refit / np.linalg.norm(refit, axis=1, keepdims=True)
    best = (a @ b.T).max(axis=1)      # for well-separated concepts the matching is the argmax
    np.testing.assert_allclose(result["per_concept"], best, rtol=1e-6)


def importance(values, low, high):
    values = np.asarray(values, dtype=float)
    return ConceptImportance(per_input=values[None], importances=values, ci_low=np.asarray(low),
                             ci_high=np.asarray(high), method="given", class_id=0)


def test_interval_overlaps():
    imp = importance([0.5, 0.1, 0.3], [0.4, 0.0, 0.25], [0.6, 0.2, 0.35])
    out = interval_overlaps(imp)
    np.testing.assert_allclose(out["width"], [0.2, 0.2, 0.1])
    assert out["top_separated"] is True and out["unresolved_pairs"] == []
    close = interval_overlaps(importance([0.5, 0.1, 0.45], [0.4, 0.0, 0.3], [0.6, 0.2, 0.6]))
    assert close["top_separated"] is False and close["unresolved_pairs"] == [(0, 2)]


def test_trust_notes_say_what_is_shaky():
    noise = np.random.default_rng(1).normal(size=(300, 20)).astype(np.float32)
    bank = bank_of(KMeansConcepts(8, random_state=0), noise)
    cc = types.SimpleNamespace(
        bank=bank, importance=importance(np.linspace(0.5, 0.1, 8), np.linspace(0.3, 0.0, 8),
                                         np.linspace(0.7, 0.2, 8)),
        near_duplicates=lambda: [{"concepts": (1, 4), "correlation": 0.99,
                                  "shared_exemplars": 3, "n_exemplars": 10}])
    summary = trust(cc, n_seeds=2)
    text = " ".join(summary["notes"])
    assert "change with the seed" in text and "overlaps the second" in text
    assert "near-duplicate concepts: [(1, 4)]" in text
    assert summary["evaluation"] is None
    with pytest.raises(ValueError, match="n_seeds"):
        trust(cc, n_seeds=0)


def test_report_shows_the_trust_summary(tmp_path):
    import html
    import json

    from conceptkit import ConceptExplainer
    from conceptkit.datasets import make_concept_dataset, reference_model

    data = make_concept_dataset(6, seed=0)
    rows = np.flatnonzero(data.labels.numpy() == 1)
    cc = ConceptExplainer(reference_model(), "block4", n_concepts=3, method="ice", seed=0,
                          progress=False).fit(data.images[rows], 1)
    summary = cc.trust(n_seeds=2)
    assert cc.trust(n_seeds=2) is summary                       # computed once
    page = cc.report(tmp_path, trust=True)
    text = open(page, encoding="utf-8").read()
    assert "stability across seeds" in text
    # every note of the summary is on the page (HTML-escaped), marked as a trust note
    assert all(html.escape(f"Trust: {note}")[:60] in text for note in summary["notes"])
    assert ("Trust:" in text) == bool(summary["notes"])
    from pathlib import Path

    saved = json.loads((Path(page).parent / "report.json").read_text(encoding="utf-8"))
    assert saved["metrics"]["trust"]["mean stability across seeds"]["value"] == pytest.approx(
        cc.trust()["stability"]["mean"])


def test_ground_truth_notes_tell_a_tie_from_a_miss():
    from conceptkit.pipeline._trust import _notes

    quiet = {"stability": {"per_concept": None, "note": None},
             "intervals": {"top_separated": True, "unresolved_pairs": []}, "near_duplicates": []}
    row = {"top_on_most_relied": False, "top_part": "striped patch",
           "most_relied_part": "checkerboard patch",
           "most_relied_parts": ["checkerboard patch", "striped patch"],
           "top_on_most_relied_parts": True}
    (tie,) = _notes({**quiet, "evaluation": row})
    assert "cannot tell apart" in tie and "checkerboard patch and striped patch alike" in tie
    assert "NOT" not in tie
    miss = {**row, "most_relied_parts": ["checkerboard patch"], "top_on_most_relied_parts": False}
    (text,) = _notes({**quiet, "evaluation": miss})
    assert "NOT on the part the model relies on most" in text
    assert _notes({**quiet, "evaluation": {**row, "top_on_most_relied": True}}) == []
    # a class the model relies on no part for: the columns are undefined, and the note says why
    unjudged = {**row, "most_relied_significant": False, "most_relied_part": "cyan diamond",
                "top_on_most_relied": None, "top_on_most_relied_parts": None}
    (why,) = _notes({**quiet, "evaluation": unjudged})
    assert "relies on no single part" in why and "cyan diamond" in why and "NOT" not in why
    # ... unless another part's smaller, steadier drop is told from 0: the evaluation's own
    # sentence says so, and the note does not claim the model relies on no part
    steadier = {**unjudged, "most_relied_note": (
        "the part with the largest mean probability drop, cyan diamond (+0.2), cannot be told "
        "from 0 in these 4 images, but red disk (+0.09) can be (95% interval): the model does "
        "rely on that part.")}
    (why,) = _notes({**quiet, "evaluation": steadier})
    assert "red disk" in why and "does rely on that part" in why
    assert "relies on no single part" not in why and "does not judge" in why
    # too few images show any part to place a concept: undetermined, not a miss
    unplaced = {**row, "most_relied_significant": True, "top_part": "undetermined",
                "top_on_most_relied": None, "top_on_most_relied_parts": None}
    (why,) = _notes({**quiet, "evaluation": unplaced})
    assert "no part is shown in enough" in why and "NOT" not in why


def test_report_shows_the_ground_truth_scores_and_not_the_rows_identifiers(tmp_path):
    import json
    from pathlib import Path

    from conceptkit import ConceptExplainer
    from conceptkit.datasets import make_concept_dataset, reference_model
    from conceptkit.evaluate import METRIC_COLUMNS
    from conceptkit.pipeline import build_class_report

    data = make_concept_dataset(6, seed=0)
    rows = np.flatnonzero(data.labels.numpy() == 1)
    cc = ConceptExplainer(reference_model(), "block4", n_concepts=3, method="ice", seed=0,
                          progress=False).fit(data.images[rows], 1)
    summary = cc.trust(n_seeds=2, ground_truth=(data.images[rows], data.masks[rows],
                                                list(data.concept_names)))
    row = summary["evaluation"]
    assert row["class_id"] == 1 and row["n_images"] == 6       # the row keeps its identifiers
    page = cc.report(tmp_path, trust=summary)
    shown = json.loads((Path(page).parent / "report.json").read_text(encoding="utf-8"))
    scores = {name[len("ground truth: "):]: metric
              for name, metric in shown["metrics"]["trust"].items()
              if name.startswith("ground truth: ")}
    # every numeric score of the row, with the evaluation's own better direction; identifiers
    # (class_id, n_images, n_concepts, top_concept) and the raw drop are not scores
    expected = {key for key, value in row.items()
                if key in METRIC_COLUMNS and isinstance(value, (bool, int, float))}
    assert set(scores) == expected and "spearman" in scores and "top_pointing" in scores
    for key, metric in scores.items():
        assert metric["value"] == pytest.approx(float(row[key]))
        assert metric["higher_is_better"] is METRIC_COLUMNS[key]
    # numpy scalars (a user's own evaluation row) are scores too, not silently dropped
    numpy_row = {**row, "spearman": np.float32(0.5), "top_on_most_relied": np.bool_(True),
                 "top_pointing": np.float64(0.75)}
    report = build_class_report(cc, trust={**summary, "evaluation": numpy_row})
    trust_group = report.metrics["trust"]
    assert trust_group["ground truth: spearman"]["value"] == pytest.approx(0.5)
    assert trust_group["ground truth: top_on_most_relied"]["value"] == 1.0
    # anything but a trust summary is refused naming `trust`, not a KeyError from inside
    for bad, error in (("yes", TypeError), (1, TypeError), ({}, ValueError),
                       ({**summary, "intervals": None}, ValueError)):
        with pytest.raises(error, match="`trust`"):
            cc.report(tmp_path / "bad", trust=bad)
