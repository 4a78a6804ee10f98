"""What the report is handed: one class's concepts, images, maps and numbers.

The pipeline computes; these containers only carry and check. Each is a frozen dataclass whose
``__post_init__`` validates the fields once (naming the offending argument) and stores arrays as
float32 numpy copies, so that figures and pages can trust their input.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._reprs import dataclass_repr
from .._validation import check_float, check_int, describe, to_numpy

# Colour values may overshoot [0, 1] by float error after resizing; more than this is a mistake
# (e.g. ImageNet-normalised tensors) and is refused rather than silently clipped.
_RANGE_TOLERANCE = 1e-3


def _array(value: Any, name: str, ndim: int, shape_text: str) -> np.ndarray:
    if isinstance(value, (list, tuple)) and not isinstance(value, str):
        value = np.asarray(value, dtype=np.float64)
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        raise TypeError(f"`{name}` must be a numpy array or torch.Tensor of shape {shape_text}; "
                        f"got {describe(value)}.")
    array = to_numpy(value)
    if array.ndim != ndim:
        raise ValueError(f"`{name}` must have shape {shape_text}; got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == np.bool_):
        raise TypeError(f"`{name}` must hold numbers; got dtype {array.dtype}.")
    array = np.array(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    return array


def _pictures(value: Any, name: str, shape_text: str, allow_empty: bool) -> np.ndarray:
    array = _array(value, name, 4, shape_text)
    if array.shape[1] != 3:
        raise ValueError(f"`{name}` must be RGB with 3 channels in axis 1, shape {shape_text}; "
                         f"got shape {array.shape}. For display, repeat a grey channel "
                         f"(`x.repeat(1, 3, 1, 1)`) or keep the first 3 channels of RGBA "
                         f"(`x[:, :3]`).")
    if array.shape[0] == 0 and not allow_empty:
        raise ValueError(f"`{name}` is empty (shape {array.shape}); need at least one image.")
    if min(array.shape[2:]) < 1:
        raise ValueError(f"`{name}` has an empty spatial size: shape {array.shape}.")
    if array.size and (array.min() < -_RANGE_TOLERANCE or array.max() > 1 + _RANGE_TOLERANCE):
        raise ValueError(f"`{name}` must hold colours in [0, 1]; got values in "
                         f"[{array.min():.4g}, {array.max():.4g}]. Undo any normalisation first.")
    return np.clip(array, 0.0, 1.0)


def _id_list(value: Any, name: str, length: int, length_text: str) -> list[int | str]:
    """Image ids: ints (positions, dataset rows) or strings (file names)."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        value = to_numpy(value).tolist()
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of ints or strings; got {describe(value)}.")
    if len(value) != length:
        raise ValueError(f"`{name}` has {len(value)} entries but {length_text} has {length}; "
                         f"give one id per row.")
    return [v if isinstance(v, str) else check_int(v, f"{name}[{i}]")
            for i, v in enumerate(value)]


def _optional_float(value: Any, name: str) -> float:
    """A float that may be NaN/None (meaning: not available)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number (NaN or None when unknown); got {describe(value)}.")
    value = float(value)
    if math.isinf(value):
        raise ValueError(f"`{name}` must be finite, NaN or None; got {value}.")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str; got {describe(value)}.")
    return value


def _mapping(value: Any, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"`{name}` must be a dict; got {describe(value)}.")
    return dict(value)


def _metric_table(value: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Normalise ``{group: {name: {"value": v, "higher_is_better": b} | v}}``."""
    groups = _mapping(value, "metrics")
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for group, entries in groups.items():
        entries = _mapping(entries, f"metrics[{group!r}]")
        rows: dict[str, dict[str, Any]] = {}
        for metric, entry in entries.items():
            where = f"metrics[{group!r}][{metric!r}]"
            if not isinstance(entry, dict):
                entry = {"value": entry}
            if "value" not in entry:
                raise ValueError(f"`{where}` must have a 'value' key; got keys {sorted(entry)}.")
            number = _optional_float(entry["value"], f"{where}['value']")
            better = entry.get("higher_is_better")
            if better is not None and not isinstance(better, (bool, np.bool_)):
                raise TypeError(f"`{where}['higher_is_better']` must be True, False or None; "
                                f"got {describe(better)}.")
            rows[str(metric)] = {**entry, "value": number,
                                 "higher_is_better": None if better is None else bool(better)}
        table[str(group)] = rows
    return table


@dataclass(frozen=True, eq=False)
class ConceptSummary:
    """One concept of a class as the report shows it.

    Parameters
    ----------
    index : int
        Concept index in the bank.
    label : str
        Shown name, e.g. ``"concept 3"`` or ``"red disk (IoU 0.61)"``.
    importance : float
        Class-level importance.
    ci_low, ci_high : float
        Confidence interval of ``importance``; NaN (or None) when unknown.
    exemplars : array ``(n_ex, 3, h, w)``
        Top crops / segments / patches, colours in [0, 1]; ``n_ex`` may be 0.
    exemplar_sources : list of int or str
        Source image id of each exemplar (a position, a dataset row or a file name).
    extra : dict
        Any further numbers to show (JSON-compatible values).
    visualization : array ``(n, 3, h, w)``, optional
        Pictures of the concept made for it (e.g. a feature visualisation and its masked
        version), colours in [0, 1].
    """

    index: int
    label: str
    importance: float
    ci_low: float
    ci_high: float
    exemplars: np.ndarray
    exemplar_sources: list[int | str]
    extra: dict = field(default_factory=dict)
    visualization: np.ndarray | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "index", check_int(self.index, "index", minimum=0))
        put(self, "label", _string(self.label, "label"))
        put(self, "importance", check_float(self.importance, "importance"))
        low = _optional_float(self.ci_low, "ci_low")
        high = _optional_float(self.ci_high, "ci_high")
        if not (math.isnan(low) or math.isnan(high)) and low > high:
            raise ValueError(f"`ci_low` ({low:.4g}) is above `ci_high` ({high:.4g}) for concept "
                             f"{self.label!r}.")
        put(self, "ci_low", low)
        put(self, "ci_high", high)
        exemplars = _pictures(self.exemplars, "exemplars", "(n_ex, 3, h, w)", allow_empty=True)
        put(self, "exemplars", exemplars)
        put(self, "exemplar_sources", _id_list(self.exemplar_sources, "exemplar_sources",
                                                exemplars.shape[0], "`exemplars` axis 0"))
        put(self, "extra", _mapping(self.extra, "extra"))
        if self.visualization is not None:
            put(self, "visualization", _pictures(self.visualization, "visualization",
                                                 "(n, 3, h, w)", allow_empty=False))


@dataclass(frozen=True, eq=False)
class ClassReport:
    """Everything one class page shows; arrays share the concept order of ``concepts``.

    Parameters
    ----------
    class_id, class_name, method, importance_method, layer, model_name
        Identity of the explanation (shown in the page header).
    concepts : list of ConceptSummary
        In importance order, most important first; ``k = len(concepts)``.
    images : array ``(N, 3, H, W)``
        A few class images to show, colours in [0, 1].
    image_ids : list of int or str
        Id of each shown image (length ``N``): a position, a dataset row or a file name.
    maps : array ``(N, k, h, w)``
        Concept attribution maps of ``images``; resized to ``(H, W)`` for display when smaller.
    per_image_importance : array ``(n_all, k)``
        Per-input importances over all class images (strategic cluster graph).
    codes : array ``(n_rows, k)``
        Concept codes of the fitted rows (co-occurrence).
    metrics : dict
        ``{group: {name: {"value": float | None, "higher_is_better": bool | None}}}``; a bare
        number is accepted for an entry whose direction is unknown.
    notes : list of str
        Free text lines.
    timings : dict
        Seconds per stage.
    maps_kind : str
        The kind of ``maps`` (``"pixel"``, ``"coefficient"``, ...), named in their caption and
        in ``report.json``; ``""`` if unknown.
    maps_read : str
        What each position of the maps holds: ``""`` (the layer's activations there) or
        ``"cls"`` (the CLS token of the window around it, ``tokens="cls"``); said in the
        maps' caption.
    seed : int or None
        The seed of the explanation (``result.params["seed"]``), recorded in ``report.json``;
        None when unknown.
    importance_params : dict
        The settings of the importance (``result.importance.params``): its ``"confidence"``
        (the level of the intervals), ``"score"`` (class probability or logit) and Sobol
        ``"order"`` say on the page what the numbers mean; empty when unknown.
    """

    class_id: int
    class_name: str
    method: str
    importance_method: str
    layer: str
    model_name: str
    concepts: list[ConceptSummary]
    images: np.ndarray
    image_ids: list[int | str]
    maps: np.ndarray
    per_image_importance: np.ndarray
    codes: np.ndarray
    metrics: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    maps_kind: str = ""
    maps_read: str = ""
    seed: int | None = None
    importance_params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "class_id", check_int(self.class_id, "class_id"))
        for name in ("class_name", "method", "importance_method", "layer", "model_name"):
            put(self, name, _string(getattr(self, name), name))
        if not isinstance(self.maps_kind, str):
            raise TypeError(f"`maps_kind` must be a str; got {describe(self.maps_kind)}.")
        if self.maps_read not in ("", "cls"):
            raise ValueError(f"`maps_read` must be '' or 'cls'; got {describe(self.maps_read)}.")
        if self.seed is not None:
            put(self, "seed", check_int(self.seed, "seed", minimum=0))
        put(self, "importance_params", _mapping(self.importance_params, "importance_params"))
        concepts = self.concepts
        if not isinstance(concepts, (list, tuple)) or not concepts:
            raise ValueError(f"`concepts` must be a non-empty list of ConceptSummary; "
                             f"got {describe(concepts)}.")
        for i, concept in enumerate(concepts):
            if not isinstance(concept, ConceptSummary):
                raise TypeError(f"`concepts[{i}]` must be a ConceptSummary; got {describe(concept)}.")
        put(self, "concepts", list(concepts))
        k = len(concepts)
        images = _pictures(self.images, "images", "(N, 3, H, W)", allow_empty=False)
        put(self, "images", images)
        n = images.shape[0]
        put(self, "image_ids", _id_list(self.image_ids, "image_ids", n, "`images` axis 0"))
        maps = _array(self.maps, "maps", 4, "(N, k, H, W)")
        if maps.shape[0] != n:
            raise ValueError(f"`maps` has {maps.shape[0]} images in axis 0 but `images` has {n}; "
                             f"maps must be (N, k, H, W) for the shown images.")
        if maps.shape[1] != k:
            raise ValueError(f"`maps` has {maps.shape[1]} concepts in axis 1 but `concepts` lists "
                             f"{k}; maps must be (N, k, H, W) in the order of `concepts`.")
        if min(maps.shape[2:]) < 1:
            raise ValueError(f"`maps` has an empty spatial size: shape {maps.shape}.")
        put(self, "maps", maps)
        for name, rows in (("per_image_importance", "n_all"), ("codes", "n_rows")):
            array = _array(getattr(self, name), name, 2, f"({rows}, k)")
            if array.shape[1] != k:
                raise ValueError(f"`{name}` has {array.shape[1]} concepts in axis 1 but `concepts` "
                                 f"lists {k}; it must be ({rows}, k) in the order of `concepts`.")
            if array.shape[0] == 0:
                raise ValueError(f"`{name}` is empty (shape {array.shape}); need at least one row.")
            put(self, name, array)
        put(self, "metrics", _metric_table(self.metrics))
        notes = self.notes if self.notes is not None else []
        if isinstance(notes, str) or not isinstance(notes, (list, tuple)):
            raise TypeError(f"`notes` must be a list of str; got {describe(notes)}.")
        put(self, "notes", [_string(line, f"notes[{i}]") for i, line in enumerate(notes)])
        timings = _mapping(self.timings, "timings")
        put(self, "timings", {str(stage): check_float(seconds, f"timings[{stage!r}]", minimum=0.0)
                              for stage, seconds in timings.items()})

    @property
    def n_concepts(self) -> int:
        """Number of concepts ``k``."""
        return len(self.concepts)

    @property
    def labels(self) -> list[str]:
        """Concept labels in report order."""
        return [c.label for c in self.concepts]

    @property
    def importances(self) -> np.ndarray:
        """Class-level importances ``(k,)`` in report order."""
        return np.array([c.importance for c in self.concepts], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class IndexEntry:
    """One row of the index page.

    Parameters
    ----------
    class_id, class_name, method : identity of the class explanation.
    n_images : int
        Number of class images explained.
    top_concepts : list of (label, importance)
        The most important concepts, most important first.
    page : str
        Link to the class page, relative to the index's folder (POSIX separators).
    thumbnail : array ``(3, h, w)`` or None
        Small picture shown in the index, colours in [0, 1].
    """

    class_id: int
    class_name: str
    method: str
    n_images: int
    top_concepts: list[tuple[str, float]]
    page: str
    thumbnail: np.ndarray | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "class_id", check_int(self.class_id, "class_id"))
        put(self, "class_name", _string(self.class_name, "class_name"))
        put(self, "method", _string(self.method, "method"))
        put(self, "n_images", check_int(self.n_images, "n_images", minimum=0))
        put(self, "page", _string(self.page, "page"))
        if not isinstance(self.top_concepts, (list, tuple)):
            raise TypeError(f"`top_concepts` must be a list of (label, importance) pairs; "
                            f"got {describe(self.top_concepts)}.")
        tops = []
        for i, item in enumerate(self.top_concepts):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise TypeError(f"`top_concepts[{i}]` must be a (label, importance) pair; "
                                f"got {describe(item)}.")
            tops.append((_string(item[0], f"top_concepts[{i}][0]"),
                         check_float(item[1], f"top_concepts[{i}][1]")))
        put(self, "top_concepts", tops)
        if self.thumbnail is not None:
            thumb = self.thumbnail
            if not isinstance(thumb, (np.ndarray, torch.Tensor)) or thumb.ndim != 3:
                raise ValueError(f"`thumbnail` must be an array of shape (3, h, w) or None; "
                                 f"got {describe(thumb)}.")
            put(self, "thumbnail", _pictures(to_numpy(thumb)[None], "thumbnail", "(3, h, w)",
                                             allow_empty=False)[0])


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
ConceptSummary.__repr__ = dataclass_repr  # type: ignore[method-assign]
ClassReport.__repr__ = dataclass_repr  # type: ignore[method-assign]
IndexEntry.__repr__ = dataclass_repr  # type: ignore[method-assign]
