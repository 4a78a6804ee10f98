"""What the report and the metrics of one explanation are assembled from.

The report renders what it is handed; this module computes it from a
:class:`~conceptkit.ClassConcepts` (taken by duck typing, so that the result module can call
these functions without an import cycle).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._validation import check_int, describe, id_list
from ._examples import fewer_exemplars_quietly


def compute_metrics(cc: Any, *, stability: bool = False, seed: int | None = 0) -> dict[str, dict]:
    """Extraction metrics of the bank and importance metrics of the importances.

    Each metric is computed on its own: one that does not apply to this explanation (the Hoyer
    sparsity of a single concept) gets the value None and a ``"reason"``, and the others are
    kept."""
    from ..concepts.metrics import EXTRACTION_METRICS
    from ..importance.metrics import CDeletion, CInsertion, CMuFidelity

    bank = cc.bank
    out: dict[str, dict] = {"extraction": {}, "importance": {}}
    if bank.activations is not None:
        acts = bank.activations.numpy()
        recon = np.asarray(bank.decode(bank.codes.numpy()))
        codes = bank.codes.numpy()
        for name, metric in EXTRACTION_METRICS.items():
            if metric.inputs == "refit" and not stability:
                continue  # refits the factorizer several times: only when asked
            if name == "hoyer" and codes.shape[1] < 2:
                out["extraction"][name] = _not_applicable(
                    metric.higher_is_better, f"the Hoyer sparsity compares a code's concepts: it "
                    f"needs at least 2 concepts, and this explanation has {codes.shape[1]}")
                continue
            out["extraction"][name] = _evaluated(
                lambda metric=metric: metric.evaluate(acts, recon, codes, bank.factorizer,
                                                      seed=seed), metric.higher_is_better)
    # no part of the model reads the CLS feature maps of tokens="cls": no metrics through h
    h = (cc.model_at_layer.maps_head
         if cc.model_at_layer is not None and cc.params.get("tokens") != "cls" else None)
    if h is not None and cc.activations is not None:
        per_input = cc.importance.per_input
        known = cc._bank_with_codes()  # one encoding of the class activations for all metrics
        for metric in (CDeletion(), CInsertion(), CMuFidelity(seed=seed)):
            out["importance"][metric.name] = _evaluated(
                lambda metric=metric: metric.evaluate(h, cc.activations, known, cc.class_id,
                                                      per_input, context=cc.context).score,
                metric.higher_is_better)
    return out


def _evaluated(compute: Any, higher_is_better: bool) -> dict[str, Any]:
    """One metric's entry. A metric that refuses this explanation's numbers (a ValueError, e.g.
    too few concepts or rows for it) is not applicable: value None with the metric's own
    message as the ``"reason"``, which the report shows; any other error is a bug and
    propagates."""
    try:
        value = compute()
    except ValueError as err:
        return _not_applicable(higher_is_better, str(err).strip() or type(err).__name__)
    return _metric(value, higher_is_better)


def _not_applicable(higher_is_better: bool, reason: str) -> dict[str, Any]:
    return {"value": None, "higher_is_better": bool(higher_is_better),
            "reason": f"not applicable: {reason}"}


def _metric(value: Any, higher_is_better: bool) -> dict[str, Any]:
    value = float(getattr(value, "value", value))
    return {"value": value if np.isfinite(value) else None, "higher_is_better": bool(higher_is_better)}


def _concept_labels(labels: Any, k: int) -> dict[int, str]:
    """The report's ``labels``: a mapping of concept indices (0 to ``k - 1``) to strings; a
    string, a list or a key that is no concept of this explanation is refused."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise TypeError(f"`labels` must be a dict {{concept index: label}}; got "
                        f"{describe(labels)}.")
    checked = {}
    for key, label in labels.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"`labels` keys must be concept indices (int); got {key!r}.")
        if not 0 <= int(key) < k:
            raise ValueError(f"`labels` has concept {int(key)}, but this explanation has {k} "
                             f"concepts (0 to {k - 1}).")
        if not isinstance(label, str):
            raise TypeError(f"`labels` values must be str; got {describe(label)} for concept "
                            f"{int(key)}.")
        checked[int(key)] = label
    return checked


def build_class_report(cc: Any, *, n_images: int = 6, n_exemplars: int = 10,
                       labels: dict[int, str] | None = None, notes: list[str] | None = None,
                       extra_metrics: dict | None = None, trust: dict | None = None) -> Any:
    """The :class:`~conceptkit.report.ClassReport` of ``cc``: what its report page shows.

    ``n_images`` class images with their concept maps, ``n_exemplars`` exemplars per concept,
    concept ``labels`` (a dict ``{concept index: label}``, indices 0 to k - 1; default: the
    concept's name after ``cc.name_concepts``, else ``"concept <i>"``), ``notes`` and ``extra_metrics`` (a group of
    metrics in the report's ``{group: {name: {"value", "higher_is_better"}}}`` form) added to the
    explanation's own metrics. ``trust`` (from ``cc.trust()``) adds each concept's stability
    across seeds, a "trust" group of metrics and the trust notes. Names (with their scores,
    runner-ups and naming trust) and MACO visualisations kept on ``cc`` are shown too.
    :func:`conceptkit.report.write_class_report` draws it.
    """
    from ..report import ClassReport, ConceptSummary
    from ..report._figures import distinct_labels
    from ..report._images import DISPLAY_CHANNELS, display_rgb
    from ._naming import name_details, visualization_picture
    from ._notes import class_notes

    n_images = check_int(n_images, "n_images", minimum=1)
    _check_trust(trust)
    if cc.images is None and (cc.saved_images is None or cc.saved_maps is None
                              or cc.saved_images.shape[0] == 0):
        raise ValueError("this explanation was loaded from a file saved without class images "
                         "(`save(n_images=0)`): a report shows at least one image with its maps. "
                         "Save the fitted explanation again with `n_images` >= 1.")
    order = cc.ranking
    k = cc.n_concepts
    labels = _concept_labels(labels, k)
    ci_low = cc.ci_low if cc.ci_low is not None else np.full(k, np.nan)
    ci_high = cc.ci_high if cc.ci_high is not None else np.full(k, np.nan)
    # a name given to several concepts gets each concept's index ("red disk [2]"), so that the
    # legends and tables tell them apart
    shown_labels = distinct_labels([labels.get(c, cc.concept_label(c)) for c in range(k)])

    def label(c: int) -> str:
        return shown_labels[int(c)]

    duplicates: dict[int, list[str]] = {}
    for pair in cc.near_duplicates():
        i, j = pair["concepts"]
        duplicates.setdefault(i, []).append(label(j))
        duplicates.setdefault(j, []).append(label(i))
    stability = (trust or {}).get("stability", {}).get("per_concept")
    names = getattr(cc, "names", None)
    visualizations = getattr(cc, "visualizations", {})
    concepts = []
    for c in order:
        with fewer_exemplars_quietly():  # the page shows the exemplars there are
            ex, ids = cc.top_examples(int(c), n_exemplars, image_size=min(64, _side(cc)))
        extra = {} if names is None else name_details(names[int(c)], names.score_name)
        share = None if names is None or names[int(c)].name is None else names[int(c)].part_share
        if share is not None:  # "dissect": how much of where the concept fires is the part
            extra["top pixels on the named part"] = f"{share:.0%}"
        if int(c) in duplicates:
            extra["near-duplicate of"] = ", ".join(duplicates[int(c)])
        if stability is not None:
            extra["stability across seeds"] = f"{stability[c]:.2f}"
        vis = visualizations.get(int(c))
        concepts.append(ConceptSummary(index=int(c), label=label(c),
                                       importance=float(cc.importances[c]), ci_low=float(ci_low[c]),
                                       ci_high=float(ci_high[c]),
                                       exemplars=display_rgb(ex.numpy(), "exemplars"),
                                       exemplar_sources=id_list(ids), extra=extra,
                                       visualization=None if vis is None
                                       else display_rgb(visualization_picture(vis),
                                                        "visualization")))
    if cc.images is not None:
        shown = cc.images[:n_images]
        maps = cc._shown_maps(n_images)
        maps_kind = cc._auto_kind(None)
    else:
        shown = cc.saved_images[:n_images]
        maps = cc.saved_maps[:n_images].float()
        maps_kind = cc.saved_maps_kind or ""
    channels = int(shown.shape[1])
    shown = display_rgb(shown, "images")
    if cc.activations is None and getattr(cc, "saved_metrics", None) is None:
        metrics = {}  # loaded without activations or saved metrics: there are none to show
    else:  # a metric that does not apply has value None and a reason; nothing is swallowed
        metrics = cc.compute_metrics()
    if extra_metrics:
        metrics = {**metrics, **extra_metrics}
    notes = list(notes or []) + _naming_notes(getattr(cc, "names", None))
    if channels in DISPLAY_CHANNELS:
        notes.append(f"The model reads {channels}-channel images; the pictures of this page are "
                     f"{DISPLAY_CHANNELS[channels]}, for display only.")
    if trust is not None:
        metrics = {**metrics, "trust": _trust_metrics(trust)}
        notes += [f"Trust: {note}" for note in trust.get("notes", [])]
    return ClassReport(
        class_id=int(cc.class_id), class_name=cc.class_name, method=cc.method,
        importance_method=cc.importance.method, layer=cc.layer, model_name=cc.model_name,
        concepts=concepts, images=shown.numpy(),
        image_ids=id_list(cc.image_ids[:n_images] if cc.image_ids is not None
                          else range(shown.shape[0])),
        maps=maps[:, order].numpy(), per_image_importance=cc.importance.per_input[:, order],
        codes=cc.bank.codes.numpy()[:, order], metrics=metrics,
        notes=[*class_notes(cc, label), *notes],
        timings=dict(cc.timings), maps_kind=maps_kind,
        maps_read="cls" if (cc.params or {}).get("tokens") == "cls" else "",
        seed=(cc.params or {}).get("seed"), importance_params=dict(cc.importance.params or {}))


def write_class_report(cc: Any, out_dir: str | os.PathLike, *, return_entry: bool = False,
                       index_link: str | None = None, **build_options: Any) -> Any:
    """Deprecated in 0.2 (reached as ``conceptkit.pipeline.write_class_report``): use
    ``ClassConcepts.report`` or :func:`build_class_report` with
    :func:`conceptkit.report.write_class_report`. Returns the page, or the index entry."""
    from ..report import index_entry
    from ..report import write_class_report as render

    report = build_class_report(cc, **build_options)
    page = render(report, out_dir, index_link=index_link)
    return index_entry(report, page, out_dir) if return_entry else page


#: What a ``trust`` summary (``ClassConcepts.trust()``) holds, and of which type.
TRUST_KEYS = {"stability": dict, "intervals": dict, "near_duplicates": list}


def _check_trust(trust: Any) -> None:
    """Refuse a ``trust`` that is not a summary from ``ClassConcepts.trust()``."""
    if trust is None:
        return
    fix = "pass the summary `cc.trust()` returns (or leave `trust` out)"
    if not isinstance(trust, dict):
        raise TypeError(f"`trust` must be a dict from ClassConcepts.trust(); got "
                        f"{type(trust).__name__} {trust!r:.40}: {fix}.")
    wrong = [key for key, kind in TRUST_KEYS.items() if not isinstance(trust.get(key), kind)]
    if wrong:
        raise ValueError(f"`trust` lacks {', '.join(repr(k) for k in wrong)} (or has the wrong "
                         f"type there): {fix}.")
    if not isinstance(trust["intervals"].get("unresolved_pairs", []), list):
        raise ValueError(f"`trust['intervals']['unresolved_pairs']` must be a list: {fix}.")


def _trust_metrics(trust: dict) -> dict[str, dict]:
    out = {}
    if trust["stability"].get("mean") is not None:
        out["mean stability across seeds"] = _metric(trust["stability"]["mean"], True)
    separated = trust["intervals"].get("top_separated")
    if separated is not None:
        out["top concept separated (1 = yes)"] = _metric(float(separated), True)
    out["unresolved ranked pairs"] = _metric(len(trust["intervals"].get("unresolved_pairs", [])),
                                             False)
    out["near-duplicate pairs"] = _metric(len(trust["near_duplicates"]), False)
    from ..evaluate import METRIC_COLUMNS  # evaluate sits above the pipeline

    # the evaluation row's scores only: its identifiers (class_id, top_concept, n_images) and
    # the drop of the most relied-on part are not scores with a better direction
    for key, value in (trust.get("evaluation") or {}).items():
        if key in METRIC_COLUMNS and isinstance(value, (bool, int, float, np.bool_, np.integer,
                                                        np.floating)):
            out[f"ground truth: {key}"] = _metric(float(value), METRIC_COLUMNS[key])
    return out


def _naming_notes(names: Any) -> list[str]:
    """One line saying how the concepts were named (nothing when they were not)."""
    if names is None:
        return []
    settings = ", ".join(f"{k}={v}" for k, v in names.params.items()
                         if isinstance(v, (int, float, str, bool)))
    return [f"Concept names: method {names.method!r}, score = {names.score_name}, trust = AUC of "
            f"the concept's activation on probe inputs showing the named thing vs the others "
            f"(CoSy-style); {settings}.",
            *(f"Concept names: {note}" for note in getattr(names, "notes", ()))]


def _side(cc: Any) -> int:
    if cc.images is not None:
        return int(cc.images.shape[-1])
    return int(cc.bank.provenance.source_size[1])
