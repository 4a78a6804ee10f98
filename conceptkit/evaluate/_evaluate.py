"""One table for a whole world: every explained class scored against ground truth."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_int, describe
from ..extraction._fingerprint import module_digest
from ._faithfulness import Faithfulness, faithfulness
from ._inputs import (
    UNDETERMINED,
    check_masks,
    check_model,
    checked_images,
    model_at_layer_of,
    part_label,
    same_weights,
)

#: Table columns scored per class, and whether higher is better (summarised over classes).
METRIC_COLUMNS: dict[str, bool] = {
    "top_on_most_relied": True,
    "top_on_most_relied_parts": True,
    "top_on_causal": True,
    "top_reliance_ratio": True,
    "top_pointing": True,
    "top_pointing_parts": True,
    "relied_pointing": True,
    "relied_relevance_mass": True,
    "relied_iou": True,
    "relied_auc": True,
    "causal_pointing": True,
    "spearman": True,
    "kendall": True,
    "spearman_significant": True,
    "part_spearman": True,
    "part_kendall": True,
    "deletion_area": False,
}

#: Columns that read the most relied-on part or rank concepts by the measured reliances:
#: undefined (None, left out of ``summary`` and ``worst``) for a class whose most relied-on
#: part's drop these images cannot tell from 0 (``most_relied_significant`` False). The columns
#: of the designed causal parts (``top_on_causal``, ``causal_pointing``) are still scored.
UNDEFINED_WITHOUT_RELIANCE = ("top_on_most_relied", "top_on_most_relied_parts",
                              "top_reliance_ratio", "top_pointing", "top_pointing_parts",
                              "relied_pointing", "relied_relevance_mass", "relied_iou",
                              "relied_auc", "spearman", "kendall", "spearman_significant",
                              "part_spearman", "part_kendall", "deletion_area")

#: Columns that read the part the top concept sits on: undefined (None) when no part is shown
#: in enough of the class's images (``localisation``'s ``min_images``) to place any concept
#: (``top_part`` "undetermined").
UNDEFINED_WITHOUT_PLACEMENT = ("top_on_most_relied", "top_on_most_relied_parts", "top_on_causal",
                               "top_reliance_ratio")

#: Column meanings (for ``to_markdown`` and the docs).
COLUMN_HELP = {
    "most_relied_part": "the part whose painting-out lowers the class score most (measured; "
                        "None when no image shows any part)",
    "top_part": "the part the most important concept sits on ('undetermined' when no part is "
                "shown in enough images to place a concept)",
    "top_on_most_relied": "the most important concept sits on the most relied-on part",
    "most_relied_significant": "the most relied-on part's drop is above 0 and these images can "
                               "tell it from 0; if not, the columns that read that part or rank "
                               "by reliance are left undefined, and most_relied_note says why "
                               "(no part relied on, or only parts with a smaller, steadier "
                               "drop)",
    "most_relied_note": "None when most_relied_significant; otherwise a sentence: the part "
                        "with the largest mean drop cannot be told from 0 in these images, "
                        "and which parts can (the model relies on them), if any",
    "most_relied_parts": "the most relied-on part and the parts these images cannot tell apart "
                         "from it (paired Student-t, 95 %)",
    "top_on_most_relied_parts": "the most important concept sits on one of most_relied_parts",
    "top_on_causal": "the most important concept sits on a designed causal part",
    "top_reliance_ratio": "reliance of the top concept's part / reliance of the most relied-on "
                          "part (1: on it or on a part as needed; 0: on the background)",
    "top_pointing": "pointing game of the most important concept on the most relied-on part",
    "top_pointing_parts": "best pointing game of the most important concept on any of "
                          "most_relied_parts",
    "relied_pointing": "best pointing game of any concept on the most relied-on part",
    "relied_relevance_mass": "relevance mass of that best concept on that part",
    "relied_iou": "IoU of that best concept on that part",
    "relied_auc": "ROC-AUC of that best concept on that part",
    "causal_pointing": "mean over designed causal parts of the best concept's pointing game",
    "spearman": "Spearman's rho of importance vs reliance of each concept's part",
    "kendall": "Kendall's tau-b of the same",
    "spearman_significant": "spearman with reliances the images cannot tell from 0 set to 0",
    "part_spearman": "Spearman's rho over parts: summed importance of a part's concepts vs its "
                     "reliance",
    "part_kendall": "Kendall's tau-b of the same",
    "deletion_area": "area between the concept and part deletion curves (lower is better)",
}


@dataclass(frozen=True, eq=False)
class Evaluation:
    """An explanation scored against ground truth, one row per class.

    Attributes
    ----------
    rows : tuple of dict
        One dict per class (see :attr:`table`).
    details : dict of int -> Faithfulness
        Per class the full results (``.reliance``, ``.localisation``, ``.deletion``).
    settings : dict
        How the evaluation was run; ``settings["model"]`` says which model was evaluated (the
        explanation's own, the one given with the data, or ``world.model()``), and
        ``settings["n_images"]`` on how many images each class was (one number, or
        ``{class_id: n}`` where the classes differ; a World of one's own need not give
        ``n_per_class``).
    """

    rows: tuple[dict, ...]
    details: dict = field(repr=False)
    settings: dict = field(default_factory=dict)

    @property
    def table(self) -> list[dict]:
        """Rows per class: ``class_id, class_name, n_images, n_concepts, most_relied_part,
        most_relied_drop, most_relied_significant, most_relied_note, top_concept, top_part``
        and the metric columns of :data:`METRIC_COLUMNS` (None where undefined). A row whose
        ``most_relied_significant`` is False has a most relied-on part (the largest mean drop)
        that these images cannot tell from 0: the columns of
        :data:`UNDEFINED_WITHOUT_RELIANCE` are None there (left out of ``summary`` and
        ``worst``) and its Markdown row says "not told from 0". Usually the model relies on no
        single part there; ``most_relied_note`` names the parts it does measurably rely on when
        some part with a smaller, steadier drop is told from 0."""
        return [dict(row) for row in self.rows]

    @property
    def summary(self) -> dict[str, float | None]:
        """Mean of each metric column over classes (booleans: the fraction of classes; classes
        where a value is undefined are left out)."""
        return {name: _reduce([row[name] for row in self.rows], np.mean)
                for name in METRIC_COLUMNS}

    @property
    def worst(self) -> dict[str, float | None]:
        """The worst class's value of each metric column (min, or max where lower is better)."""
        return {name: _reduce([row[name] for row in self.rows], np.min if better else np.max)
                for name, better in METRIC_COLUMNS.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible: settings, table, summary, worst, and per-class details."""
        return {"settings": dict(self.settings), "table": self.table, "summary": self.summary,
                "worst": self.worst,
                "details": {str(c): f.to_dict() for c, f in self.details.items()}}

    def to_markdown(self, digits: int = 2) -> str:
        """The table as Markdown, with a mean and a worst row."""
        columns = ["class", "most relied-on part", "top concept on", *METRIC_COLUMNS]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in self.rows:
            relied = "none" if row["most_relied_part"] is None else row["most_relied_part"]
            cells = [f"{row['class_id']} {row['class_name']}",
                     f"{relied} ({_fmt(row['most_relied_drop'], digits)}"
                     f"{'' if row['most_relied_significant'] else ', not told from 0'})",
                     f"concept {row['top_concept']} {row['top_part']}"]
            cells += [_fmt(row[name], digits) for name in METRIC_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        for label, values in (("mean", self.summary), ("worst", self.worst)):
            cells = [f"**{label}**", "", ""] + [_fmt(values[name], digits) for name in METRIC_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.summary
        shown = ", ".join(f"{name}={_fmt(s[name], 3)}" for name in
                          ("top_on_most_relied", "top_pointing", "relied_pointing", "spearman",
                           "kendall", "deletion_area"))
        unjudged = sum(not row["most_relied_significant"] for row in self.rows)
        note = (f", {unjudged} not judged (largest drop not told from 0)" if unjudged else "")
        return f"Evaluation(n_classes={len(self.rows)}{note}, mean: {shown})"

    def __str__(self) -> str:
        return f"{self!r}\n{self.to_markdown()}"


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _reduce(values: list, how: Callable) -> float | None:
    numbers = [float(v) for v in values if v is not None and not
               (isinstance(v, float) and math.isnan(v))]
    return float(how(numbers)) if numbers else None


# ------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class _Data:
    images: torch.Tensor
    labels: np.ndarray
    masks: torch.Tensor
    part_names: tuple[str, ...] | None
    class_names: list | None
    class_concepts: list | None


def _field(data: Any, *names: str) -> Any:
    for name in names:
        if isinstance(data, Mapping) and name in data:
            return data[name]
        if not isinstance(data, Mapping) and hasattr(data, name):
            return getattr(data, name)
    return None


def _as_data(data: Any, sampled: bool = False) -> _Data:
    """The data of a ``(model, data)`` pair, or what a World's ``sample`` returned (``sampled``)."""
    images, labels, masks = (_field(data, "images"), _field(data, "labels"),
                             _field(data, "masks"))
    missing = [name for name, value in (("images", images), ("labels", labels),
                                        ("masks", masks)) if value is None]
    if missing and sampled:
        raise TypeError(f"`world.sample` returned data without "
                        f"{' or '.join(f'`{n}`' for n in missing)}; it must be "
                        f"{SAMPLE_CONTRACT}; got {describe(data)}.")
    if missing:
        raise TypeError(f"`world` must give data with `images` (N, 3, H, W), `labels` (N,) and "
                        f"part `masks` (N, P, H, W) (a ConceptDataset, a World's sample, or a "
                        f"dict); its data has no {' or '.join(f'`{n}`' for n in missing)}: got "
                        f"{describe(data)}.")
    images = checked_images(images)
    masks = check_masks(masks, images, name="data.masks")
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"`data.labels` must hold one integer class per image "
                         f"({images.shape[0]}); got {describe(labels)}.")
    names = _field(data, "part_names", "concept_names")
    return _Data(images, labels.astype(np.int64), masks,
                 None if names is None else tuple(str(n) for n in names),
                 _field(data, "class_names"),
                 _check_class_concepts(_field(data, "class_concepts"), masks.shape[1]))


def _check_class_concepts(class_concepts: Any, n_parts: int) -> list | None:
    """Each class's designed causal parts as lists of part indices in ``[0, n_parts)``."""
    if class_concepts is None:
        return None
    try:
        out = [[int(g) for g in parts] for parts in class_concepts]
    except (TypeError, ValueError):
        raise TypeError(f"`data.class_concepts` must list, for each class, the indices of its "
                        f"causal parts; got {describe(class_concepts)}.") from None
    for class_id, parts in enumerate(out):
        wrong = [g for g in parts if not 0 <= g < n_parts]
        if wrong:
            raise ValueError(f"`data.class_concepts[{class_id}]` holds part indices {wrong}; the "
                             f"masks have {n_parts} parts, so each must be in [0, "
                             f"{n_parts - 1}].")
    return out


def _classes(explanation: Any) -> dict[int, Any]:
    if hasattr(explanation, "importances") and getattr(explanation, "class_id", None) is not None:
        return {int(explanation.class_id): explanation}
    if (hasattr(explanation, "importances") and hasattr(explanation, "concept_maps")
            and not isinstance(explanation, Mapping) and not hasattr(explanation, "classes_")):
        raise TypeError(f"`explanation` has no `class_id`; set it or pass {{class_id: "
                        f"explanation}} (the class whose images and score it is evaluated on); "
                        f"got {describe(explanation)}.")
    if hasattr(explanation, "classes_") and isinstance(explanation.classes_, Mapping):
        explanation = explanation.classes_
    if isinstance(explanation, Mapping):
        out = {int(c): cc for c, cc in explanation.items()}
    elif isinstance(explanation, (list, tuple)) and all(hasattr(cc, "class_id")
                                                        for cc in explanation):
        out = {int(cc.class_id): cc for cc in explanation}
    else:
        out = {}
    if not out:
        what = ("an explanation without `importances`" if hasattr(explanation, "class_id")
                else describe(explanation))
        raise TypeError(f"`explanation` must be a ClassConcepts, a fitted ConceptManager, or a "
                        f"non-empty dict {{class_id: ClassConcepts}}; got {what}.")
    for class_id, cc in out.items():
        lacking = [name for name in ("importances", "concept_maps") if not hasattr(cc, name)]
        if lacking:
            raise TypeError(f"`explanation` for class {class_id} has no "
                            f"{' or '.join(f'`{n}`' for n in lacking)}: every class needs "
                            f"importances (k,) and concept_maps(images, kind=...), as a "
                            f"ClassConcepts has; got {describe(cc)}.")
        explained = getattr(cc, "class_id", None)
        if explained is not None and int(explained) != class_id:
            raise ValueError(f"`explanation` maps class {class_id} to an explanation of class "
                             f"{int(explained)}; it would be scored on the other class's images. "
                             f"Key each explanation by its own class_id.")
    return dict(sorted(out.items()))


def _model_and_data(world: Any, n_per_class: int, seed: int,
                    split: str) -> tuple[nn.Module | None, Any, Callable[[], nn.Module] | None]:
    """The model a ``(model, data)`` pair gives (None for a World), the data, and for a World
    the (cached) ``world.model()``: used only for explanations that carry no model."""
    if isinstance(world, (tuple, list)) and len(world) == 2:
        if not isinstance(world[0], nn.Module) and isinstance(world[1], nn.Module):
            raise TypeError(f"`world` must be (model, data), model first; got (data, model): "
                            f"({type(world[0]).__name__}, {type(world[1]).__name__}). Pass "
                            f"evaluate(explanation, (model, data)).")
        if not isinstance(world[0], nn.Module):
            raise TypeError(f"`world` must be (model, data), its first item the model (a "
                            f"torch.nn.Module); got {describe(world[0])} first.")
        return check_model(world[0]), world[1], None
    if hasattr(world, "sample") and hasattr(world, "model"):
        made: list[nn.Module] = []

        def world_model() -> nn.Module:
            if not made:
                model = world.model
                model = model() if callable(model) and not isinstance(model, nn.Module) else model
                made.append(check_model(model))
            return made[0]

        return None, _sample(world, n_per_class, seed, split), world_model
    raise TypeError(f"`world` must be a World (with `sample` and `model`, from "
                    f"conceptkit.datasets.load_world) or a pair (model, data) where data has "
                    f"images, labels and part masks; got {describe(world)}.")


#: What ``evaluate`` expects of a World's ``sample`` (in its messages and the docs).
SAMPLE_CONTRACT = ("sample(n_per_class, seed=..., split=...) returning an object (or dict) with "
                   "`images` (N, 3, H, W), `labels` (N,) and part `masks` (N, P, H, W)")


def _sample(world: Any, n_per_class: int, seed: int, split: str) -> Any:
    """``world.sample(n_per_class, seed=seed, split=split)``, its signature checked first: a
    user's World whose ``sample`` takes other arguments is told what is expected."""
    sample = world.sample
    if not callable(sample):
        raise TypeError(f"`world.sample` must be a method {SAMPLE_CONTRACT}; got "
                        f"{describe(sample)}.")
    try:
        signature = inspect.signature(sample)
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call say
        signature = None
    if signature is not None:
        try:
            signature.bind(n_per_class, seed=seed, split=split)
        except TypeError as error:
            raise TypeError(f"`world.sample` must be {SAMPLE_CONTRACT} (evaluate calls it so); "
                            f"this world's is sample{signature}, which cannot take that call "
                            f"({error}).") from None
    return sample(n_per_class, seed=seed, split=split)


def _class_model(cc: Any, class_id: int, given: nn.Module | None,
                 world_model: Callable[[], nn.Module] | None) -> tuple[nn.Module, str]:
    """The model class ``class_id`` is evaluated on, and how it was chosen (for ``settings``):
    the model of a ``(model, data)`` pair (refused if the explanation's own has other weights),
    else the explanation's own model, else (an explanation without one) ``world.model()``."""
    own = getattr(model_at_layer_of(cc), "model", None)
    own = own if isinstance(own, nn.Module) else None
    if own is None and getattr(cc, "model_at_layer", False) is None:  # loaded, not attached
        known = (getattr(cc, "fitted_with", None) or {}).get("model_digest")
        candidate = given if given is not None else world_model()
        where = "the model of `world`" if given is not None else "world.model()"
        hint = ("the file records no digest of its weights, so nothing says which model that "
                "is" if known is None else
                f"{where} has the weights it was fitted with" if known == module_digest(candidate)
                else f"{where} has other weights than the one it was fitted with")
        raise ValueError(f"the explanation of class {class_id} has no model (loaded from disk "
                         f"without `attach`): its concepts' maps of the evaluation images need "
                         f"the model it explains, and its reliance must be measured on that "
                         f"same model ({hint}). Attach it first: `explanation.attach(model, "
                         f"preprocess)` with the model and preprocessing it was fitted with.")
    if given is not None:
        if own is not None and not same_weights(own, given):
            raise ValueError(f"the model of `world` (model, data) is not the model the "
                             f"explanation of class {class_id} was fitted on (other weights): "
                             f"its reliance would be measured on another model than the one "
                             f"its maps and importances come from. Pass the explanation's model "
                             f"(`explanation.model_at_layer.model`) with the data.")
        return given, f"given with the data ({type(given).__name__})"
    if own is not None:
        return own, f"the explanation's own ({type(own).__name__})"
    model = world_model()
    return model, f"world.model() ({type(model).__name__}; the explanation carries no model)"


# ------------------------------------------------------------------------------- evaluate
def evaluate(explanation: Any, world: Any, *, n_per_class: int = 20, seed: int = 0,
             split: str = "test", kind: str = "auto", fill: str | Callable = "median",
             measure: str = "probability", deletion: bool = True, removal: str = "pixels",
             tolerance: int | None = None, quantile: float = 0.9, min_images: int = 3,
             assign_threshold: float = 0.5, reliance_floor: float = 0.0,
             blur_sigma: float | None = None,
             preprocess: Callable | None = None, batch_size: int = 64, device: Any = None,
             progress: bool = True) -> Evaluation:
    """Score an explanation of one or many classes against a world's ground truth.

    For each explained class, on the images of that class: the model's measured
    :func:`reliance` on each part, the :func:`localisation` of every concept, and the
    :func:`faithfulness` of the importances; summarised in one row per class.

    Parameters
    ----------
    explanation : ClassConcepts, ConceptManager or dict
        One class's explanation, a fitted manager, or ``{class_id: explanation}`` (an
        explanation without a ``class_id`` must be passed this way).
    world : World or (model, data)
        A world from ``conceptkit.datasets.load_world`` (``world.sample(n_per_class, seed=...,
        split=...)`` supplies the images; the model is the explanation's own, its
        ``model_at_layer.model``, and ``world.model()`` only for an explanation that carries
        none), or a pair of a model and
        data with ``images (N, 3, H, W)``, ``labels (N,)``, part ``masks (N, P, H, W)`` and
        optionally ``concept_names`` (or ``part_names``), ``class_names`` and
        ``class_concepts`` (the designed causal parts of each class) — any dataset with part
        masks works. A pair's model must be the explanation's (the same weights). An
        explanation loaded from disk and not attached to its model is refused (its maps of new
        images need the model). ``settings["model"]`` says which model was used. The model
        must return logits (a model ending in a softmax is refused). A World of one's own needs
        ``model`` and ``sample(n_per_class, seed=..., split=...)`` returning an object or dict
        with ``images``, ``labels`` and ``masks``.
    n_per_class, seed, split
        The world's sample. When a class's sampled images are the very images its explanation
        was fitted on (same seed and split as the fit), the fitted maps are used.
    kind, fill, measure, deletion, removal, tolerance, quantile, min_images, assign_threshold,
    reliance_floor, blur_sigma, batch_size, device, progress
        See :func:`faithfulness`.
    preprocess : callable, optional
        Default: the explanation's own (``model_at_layer.preprocess``).

    Returns
    -------
    Evaluation
    """
    classes = _classes(explanation)
    n_per_class = check_int(n_per_class, "n_per_class", minimum=1)
    given, data, world_model = _model_and_data(world, n_per_class, seed, split)
    models = {class_id: _class_model(cc, class_id, given, world_model)
              for class_id, cc in classes.items()}  # checked before anything is measured
    sampled = not (isinstance(world, (tuple, list)) and len(world) == 2)
    data = _as_data(data, sampled=sampled)
    rows, details = [], {}
    for class_id, cc in tqdm(classes.items(), disable=not progress, desc="classes"):
        index = np.flatnonzero(data.labels == class_id)
        if index.size == 0:
            raise ValueError(f"the data has no image of class {class_id}, which `explanation` "
                             f"explains; evaluate on data that has it.")
        model = models[class_id][0]
        pre = preprocess if preprocess is not None else getattr(
            model_at_layer_of(cc), "preprocess", None)
        images, masks = data.images[index], data.masks[index]
        result = faithfulness(cc, model, images, masks, data.part_names, class_id=class_id,
                              kind=kind, fill=fill, measure=measure, deletion=deletion,
                              removal=removal, tolerance=tolerance, quantile=quantile,
                              min_images=min_images, assign_threshold=assign_threshold,
                              reliance_floor=reliance_floor, blur_sigma=blur_sigma,
                              preprocess=pre, batch_size=batch_size, device=device,
                              progress=progress)
        details[class_id] = result
        rows.append(class_row(result, class_id, _class_name(cc, data, class_id),
                              _causal(data, class_id)))
    # n_per_class, seed and split draw a world's images; given data, they were not used.
    # n_images: the images each class was evaluated on (a World of one's own may not give
    # n_per_class of them); one number, or one per class where they differ
    counts = {str(row["class_id"]): int(row["n_images"]) for row in rows}
    settings = {"n_per_class": n_per_class if sampled else None,
                "n_images": (next(iter(counts.values())) if len(set(counts.values())) == 1
                             else counts),
                "seed": seed if sampled else None, "split": split if sampled else None,
                "kind": kind,
                "fill": next(iter(details.values())).reliance.fill, "measure": measure,
                "removal": removal if deletion else None,
                "tolerance": next(iter(details.values())).localisation.tolerance,
                "quantile": quantile, "min_images": min_images,
                "assign_threshold": assign_threshold, "reliance_floor": reliance_floor,
                "model": _models_used(models)}
    return Evaluation(rows=tuple(rows), details=details, settings=settings)


def _models_used(models: dict[int, tuple[nn.Module, str]]) -> str | dict[str, str]:
    """Which model was evaluated: one description, or one per class where they differ."""
    described = {str(class_id): how for class_id, (_, how) in models.items()}
    return next(iter(described.values())) if len(set(described.values())) == 1 else described


def _class_name(cc: Any, data: _Data, class_id: int) -> str:
    """The explanation's class name, unless it is only the placeholder ``"class {id}"`` (a fit
    without ``class_name``) and the data names its classes."""
    name = getattr(cc, "class_name", None)
    if name and str(name) != f"class {class_id}":
        return str(name)
    if data.class_names is not None and class_id < len(data.class_names):
        return str(data.class_names[class_id])
    return f"class {class_id}"


def _causal(data: _Data, class_id: int) -> list[int] | None:
    if data.class_concepts is None or class_id >= len(data.class_concepts):
        return None
    return [int(g) for g in data.class_concepts[class_id]]


def class_row(result: Faithfulness, class_id: int, class_name: str,
              causal: list[int] | None = None) -> dict[str, Any]:
    """The table row of one class from its :class:`Faithfulness` (see :attr:`Evaluation.table`)."""
    rel, loc = result.reliance, result.localisation
    names = rel.part_names
    most = rel.most_relied(result.measure)
    tied = rel.most_relied_parts(result.measure)
    top = int(np.argsort(-result.importances, kind="stable")[0])
    top_part = int(loc.concept_parts[top])

    def num(value: float) -> float | None:
        return float(value) if np.isfinite(value) else None

    row: dict[str, Any] = {
        "class_id": int(class_id), "class_name": class_name,
        "n_images": int(rel.present.shape[0]), "n_concepts": int(result.importances.size),
        # no part shown: no part is relied on (not "background", which nothing measured)
        "most_relied_part": part_label(most, names) if most >= 0 else None,
        "most_relied_drop": num(rel.values(result.measure)[most]) if most >= 0 else None,
        # a most relied-on part whose drop these images cannot tell from 0 (or is not a drop)
        # cannot be scored against (see UNDEFINED_WITHOUT_RELIANCE); the note says why, and
        # names the parts these images do tell from 0, if any
        "most_relied_significant": rel.relies_on_a_part(result.measure),
        "most_relied_note": rel.unrelied_note(result.measure),
        "top_concept": top, "top_part": part_label(top_part, names),
        "top_on_most_relied": bool(most >= 0 and top_part == most),
        "most_relied_parts": [part_label(int(p), names) for p in tied],
        "top_on_most_relied_parts": bool(top_part in set(tied.tolist())),
        "top_on_causal": None if causal is None else bool(top_part in causal),
        "designed_causal": None if causal is None else [part_label(g, names) for g in causal],
    }
    best = int(loc.best_concept[most]) if most >= 0 else -1
    values = rel.values(result.measure)
    row["top_reliance_ratio"] = (num((values[top_part] if top_part >= 0 else 0.0) / values[most])
                                 if most >= 0 and values[most] > 0 else None)
    row["top_pointing"] = num(loc.pointing_game[top, most]) if most >= 0 else None
    row["top_pointing_parts"] = (num(np.nanmax(loc.pointing_game[top, tied]))
                                 if tied.size and np.isfinite(loc.pointing_game[top, tied]).any()
                                 else None)
    for metric, column in (("pointing_game", "relied_pointing"),
                           ("relevance_mass", "relied_relevance_mass"), ("iou", "relied_iou"),
                           ("auc", "relied_auc")):
        row[column] = num(loc.score(metric)[best, most]) if best >= 0 else None
    shown = [g for g in (causal or []) if loc.best_concept[g] >= 0]
    row["causal_pointing"] = (float(np.mean([loc.pointing_game[loc.best_concept[g], g]
                                             for g in shown])) if shown else None)
    row["spearman"] = num(result.spearman)
    row["kendall"] = num(result.kendall)
    row["spearman_significant"] = num(result.spearman_significant)
    row["part_spearman"] = num(result.part_spearman)
    row["part_kendall"] = num(result.part_kendall)
    row["deletion_area"] = None if result.deletion is None else num(result.deletion.area_between)
    if top_part == UNDETERMINED:
        # no part is shown in enough of the class's images to say where any concept sits: the
        # columns that read the top concept's part are undefined, not failures
        for column in UNDEFINED_WITHOUT_PLACEMENT:
            row[column] = None
    if not row["most_relied_significant"]:
        # no part's painting-out moves the class score measurably: "the most relied-on part"
        # is the largest of noise-level drops, and the columns that read it or rank concepts
        # by these drops would score the explanation against noise
        for column in UNDEFINED_WITHOUT_RELIANCE:
            row[column] = None
    return row
