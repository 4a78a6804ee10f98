"""Saving, loading and reporting a :class:`~conceptkit.ConceptAtlas` (safetensors + JSON)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from .._validation import check_int
from ._atlas_data import AtlasData, DictionaryBank
from ._atlas_results import AtlasImportance

ATLAS_KIND = "ConceptAtlas"
ATLAS_VERSION = 1


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def concept_names(atlas: Any) -> list[str]:
    names = getattr(atlas, "concept_names_", None)
    k = atlas._data().n_concepts
    if names is not None and len(names) == k:
        return [str(n) for n in names]
    return [f"C{j}" for j in range(k)]


#: The grey an exemplar without pixels is drawn in (an atlas fitted on an activation store,
#: which holds no images): saved so, and recognised by the report, which then shows the maps
#: alone and says why.
NO_PIXELS = 127


def _has_pixels(images: list) -> bool:
    return not all(bool((im == NO_PIXELS).all()) for im in images)


def exemplars(atlas: Any, n: int) -> tuple[list, list, list, list]:
    """Per concept: top images (uint8), their maps (float16), labels and image ids."""
    saved = getattr(atlas, "saved_exemplars_", None)
    data = atlas._data()
    if data.images is None and data.store is None and saved is not None:
        # what the file holds, at most `n` per concept (it cannot show more than were saved)
        return tuple([part[:n] for part in column] for column in saved)
    images, maps, labels, ids = [], [], [], []
    for j in range(data.n_concepts):
        found = atlas.top_images(j, n, with_maps=data.images is not None or data.store is not None)
        if found.images is None:  # a store: no pixels, the maps alone
            side = found.maps.shape[-1] if found.maps is not None else 8
            images.append(torch.full((len(found.image_ids), 3, side, side), NO_PIXELS,
                                     dtype=torch.uint8))
        else:
            images.append(_to_uint8(found.images))
        maps.append((found.maps if found.maps is not None
                     else torch.zeros(len(found.image_ids), 8, 8)).to(torch.float16))
        labels.append(np.asarray(found.labels, dtype=np.int64))
        ids.append(np.asarray(found.image_ids, dtype=np.int64))
    return images, maps, labels, ids


def important_rule(method: str, relative: float | None, minimum: float | None) -> str:
    """The rule of :meth:`AtlasImportance.important` in words, for the report's header."""
    from ._atlas_results import important_rule as rule

    relative, minimum = rule(method, relative, minimum)
    parts = []
    if minimum is not None:
        unit = "the mean drop of P(class)" if method == "pixel_ablation" else "the importance"
        parts.append(f"{unit} is at least {minimum:g}")
    if relative is not None:
        parts.append(f"it is at least {relative:g} of the class's largest")
    return " and ".join(parts) + ", with the 95 % interval above 0"


def confusions(atlas: Any, n: int) -> list[dict]:
    """The ``n`` most confused class pairs explained by concepts."""
    if n == 0:
        return []
    saved = getattr(atlas, "saved_confusions_", None)
    # a loaded atlas holds no activations of its fitted images, with or without its model:
    # the confusions saved with it are what it can show
    if saved is not None and not atlas._data().holds_activations:
        return saved[:n]
    out = []
    for a, b, probability in atlas.most_confused_pairs(n):
        item = atlas.explain_confusion(a, b).to_dict()
        item["probability"] = probability
        out.append(item)
    return out


def save_atlas(atlas: Any, path: str | os.PathLike, *, n_exemplars: int = 8,
               n_confusions: int = 5) -> str:
    n_exemplars = check_int(n_exemplars, "n_exemplars", minimum=1)
    n_confusions = check_int(n_confusions, "n_confusions", minimum=0)
    data = atlas._data()
    imp = atlas.importance
    factorizer = data.bank.factorizer
    arrays, info = factorizer.get_state()
    tensors: dict[str, Any] = {f"factorizer.{k}": v for k, v in arrays.items()}
    tensors.update({"labels": data.labels, "logits": data.logits, "scores": data.scores,
                    "importance.values": imp.values, "importance.ci_low": imp.ci_low,
                    "importance.ci_high": imp.ci_high})
    images, maps, labels, ids = exemplars(atlas, n_exemplars)
    for j in range(data.n_concepts):
        tensors[f"exemplars.{j}.images"] = images[j]
        tensors[f"exemplars.{j}.maps"] = maps[j]
        tensors[f"exemplars.{j}.labels"] = labels[j]
        tensors[f"exemplars.{j}.ids"] = ids[j]
    meta = {"factorizer": {"name": type(factorizer).__name__, "params": _params(factorizer),
                           "info": info},
            "layer": atlas.layer, "method": atlas.method, "classes": data.classes,
            "class_names": imp.class_names, "importance": {"method": imp.method,
                                                           "params": imp.params},
            "image_size": None if data.image_size is None else list(data.image_size),
            "concept_names": concept_names(atlas), "confusions": confusions(atlas, n_confusions) or []}
    return str(io.save_file(path, tensors, meta, kind=ATLAS_KIND, version=ATLAS_VERSION))


def _params(factorizer: Any) -> dict:
    params = {}
    for key, value in factorizer.get_params().items():
        if isinstance(value, torch.device):
            value = str(value)
        if value is None or isinstance(value, (bool, int, float, str)):
            params[key] = value
    return params


def _check_shapes(tensors: dict[str, torch.Tensor], meta: dict, classes: list[int],
                  k: int) -> None:
    """Every array of a saved atlas against what its metadata implies: ``C`` classes, ``N``
    images (the labels) and ``k`` concepts (the dictionary). A ``ValueError`` names the field."""
    def fail(field: str, got: Any, expected: str) -> ValueError:
        return ValueError(f"{field} has shape {tuple(got)}, expected {expected}")

    def integers(field: str) -> np.ndarray:
        tensor = tensors[field]
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise ValueError(f"{field} must hold integers; got {tensor.dtype}")
        return tensor.numpy().astype(np.int64)

    labels = integers("labels")
    c = len(classes)
    if labels.ndim != 1:
        raise fail("labels", labels.shape, "(n_images,)")
    n = len(labels)
    if not classes or len(set(classes)) != c or not np.isin(classes, labels).all():
        raise ValueError(f"classes {classes} must be distinct class ids found in `labels`")
    if labels.min() < 0:
        raise ValueError(f"labels must be class indices >= 0; got {int(labels.min())}")
    logits = tensors["logits"]
    if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] <= int(labels.max()):
        raise fail("logits", logits.shape, f"({n}, n_outputs) with an output for every label "
                                           f"(up to {int(labels.max())})")
    if tuple(tensors["scores"].shape) != (n, k):
        raise fail("scores", tensors["scores"].shape, f"({n}, {k}) ({n} images, {k} concepts)")
    for field in ("importance.values", "importance.ci_low", "importance.ci_high"):
        if tuple(tensors[field].shape) != (c, k):
            raise fail(field, tensors[field].shape, f"({c}, {k}) ({c} classes, {k} concepts)")
    for field, count, what in (("class_names", c, "classes"), ("concept_names", k, "concepts")):
        names = meta[field]
        if not isinstance(names, list) or len(names) != count:
            got = f"{len(names)}" if isinstance(names, list) else f"a {type(names).__name__}"
            raise ValueError(f"{field} must be a list of {count} names (one per "
                             f"{what[:-1]}); got {got}")
    for j in range(k):
        images, maps = tensors[f"exemplars.{j}.images"], tensors[f"exemplars.{j}.maps"]
        ids, shown = integers(f"exemplars.{j}.ids"), integers(f"exemplars.{j}.labels")
        if ids.ndim != 1:
            raise fail(f"exemplars.{j}.ids", ids.shape, "(n_exemplars,)")
        m = len(ids)
        if m and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"exemplars.{j}.ids must be image ids in [0, {n}) ({n} images); "
                             f"got ids from {int(ids.min())} to {int(ids.max())}")
        if shown.shape != (m,):
            raise fail(f"exemplars.{j}.labels", shown.shape, f"({m},) (one per exemplar id)")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] != m:
            raise ValueError(f"exemplars.{j}.images has shape {tuple(images.shape)} and dtype "
                             f"{images.dtype}, expected ({m}, channels, height, width) uint8")
        if not maps.dtype.is_floating_point or maps.ndim != 3 or maps.shape[0] != m:
            raise ValueError(f"exemplars.{j}.maps has shape {tuple(maps.shape)} and dtype "
                             f"{maps.dtype}, expected ({m}, height, width) floats")


def read_atlas(path: str | os.PathLike) -> dict[str, Any]:
    """The parts of a saved atlas (:class:`FormatError` on a file that is not one)."""
    from ..concepts._base import factorizer_from_state

    tensors, meta = io.load_file(path, kind=ATLAS_KIND, version=ATLAS_VERSION)
    try:
        spec = meta["factorizer"]
        arrays = {k[len("factorizer."):]: v.numpy() for k, v in tensors.items()
                  if k.startswith("factorizer.")}
        factorizer = factorizer_from_state(spec["name"], spec["params"], arrays, spec["info"])
        classes = [int(c) for c in meta["classes"]]
        k = int(factorizer.components_.shape[0])
        labels = tensors["labels"].numpy().astype(np.int64)
        data = AtlasData(bank=DictionaryBank(factorizer, meta["layer"], meta["method"]),
                         labels=labels, classes=classes,
                         logits=tensors["logits"].double().numpy(),
                         scores=tensors["scores"].double().numpy(), images=None,
                         image_size=None if meta["image_size"] is None else tuple(meta["image_size"]))
        values = tensors["importance.values"].double().numpy()
        _check_shapes(tensors, meta, classes, k)
        importance = AtlasImportance(values=values,
                                     ci_low=tensors["importance.ci_low"].double().numpy(),
                                     ci_high=tensors["importance.ci_high"].double().numpy(),
                                     classes=classes, class_names=list(meta["class_names"]),
                                     method=meta["importance"]["method"],
                                     params=meta["importance"]["params"])
        saved = ([tensors[f"exemplars.{j}.images"] for j in range(k)],
                 [tensors[f"exemplars.{j}.maps"] for j in range(k)],
                 [tensors[f"exemplars.{j}.labels"].numpy() for j in range(k)],
                 [tensors[f"exemplars.{j}.ids"].numpy() for j in range(k)])
        return {"factorizer": factorizer, "data": data, "importance": importance,
                "layer": str(meta["layer"]), "method": str(meta["method"]),
                "class_names": {c: str(n) for c, n in zip(classes, meta["class_names"])},
                "concept_names": [str(n) for n in meta["concept_names"]],
                "exemplars": saved, "confusions": list(meta["confusions"])}
    except io.DAMAGE_ERRORS as err:
        raise io.FormatError(f"`path` {str(path)!r} is not a valid ConceptAtlas file: {err}") from err


def write_atlas_report(atlas: Any, out_dir: str | os.PathLike, *, n_exemplars: int = 12,
                       n_confusions: int = 5, title: str | None = None,
                       class_pages: dict | None = None, relative: float | None = None,
                       minimum: float | None = None, dpi: int = 100) -> Path:
    """Assemble the numbers of ``atlas`` and write its report (see :mod:`conceptkit.report`)."""
    from ..report import AtlasReport
    from ..report import write_atlas_report as render

    n_exemplars = check_int(n_exemplars, "n_exemplars", minimum=1)
    n_confusions = check_int(n_confusions, "n_confusions", minimum=0)
    data = atlas._data()
    imp = atlas.importance
    images, maps, labels, _ = exemplars(atlas, n_exemplars)
    explained = confusions(atlas, n_confusions)
    meta = {"layer": atlas.layer, "method": atlas.method, "concepts": data.n_concepts,
            "images": len(data.labels), "importance": imp.method,
            "important when": important_rule(imp.method, relative, minimum)}
    report = AtlasReport(
        title=title or f"Concept atlas of {atlas.layer}", class_ids=list(imp.classes),
        class_names=list(imp.class_names), importance=imp.values, ci_low=imp.ci_low,
        ci_high=imp.ci_high, important=imp.important(relative, minimum), concept_names=concept_names(atlas),
        exemplars=[im.float().numpy() / 255.0 for im in images],
        exemplar_maps=[m.float().numpy() for m in maps], exemplar_labels=labels,
        confusions=explained, meta=meta,
        class_pages=dict(class_pages or {}), exemplar_pixels=_has_pixels(images))
    return render(report, out_dir, dpi=dpi)
