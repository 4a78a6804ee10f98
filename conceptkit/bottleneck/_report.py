"""A self-contained HTML report for one concept bottleneck model.

``write_cbm_report`` writes into ``out_dir``:

- ``index.html`` — one page with every figure embedded (base64 PNG) and the key numbers, so the
  file can be mailed or opened anywhere on its own (written by :func:`conceptkit.report.write_page`,
  the pages of the explanation reports' style);
- ``weights.png`` (class × concept head weights), ``concept_accuracy.png`` (per-concept
  accuracy and F1), ``interventions.png`` (task accuracy vs concepts intervened, mean ± std);
- ``metrics.json`` — every number shown, and more (curves, losses, per-concept metrics).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import describe
from ..io import json_ready, write_json
from ._data import as_tensor
from ._intervene import InterventionCurve
from ._metrics import CBMEvaluation, LeakageReport
from ._model import ConceptBottleneckModel, check_cbm
from ._train import TrainHistory

DPI = 120


def concept_class_weights(model: ConceptBottleneckModel,
                          concepts: torch.Tensor | None = None) -> np.ndarray:
    """How each concept moves each class logit: ``(n_classes, n_concepts)``.

    For a linear head, its weight matrix. For an MLP head, the Jacobian of the class logits with
    respect to the bottleneck averaged over ``concepts`` (bottleneck values ``(N, k)``; default a
    single point at 0.5 for sigmoid bottlenecks, the calibrated midpoint for logit ones).
    """
    model = check_cbm(model)
    if model.head_kind == "linear":
        return model.head.weight.detach().cpu().double().numpy()
    if concepts is None:
        concepts = model.true_to_bottleneck(torch.full((1, model.n_concepts), 0.5))
    concepts = as_tensor(concepts, "concepts")
    if concepts.ndim != 2 or concepts.shape[1] != model.n_concepts or not concepts.shape[0]:
        raise ValueError(f"`concepts` must be bottleneck values of shape (N, "
                         f"{model.n_concepts}), one column per concept of the model; got shape "
                         f"{tuple(concepts.shape)}.")
    if not concepts.is_floating_point():
        raise TypeError(f"`concepts` must be floating-point bottleneck values; got dtype "
                        f"{concepts.dtype}.")
    values = concepts.detach().to(model.intervention_low).clone().requires_grad_(True)
    jac = []
    with torch.enable_grad():
        logits = model.predict_from_concepts(values)
        for c in range(model.n_classes):
            (grad,) = torch.autograd.grad(logits[:, c].sum(), values, retain_graph=True)
            jac.append(grad.mean(0))
    return torch.stack(jac).detach().cpu().double().numpy()


def _figures(model: ConceptBottleneckModel, weights: np.ndarray, evaluation: CBMEvaluation,
             curves: Mapping[str, InterventionCurve]) -> dict[str, Any]:
    # standalone Figures, as the class report draws them: no pyplot, so the user's backend
    # (a notebook's inline, a GUI) is never switched and nothing stays registered
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from ..report import Picture, figure_png

    pictures = {}
    k, n_classes = model.n_concepts, model.n_classes
    concept_names = [plain(name) for name in model.concept_names]
    fig = Figure(figsize=(1.0 + 0.55 * k, 1.2 + 0.45 * n_classes))
    ax = fig.add_subplot()
    bound = float(np.abs(weights).max()) or 1.0
    cmap, norm = colormaps["RdBu_r"], Normalize(-bound, bound)
    image = ax.imshow(weights, cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(k), concept_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n_classes), [plain(name) for name in model.class_names], fontsize=8)
    for (i, j), w in np.ndenumerate(weights):
        ax.text(j, i, f"{w:.1f}", ha="center", va="center", fontsize=6,
                color=_text_colour(cmap(norm(w))))
    fig.colorbar(image, ax=ax, label="weight")
    ax.set_title("Head weights (class × concept)")
    fig.tight_layout()
    pictures["weights"] = Picture("weights", "Head weights", figure_png(fig, DPI), "weights.png",
                                  "Class × concept weights of the head")

    fig = Figure(figsize=(1.5 + 0.5 * k, 3.6))
    ax = fig.add_subplot()
    x = np.arange(k)
    ax.bar(x - 0.2, evaluation.per_concept_accuracy, width=0.4, label="accuracy")
    ax.bar(x + 0.2, evaluation.per_concept_f1, width=0.4, label="F1")
    ax.set_xticks(x, concept_names, rotation=60, ha="right", fontsize=8)
    # room above the bars (scores are at most 1) for the legend, which covered the last bars
    ax.set_ylim(0, 1.28)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("test score")
    ax.legend(loc="upper right", fontsize=8, ncol=2, frameon=False)
    ax.set_title(f"Per-concept quality (mean accuracy {evaluation.concept_accuracy:.3f})")
    fig.tight_layout()
    pictures["concept_accuracy"] = Picture(
        "concept_accuracy", "Concept quality", figure_png(fig, DPI), "concept_accuracy.png",
        "Per-concept accuracy and F1 on the test split")

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    for policy, curve in curves.items():
        ax.plot(curve.n_intervened, curve.accuracy_mean, marker="o", markersize=3,
                label=plain(f"{policy} (area {curve.area:.3f})"))
        ax.fill_between(curve.n_intervened, curve.accuracy_mean - curve.accuracy_std,
                        curve.accuracy_mean + curve.accuracy_std, alpha=0.2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("concept groups intervened")
    ax.set_ylabel("task accuracy")
    ax.set_title("Test-time interventions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    pictures["interventions"] = Picture(
        "interventions", "Interventions", figure_png(fig, DPI), "interventions.png",
        "Task accuracy as true concepts replace predicted ones")
    return pictures


def _text_colour(rgba: Any) -> str:
    """Black or white, whichever reads on a cell of colour ``rgba`` (relative luminance)."""
    r, g, b = (float(v) for v in rgba[:3])
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.45 else "black"


def write_cbm_report(out_dir: str | os.PathLike, model: ConceptBottleneckModel,
                     evaluation: CBMEvaluation, curves: Mapping[str, InterventionCurve], *,
                     history: TrainHistory | None = None, leakage: LeakageReport | None = None,
                     weights: np.ndarray | None = None, extra: Mapping[str, Any] | None = None,
                     title: str = "Concept bottleneck model") -> Path:
    """Write ``index.html``, the PNG figures and ``metrics.json`` into ``out_dir``.

    Parameters
    ----------
    model : ConceptBottleneckModel
    evaluation : CBMEvaluation
        Test-split metrics from :func:`evaluate_cbm`.
    curves : dict of policy -> InterventionCurve
    history, leakage : optional
        Training history and leakage report, included when given.
    weights : np.ndarray, optional
        ``(n_classes, n_concepts)`` to show; default :func:`concept_class_weights`.
    extra : dict, optional
        More JSON-able numbers or settings (stored in the JSON; a number or a string is a row of
        the page's summary, a dict of them a table of its own, e.g. ``{"settings": {...}}``).

    Returns
    -------
    Path of ``index.html``.
    """
    model = check_cbm(model)
    if not isinstance(evaluation, CBMEvaluation):
        raise TypeError(f"`evaluation` must be a CBMEvaluation; got {describe(evaluation)}.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`out_dir` {str(out)!r} exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    weights = concept_class_weights(model) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (model.n_classes, model.n_concepts):
        raise ValueError(f"`weights` must have shape ({model.n_classes}, {model.n_concepts}); "
                         f"got {weights.shape}.")
    pictures = _figures(model, weights, evaluation, curves)

    numbers: dict[str, Any] = {
        "title": title, "config": model.config(), "trained_mode": model.trained_mode,
        "evaluation": {"task_accuracy": evaluation.task_accuracy,
                       "concept_accuracy": evaluation.concept_accuracy,
                       "n_examples": evaluation.n_examples,
                       "per_concept": {name: {"accuracy": evaluation.per_concept_accuracy[j],
                                              "f1": evaluation.per_concept_f1[j],
                                              "auc": evaluation.per_concept_auc[j]}
                                       for j, name in enumerate(distinct(model.concept_names))}},
        "interventions": {policy: {"n_intervened": c.n_intervened, "accuracy_mean": c.accuracy_mean,
                                   "accuracy_std": c.accuracy_std, "area": c.area,
                                   "groups": [list(g) for g in c.groups]}
                          for policy, c in curves.items()},
        "head_weights": weights,
        "intervention_values": {"low": model.intervention_low, "high": model.intervention_high},
    }
    if history is not None:
        numbers["history"] = {"mode": history.mode, "seconds": history.seconds, "seed": history.seed,
                              "concept_loss_weight": history.concept_loss_weight,
                              "pos_weight": history.pos_weight, "n_train": history.n_train,
                              "n_val": history.n_val, "val_source": history.val_source,
                              "stages": [{"stage": s.stage, "train_loss": s.train_loss,
                                          "val_loss": s.val_loss,
                                          # counted from 1, as the summary and the page say;
                                          # best_epoch_index indexes train_loss and val_loss
                                          "best_epoch": s.best_epoch + 1,
                                          "best_epoch_index": s.best_epoch,
                                          "stopped_early": s.stopped_early,
                                          "still_improving": s.still_improving,
                                          "summary": s.describe()} for s in history.stages],
                              "under_trained": list(history.under_trained)}
    if leakage is not None:
        numbers["leakage"] = {"soft_accuracy": leakage.soft_accuracy,
                              "hard_accuracy": leakage.hard_accuracy,
                              "true_accuracy": leakage.true_accuracy, "leakage": leakage.leakage}
    if extra:
        numbers["extra"] = dict(extra)
    numbers = json_ready(numbers)
    write_json(out / "metrics.json", numbers)
    return _page(out, title, numbers, pictures)


def _page(out: Path, title: str, numbers: dict[str, Any], pictures: dict[str, Any]) -> Path:
    from ..report import PageTable, write_page  # matplotlib is imported only to write reports

    ev = numbers["evaluation"]
    rows = [("mode", numbers.get("trained_mode")), ("bottleneck", numbers["config"]["bottleneck"]),
            ("head", numbers["config"]["head"]), ("test examples", ev["n_examples"]),
            ("task accuracy", ev["task_accuracy"]), ("concept accuracy", ev["concept_accuracy"])]
    for policy, curve in numbers["interventions"].items():
        rows.append((f"intervention area ({policy})", curve["area"]))
        rows.append((f"accuracy, all concepts intervened ({policy})", curve["accuracy_mean"][-1]))
    if "leakage" in numbers:
        rows += [(f"leakage: {k}", v) for k, v in numbers["leakage"].items()]
    history = numbers.get("history")
    if history is not None:
        rows.append(("training seconds", history["seconds"]))
    tables = []
    for key, value in (numbers.get("extra") or {}).items():
        if _scalar(value):
            rows.append((key, value))
        elif isinstance(value, Mapping):  # e.g. the command's settings: a table of their own
            tables.append((str(key).replace("_", " ").capitalize(),
                           [PageTable([str(key).replace("_", " "), "value"],
                                      [[str(k), _shown(v)] for k, v in value.items()])]))
    concepts = PageTable(["concept", "accuracy", "F1", "AUC"],
                         [[name, m["accuracy"], m["f1"], m["auc"]]
                          for name, m in ev["per_concept"].items()])
    summary: list[Any] = []
    if history is not None and history.get("under_trained"):
        stages = ", ".join(repr(s) for s in history["under_trained"])
        summary.append(f"Under-trained: the {stages} stage{'s' if len(history['under_trained']) > 1 else ''} "
                       f"stopped at the epoch limit while the validation loss was still falling; "
                       f"more epochs would likely give a better model (a larger `epochs`; "
                       f"`--epochs` of conceptkit train-cbm). See Training.")
    summary.append(PageTable(["", "value"], [list(row) for row in rows]))
    sections = [
        ("Summary", summary),
        ("Head weights", [pictures["weights"]]),
        ("Concepts", [pictures["concept_accuracy"], concepts]),
        ("Interventions", [pictures["interventions"]]),
    ]
    if history is not None:
        sections.append(("Training", [PageTable(
            ["stage", "epochs", "best epoch", "best validation loss", "stopped", "still improving"],
            [[s["stage"], len(s["train_loss"]), s["best_epoch"],
              s["val_loss"][s["best_epoch_index"]],
              "early" if s["stopped_early"] else "at the epoch limit",
              "yes" if s["still_improving"] else "no"] for s in history["stages"]])]))
    return write_page(out, title, sections + tables,
                      footer="Written by conceptkit. Every number is in metrics.json next to this page.")


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) or value is None


def _shown(value: Any) -> Any:
    """A setting as a table cell: numbers and text as they are, anything else as JSON."""
    if _scalar(value):
        return value
    import json

    return json.dumps(value, ensure_ascii=False)


def distinct(names: list[str]) -> list[str]:
    """Names as keys: a repeated name gets its concept's index (``"wing [2]"``), so that no
    concept's numbers overwrite another's."""
    return [f"{name} [{j}]" if names.count(name) > 1 else name for j, name in enumerate(names)]


def plain(text: Any) -> str:
    """``text`` drawn literally by matplotlib: ``$`` escaped, so that a name with dollar signs
    is not parsed as mathtext (as the class report's figures do)."""
    return str(text).replace("$", r"\$")
