"""What an explanation should tell its reader in words: concepts that look like one concept,
importances that need a sentence to be read right, and a short summary for ``repr``.

Functions take a :class:`~conceptkit.ClassConcepts` by duck typing (no import cycle).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

#: Two concepts whose codes correlate at least this much over the fitted rows are flagged.
DUPLICATE_CORRELATION = 0.95
#: ... or that share at least this fraction of their top exemplars.
DUPLICATE_SHARED_EXEMPLARS = 0.8
#: Top exemplars compared.
DUPLICATE_EXEMPLARS = 10


def near_duplicates(bank: Any, correlation: float = DUPLICATE_CORRELATION,
                    shared: float = DUPLICATE_SHARED_EXEMPLARS,
                    n_exemplars: int = DUPLICATE_EXEMPLARS) -> list[dict[str, Any]]:
    """Pairs of concepts that look like one: Pearson correlation of their codes over the
    fitted rows ``>= correlation``, or at least ``shared`` of their top ``n_exemplars`` rows in
    common. Each pair: ``{"concepts": (i, j), "correlation": r, "shared_exemplars": s,
    "n_exemplars": n}`` (``r`` is None for a constant code column)."""
    codes = np.asarray(bank.codes, dtype=np.float64)
    k = codes.shape[1]
    if k < 2 or codes.shape[0] < 2:
        return []
    centred = codes - codes.mean(axis=0)
    norms = np.sqrt((centred ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centred.T @ centred) / np.outer(norms, norms)
    n = min(n_exemplars, codes.shape[0])
    tops = [set(np.argsort(-codes[:, c], kind="stable")[:n].tolist()) for c in range(k)]
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            r = float(corr[i, j]) if norms[i] > 0 and norms[j] > 0 else None
            common = len(tops[i] & tops[j])
            if (r is not None and r >= correlation) or common >= shared * n:
                pairs.append({"concepts": (i, j), "correlation": r, "shared_exemplars": common,
                              "n_exemplars": n})
    return pairs


def duplicate_sentence(pair: dict[str, Any], label: Any) -> str:
    i, j = pair["concepts"]
    r = pair["correlation"]
    how = [] if r is None else [f"their codes correlate at r = {r:.2f}"]
    how.append(f"they share {pair['shared_exemplars']} of their top {pair['n_exemplars']} "
               f"exemplars")
    return (f"{label(i)} and {label(j)} look like one concept: {' and '.join(how)}. Read them "
            f"together (or fit fewer concepts).")


def importance_notes(importance: Any, label: Any, n_images: int) -> list[str]:
    """Sentences for Sobol total indices above 1, concepts without a region, a saturated
    class probability (pixel ablation) and intervals that start below 0."""
    notes = []
    values = np.asarray(importance.importances, dtype=np.float64)
    params = importance.params or {}
    total = importance.method == "sobol" and params.get("order", "total") == "total"
    above = np.flatnonzero(values > 1.0)
    if total and above.size:
        names = _enumerate([f"{label(int(c))} ({values[c]:.3g})" for c in above])
        notes.append(
            f"Total Sobol index above 1 for {names}. A concept's true total index is at most 1 "
            f"(its share of the class logit's variance, interactions included); the excess is "
            f"estimation error of the {params.get('n_designs', '?')} designs per image. Read it as "
            f"'carries (nearly) all of the variance'; more designs (n_designs) shrink the error.")
    empty = [int(c) for c in params.get("no_region") or []]
    if empty:
        names = _enumerate([label(c) for c in empty])
        verb = "has" if len(empty) == 1 else "have"
        notes.append(
            f"{names} {verb} no region in any of these {n_images} images (the map is nowhere "
            f"positive and at or above its threshold), so nothing was painted out: the "
            f"importance 0 is not a measurement. Read it as 'not found in these images'.")
    saturated = params.get("saturated")
    if saturated is not None:
        what = (f"is exactly 0 or 1 (to float64) on {len(saturated)} of these {n_images} "
                f"images: the softmax is saturated, so painting a concept out moves it by "
                f"nothing or next to nothing there" if saturated else
                f"does not move when any region is painted out, on any of these {n_images} "
                f"images")
        notes.append(
            f"The class probability {what}, and those importances are 0 or rounding rather "
            f"than a measurement. Read the class logit's drop, which does not saturate: "
            f"ConceptExplainer(..., importance_kwargs={{\"score\": \"logit\"}}).")
    low, high = importance.ci_low, importance.ci_high
    if low is not None:
        low = np.asarray(low, dtype=np.float64)
        upper = (np.full_like(low, np.inf) if high is None
                 else np.asarray(high, dtype=np.float64))
        negative = np.flatnonzero(upper < 0)  # the whole interval below 0
        if negative.size:
            names = _enumerate([label(int(c)) for c in negative])
            subject = (f"The confidence interval of {names} lies" if negative.size == 1 else
                       f"The confidence intervals of {names} lie")
            notes.append(
                f"{subject} wholly below 0: over these {n_images} images, removing "
                f"{'this concept' if negative.size == 1 else 'each of these concepts'} "
                f"raises the class score on average. It counts against the class, not for it "
                f"(images of another class, or a concept the model reads as evidence for a "
                f"rival class).")
        below = np.flatnonzero((low < 0) & (upper >= 0))
        if below.size:
            names = _enumerate([label(int(c)) for c in below])
            never = " (total Sobol indices themselves are never negative)" if total else ""
            subject = (f"The confidence interval of {names} starts below 0 and ends"
                       if below.size == 1 else
                       f"The confidence intervals of {names} start below 0 and end")
            kind = ("The interval is a Student-t interval" if below.size == 1 else
                    "Each interval is a Student-t interval")
            notes.append(
                f"{subject} above it: over these {n_images} images the mean importance cannot "
                f"be told from 0{never}. {kind} of the per-image values.")
    return notes


def _enumerate(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


#: What the ground-truth worlds measured for explanations of patch tokens (issue 13;
#: BENCHMARKS.md, "A sparse autoencoder on transformer tokens": ICE with the token factorizer,
#: coefficient maps, pixel ablation, the shapes and context worlds' ViTs, seeds 0-4; "A textures
#: ViT the defaults were not chosen on", seeds 0-2; "Through the CLS token", seeds 0-4), said on
#: every explanation of patch tokens.
TOKEN_LIMITATION = (
    "This layer gives transformer tokens. This explanation read the patch tokens. On "
    "conceptkit's shapes and context ViT worlds, explanations of patch tokens put the top "
    "concept on a part the model relies on most in 0.90 and 1.00 of the classes (parts whose "
    "reliance the images cannot tell apart count alike), pointing at it in 0.88 and 0.95 of "
    "the images; their order of the other concepts followed the model's measured reliance less "
    "closely than on convolutional layers (Spearman 0.62 and 0.74, against 0.76-0.90 on the "
    "convolutional worlds). Trust the top concept more than the ranking of the rest. On the "
    "textures world's ViT, whose patch tokens barely encode which texture they show (the CLS "
    "token does), the top concept was on the most relied-on texture in only 0.67 of the "
    "classes and the Spearman was 0.29: concepts of the tokens cannot point at what the tokens "
    "do not hold (BENCHMARKS.md). Explaining through the CLS token instead put it there in "
    "1.00 of the classes of that world (Spearman 0.71, against 0.50 and 0.15; seeds 0-4) and, "
    "over the three ViT worlds, fell short of issue 13's bar by less (0.70 against 2.33). It "
    "is what tokens='auto' (the default) reads on a transformer that classifies from its CLS "
    "token when the explanation is ICE with pixel ablation; pass tokens='cls' to ask for it.")

#: The note on every explanation made with ``tokens="cls"``.
CLS_NOTE = (
    "These concepts are of the CLS token each window of the image gives when shown alone "
    "(what tokens='auto', the default, reads on a transformer that classifies from its CLS "
    "token): their maps are as coarse as the windows (a concept's code spreads over its "
    "window), and only pixel ablation scores them; pass tokens='patches' for Sobol or gradient "
    "importances, gradient or pixel maps, MACO pictures or naming by classes. On the three ViT ground-truth models "
    "(seeds 0-4) the top concept sat on the part the model relies on most in 0.73, 0.95 and "
    "1.00 of the classes (shapes, context, and a textures ViT whose patch tokens barely "
    "encode the texture), against 0.70, 0.95 and 0.50 with patch tokens; Spearman with the "
    "measured reliance 0.68, 0.66 and 0.71 against 0.62, 0.74 and 0.15 (BENCHMARKS.md).")


def class_notes(cc: Any, label: Any = None) -> list[str]:
    """Every note of an explanation: near-duplicate concepts, importance notes, then what the
    ground-truth worlds measured for explanations of transformer tokens (when the layer gives
    them). Concepts are named by ``label`` (default ``cc.concept_label``; a report passes the
    labels its table and figures show)."""
    label = cc.concept_label if label is None else label
    notes = [duplicate_sentence(pair, label) for pair in cc.near_duplicates()]
    n_images = int(cc.importance.per_input.shape[0])
    notes += importance_notes(cc.importance, label, n_images)
    found = (cc.bank.extra or {}).get("clusters_found")
    if isinstance(found, int) and found > cc.n_concepts:
        notes.append(f"ACE kept {cc.n_concepts} of the {found} clusters it found: the others "
                     f"came from too few distinct images (ACE's outlier rule, "
                     f"`min_cluster_size`), so this explanation has fewer concepts than asked.")
    if (cc.params or {}).get("tokens") == "cls":
        notes.append(CLS_NOTE)
    elif (cc.params or {}).get("layer_gives_tokens"):
        notes.append(TOKEN_LIMITATION)
    return notes


def result_repr(cc: Any) -> str:
    """A few lines: what was explained, how, the top concepts, what is held in memory."""
    order = cc.ranking[:3]
    top = ", ".join(f"{cc.concept_label(int(c))} {cc.importances[c]:.3g}" for c in order)
    more = ", ..." if cc.n_concepts > 3 else ""
    if cc.images is not None:
        held = f"{cc.images.shape[0]} fitted images in memory"
    else:
        n_saved = 0 if cc.saved_maps is None else int(cc.saved_maps.shape[0])
        held = (f"loaded from a file: concept_maps() returns the maps of the {n_saved} saved "
                f"images only")
    return (f"ClassConcepts(class {cc.class_id} {cc.class_name!r}, {cc.n_concepts} concepts, "
            f"{cc.method} at {cc.layer!r} of {cc.model_name}, {cc.importance.method} importance;"
            f" top: {top}{more}; {held})")


class MetricsTable(dict):
    """The metrics of an explanation, a plain dict.

    It is also callable, for code written when ``metrics`` was a method: ``result.metrics()``
    still works (with a :class:`DeprecationWarning`) and so does
    ``result.metrics(stability=True)``, which calls :meth:`ClassConcepts.compute_metrics`.
    """

    def __init__(self, values: dict, owner: Any = None):
        super().__init__(values)
        self._owner = owner

    def __call__(self, **kwargs: Any) -> dict:
        warnings.warn("`ClassConcepts.metrics` is a property now (like `ClassReport.metrics`): "
                      "write `result.metrics`, or `result.compute_metrics(stability=..., "
                      "seed=...)` for other settings; calling it is removed in 0.3.",
                      DeprecationWarning, stacklevel=2)
        if kwargs and self._owner is not None:
            return self._owner.compute_metrics(**kwargs)
        return self
