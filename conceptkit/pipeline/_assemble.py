"""What the report and the metrics of one explanation are assembled from.

The report renders what it is handed; this module computes it from a
:class:`~conceptkit.ClassConcepts` (taken by duck typing, so that the result module can call
these functions without an import cycle).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def compute_metrics(cc: Any, *, stability: bool = False, seed: int | None = 0) -> dict[str, dict]:
    """Extraction metrics of the bank and importance metrics of the importances."""
    from ..concepts import metrics as cm
    from ..importance.metrics import CDeletion, CInsertion, CMuFidelity

    bank = cc.bank
    out: dict[str, dict] = {"extraction": {}, "importance": {}}
    if bank.activations is not None:
        acts = bank.activations.numpy()
        recon = np.asarray(bank.decode(bank.codes.numpy()))
        codes = bank.codes.numpy()
        out["extraction"]["relative_l2"] = _metric(cm.relative_l2(acts, recon), False)
        out["extraction"]["sparsity_l0"] = _metric(cm.sparsity_l0(codes), False)
        out["extraction"]["hoyer"] = _metric(cm.hoyer(codes), True)
        out["extraction"]["frechet_distance"] = _metric(cm.frechet_distance(acts, recon), False)
        if stability:
            out["extraction"]["stability"] = _metric(
                cm.stability(bank.factorizer, acts, seed=seed), True)
    h = cc.model_at_layer.maps_head if cc.model_at_layer is not None else None
    if h is not None and cc.activations is not None:
        per_input = cc.importance.per_input
        known = cc._bank_with_codes()  # one encoding of the class activations for all metrics
        for metric in (CDeletion(), CInsertion(), CMuFidelity(seed=seed)):
            result = metric.evaluate(h, cc.activations, known, cc.class_id, per_input,
                                     context=cc.context)
            out["importance"][metric.name] = _metric(result.score, metric.higher_is_better)
    return out


def _metric(value: Any, higher_is_better: bool) -> dict[str, Any]:
    value = float(getattr(value, "value", value))
    return {"value": value if np.isfinite(value) else None, "higher_is_better": bool(higher_is_better)}


def write_class_report(cc: Any, out_dir: str | os.PathLike, *, n_images: int = 6,
                       n_exemplars: int = 10, labels: dict[int, str] | None = None,
                       notes: list[str] | None = None, extra_metrics: dict | None = None,
                       return_entry: bool = False, index_link: str | None = None) -> Any:
    """Assemble the :class:`~conceptkit.report.ClassReport` of ``cc`` and write it."""
    from ..report import ClassReport, ConceptSummary, index_entry
    from ..report import write_class_report as render
    from ._naming import name_details, visualization_picture

    order = cc.ranking
    k = cc.n_concepts
    labels = labels or {}
    ci_low = cc.ci_low if cc.ci_low is not None else np.full(k, np.nan)
    ci_high = cc.ci_high if cc.ci_high is not None else np.full(k, np.nan)
    names = getattr(cc, "names", None)
    shown_labels = cc.labels
    visualizations = getattr(cc, "visualizations", {})
    concepts = []
    for c in order:
        ex, ids = cc.top_examples(int(c), n_exemplars, size=min(64, _side(cc)))
        extra = {} if names is None else name_details(names[int(c)], names.score_name)
        vis = visualizations.get(int(c))
        concepts.append(ConceptSummary(index=int(c), label=labels.get(int(c), shown_labels[int(c)]),
                                       importance=float(cc.importances[c]), ci_low=float(ci_low[c]),
                                       ci_high=float(ci_high[c]), exemplars=ex.numpy(),
                                       exemplar_sources=[int(i) for i in ids], extra=extra,
                                       visualization=None if vis is None
                                       else visualization_picture(vis)))
    if cc.images is not None:
        shown = cc.images[:n_images]
        maps = cc._shown_maps(n_images)
    else:
        shown = cc.saved_images[:n_images]
        maps = cc.saved_maps[:n_images].float()
    try:
        metrics = cc.metrics()
    except ValueError:
        metrics = {}
    if extra_metrics:
        metrics = {**metrics, **extra_metrics}
    report = ClassReport(
        class_id=int(cc.class_id), class_name=cc.class_name, method=cc.method,
        importance_method=cc.importance.method, layer=cc.layer, model_name=cc.model_name,
        concepts=concepts, images=shown.numpy(),
        image_ids=[int(i) for i in (cc.image_ids[:n_images] if cc.image_ids is not None
                                    else range(shown.shape[0]))],
        maps=maps[:, order].numpy(), per_image_importance=cc.importance.per_input[:, order],
        codes=cc.bank.codes.numpy()[:, order], metrics=metrics,
        notes=list(notes or []) + _naming_notes(names), timings=dict(cc.timings))
    page = render(report, out_dir, index_link=index_link)
    return index_entry(report, page, out_dir) if return_entry else page


def _naming_notes(names: Any) -> list[str]:
    """One line saying how the concepts were named (nothing when they were not)."""
    if names is None:
        return []
    settings = ", ".join(f"{k}={v}" for k, v in names.params.items()
                         if isinstance(v, (int, float, str, bool)))
    return [f"Concept names: method {names.method!r}, score = {names.score_name}, trust = AUC of "
            f"the concept's activation on probe inputs showing the named thing vs the others "
            f"(CoSy-style); {settings}."]


def _side(cc: Any) -> int:
    if cc.images is not None:
        return int(cc.images.shape[-1])
    return int(cc.bank.provenance.source_size[1])
