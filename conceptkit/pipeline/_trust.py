"""How far to trust one class's explanation: stability across seeds, interval widths, near
duplicates and, when ground truth is given, the evaluation against it.

- **Stability across seeds**: the factorizer is refitted ``n_seeds`` times, each with another
  ``random_state`` and on another random ``SUBSET`` (80 %) of the factorized rows. What a seed
  varies must vary: NMF's default initialisation (NNDSVDA) is computed from an SVD of the rows,
  so that another ``random_state`` changed its dictionary by ~3e-5 (stability ~1 by
  construction); the NMF refits therefore start from a random initialisation drawn from their
  seed (``init="random"``, recorded as ``"init"`` in the result). Each
  concept is matched to one concept of every refit (Hungarian algorithm on the cosine similarity
  of the dictionary rows) and its stability is its mean matched cosine. A concept below
  ``STABLE`` (0.9) changes with the seed and the sample: do not read much into it.
- **Intervals**: each concept's confidence-interval width, and whether the intervals of
  consecutive concepts in the ranking overlap (then their order is not resolved by the data).
- **Near duplicates**: pairs of concepts flagged by ``ClassConcepts.near_duplicates`` when the
  explanation has it.
- **Ground truth** (optional): ``conceptkit.evaluate.faithfulness`` of the explanation against
  part masks, summarised as one row of the evaluation table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.base import clone

from .._validation import check_int
from ._notes import _enumerate

#: A concept whose mean matched cosine across seeds is below this is flagged as unstable.
STABLE = 0.9
#: Fraction of the factorized rows each refit sees.
SUBSET = 0.8


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.finfo(float).tiny)


def concept_stability(bank: Any, n_seeds: int = 3, seed: int = 0) -> dict[str, Any]:
    """Per-concept mean matched cosine between the bank's dictionary and refits with other seeds.

    Returns ``{"per_concept": (k,) list, "mean": float, "seeds": [...], "subset": float,
    "init": str | None, "note": str | None}``; ``init`` is the initialisation the refits used when
    it differs from the bank's (``"random"`` for an NMF fitted with a deterministic one).
    """
    n_seeds = check_int(n_seeds, "n_seeds", minimum=1)
    factorizer, rows = bank.factorizer, bank.activations
    k = bank.components.shape[0]
    if rows is None:
        return {"per_concept": None, "mean": None, "seeds": [],
                "note": "the factorized rows were not kept (a loaded explanation): no refits"}
    params = factorizer.get_params()
    seeded = "random_state" in params
    # NMF's NNDSVD initialisations come from an SVD of the rows: the seed would barely move
    # them. A random initialisation per seed makes the refits vary what a seed is meant to vary.
    init = "random" if seeded and _deterministic_init(factorizer) else None
    absolute = not getattr(factorizer, "nonnegative_codes", True)
    base = _unit(np.asarray(bank.components))
    data = rows.numpy() if hasattr(rows, "numpy") else np.asarray(rows)
    seeds = [int(seed) + 1000 + s for s in range(n_seeds)]
    matched = np.zeros((n_seeds, k))
    size = max(k + 1, int(round(SUBSET * data.shape[0])))
    for i, other in enumerate(seeds):
        rows = np.sort(np.random.default_rng(other).choice(data.shape[0], min(size, data.shape[0]),
                                                           replace=False))
        estimator = clone(factorizer)
        if seeded:
            estimator.set_params(random_state=other)
        if init is not None:
            estimator.set_params(init=init)
        refit = estimator.fit(data[rows])
        similarity = base @ _unit(np.asarray(refit.components_)).T
        if absolute:
            similarity = np.abs(similarity)
        r, c = linear_sum_assignment(similarity, maximize=True)
        matched[i, r] = similarity[r, c]
    per_concept = matched.mean(axis=0)
    return {"per_concept": [float(v) for v in per_concept], "mean": float(per_concept.mean()),
            "seeds": seeds, "subset": SUBSET, "init": init,
            "note": None if seeded else f"{type(factorizer).__name__} has no random_state: "
                                        "only the row subsets vary"}


def _deterministic_init(factorizer: Any) -> bool:
    """Whether ``factorizer`` is an NMF whose initialisation does not come from its seed."""
    from ..concepts import NMF

    return isinstance(factorizer, NMF) and factorizer.get_params().get("init") != "random"


def interval_overlaps(importance: Any) -> dict[str, Any]:
    """Widths of the intervals and the consecutive ranked pairs whose intervals overlap."""
    low, high = importance.ci_low, importance.ci_high
    if low is None or high is None:
        return {"width": None, "unresolved_pairs": [], "top_separated": None}
    order = np.argsort(-importance.importances, kind="stable")
    pairs = [(int(a), int(b)) for a, b in zip(order[:-1], order[1:])
             if np.isfinite(low[a]) and np.isfinite(high[b]) and low[a] <= high[b]]
    top = (bool(low[order[0]] > high[order[1]]) if len(order) > 1
           and np.isfinite(low[order[0]]) else None)
    return {"width": [float(v) for v in (high - low)], "unresolved_pairs": pairs,
            "top_separated": top}


def trust(cc: Any, *, n_seeds: int = 3, seed: int = 0, ground_truth: Any = None) -> dict[str, Any]:
    """The trust summary of a :class:`~conceptkit.ClassConcepts` (see the module docstring).

    ``ground_truth``: ``(images, masks, part_names)`` of the class (``masks`` ``(N, P, H, W)``
    bool), or a dict with those keys and optionally ``model`` and ``causal_parts``.
    """
    out: dict[str, Any] = {"stability": concept_stability(cc.bank, n_seeds, seed),
                           "intervals": interval_overlaps(cc.importance),
                           "near_duplicates": [], "evaluation": None, "notes": []}
    finder = getattr(cc, "near_duplicates", None)
    if callable(finder):
        out["near_duplicates"] = [tuple(int(i) for i in pair["concepts"]) for pair in finder()]
    if ground_truth is not None:
        out["evaluation"] = _evaluation(cc, ground_truth)
    out["notes"] = _notes(out)
    return out


def _evaluation(cc: Any, ground_truth: Any) -> dict[str, Any]:
    from ..evaluate import class_row, faithfulness  # evaluate sits above the pipeline

    if isinstance(ground_truth, dict):
        truth = dict(ground_truth)
    else:
        images, masks, names = ground_truth
        truth = {"images": images, "masks": masks, "part_names": names}
    model = truth.get("model") or cc._require_model().model
    result = faithfulness(cc, model, truth["images"], truth["masks"], truth.get("part_names"),
                          progress=False)
    return class_row(result, cc.class_id, cc.class_name, truth.get("causal_parts"))


def _notes(summary: dict[str, Any]) -> list[str]:
    notes = []
    stability = summary["stability"]
    if stability["per_concept"] is not None:
        shaky = [j for j, v in enumerate(stability["per_concept"]) if v < STABLE]
        if shaky:
            start = ("from another random start " if stability.get("init") == "random"
                     else "")
            notes.append(f"concepts {shaky} change with the seed (matched cosine below {STABLE} "
                         f"across {len(stability['seeds'])} refits, each {start}on "
                         f"{stability.get('subset', SUBSET):.0%} of the rows): read them with "
                         f"care.")
    if stability.get("note"):
        notes.append(f"stability: {stability['note']}.")
    intervals = summary["intervals"]
    if intervals["top_separated"] is False:
        notes.append("the top concept's interval overlaps the second's: the data do not say "
                     "which of the two matters more.")
    if intervals["unresolved_pairs"]:
        notes.append(f"{len(intervals['unresolved_pairs'])} consecutive pairs in the ranking have "
                     "overlapping intervals.")
    if summary["near_duplicates"]:
        notes.append(f"near-duplicate concepts: {summary['near_duplicates']}.")
    evaluation = summary["evaluation"]
    if evaluation is not None and evaluation.get("most_relied_significant") is False:
        why = evaluation.get("most_relied_note") or (
            "painting out any one part leaves this class: the model relies on no single part "
            f"these images show (the largest drop, "
            f"{evaluation.get('most_relied_part') or 'of no part shown'}, is not told from 0)")
        notes.append(f"against the ground truth, {why.rstrip('.')}; so the evaluation does not "
                     f"judge where the top concept sits.")
    elif evaluation is not None and evaluation.get("top_on_most_relied", False) is None:
        notes.append("against the ground truth, no part is shown in enough of these images to "
                     "say which part a concept sits on: the evaluation does not judge the top "
                     "concept (fit more images of the class).")
    elif evaluation is not None and evaluation.get("top_on_most_relied") is False:
        tied = evaluation.get("most_relied_parts") or []
        if evaluation.get("top_on_most_relied_parts"):
            notes.append(f"against the ground truth, the top concept sits on "
                         f"{evaluation['top_part']}, which these images cannot tell apart from "
                         f"the part the model relies on most ({evaluation['most_relied_part']}): "
                         f"the model relies on {_enumerate(tied)} alike.")
        else:
            notes.append("against the ground truth, the top concept is NOT on the part the model "
                         "relies on most.")
    return notes
