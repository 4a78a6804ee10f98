"""Saving, loading and reporting a :class:`~conceptkit.ConceptAtlas` (safetensors + JSON)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from .._validation import check_int
from ._atlas_data import ATLAS_IMPORTANCES, ATLAS_METHODS, AtlasData, DictionaryBank
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
    from ..concepts._base import factorizer_key

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
    meta = {"factorizer": {"name": factorizer_key(type(factorizer)), "params": _params(factorizer),
                           "info": info},
            "layer": atlas.layer, "method": atlas.method, "classes": data.classes,
            "class_names": imp.class_names, "importance": {"method": imp.method,
                                                           "params": imp.params},
            "image_size": None if data.image_size is None else list(data.image_size),
            "concept_names": concept_names(atlas), "confusions": confusions(atlas, n_confusions) or []}
    # what a refit and a load with the model need (files before them hold neither: a load
    # with the model then uses the constructor's defaults and checks nothing)
    settings = getattr(atlas, "fitted_settings_", None)
    if settings is not None:
        meta["settings"] = dict(settings)
    fitted = getattr(atlas, "fitted_with_", None)
    if fitted is not None:
        meta["fitted_with"] = dict(fitted)
    return str(io.save_file(path, tensors, meta, kind=ATLAS_KIND, version=ATLAS_VERSION))


#: The constructor settings a saved atlas records in ``meta["settings"]`` (restored by
#: ``ConceptAtlas.load(path, model=...)``, so that a refit runs as the first fit did).
SETTINGS = ("importance", "seed", "max_inputs_per_class", "patch_size", "n_designs",
            "importance_kwargs", "method_kwargs", "model_name")


def fitted_settings(atlas: Any) -> dict[str, Any]:
    """The settings of ``atlas`` that change its results (:data:`SETTINGS`), as JSON values;
    options that JSON cannot hold (a callable in ``importance_kwargs``) are recorded as None,
    which a load reads as "not known" and leaves at the default."""
    ex = atlas.explainer
    return {"importance": atlas.importance_method, "seed": ex.seed,
            "max_inputs_per_class": atlas.max_inputs_per_class, "patch_size": ex.patch_size,
            "n_designs": ex.n_designs if getattr(atlas, "_designs_given", False) else None,
            "importance_kwargs": _json_or_none(ex.importance_kwargs),
            "method_kwargs": _json_or_none(ex.method_kwargs), "model_name": ex.model_name}


def _json_or_none(options: dict) -> dict | None:
    try:
        return io.json_ready(dict(options), strict=True, finite=False)
    except TypeError:
        return None


def fitted_identity(ex: Any, store: Any = None) -> dict[str, Any]:
    """``{"model_digest", "model_structure", "preprocess"}`` of the model and preprocessing an
    atlas was fitted with, as a :class:`~conceptkit.ClassConcepts` file records them. Fitted on
    a store, the preprocessing is the one the store was extracted with (its fingerprint), and
    unknown (left out) when the store recorded none."""
    from ._persist import fitted_identity as identity

    recorded = identity(ex)
    if store is not None:
        fingerprint = store.manifest.get("fingerprint")
        for key in ("preprocess", "preprocess_reads"):
            recorded.pop(key, None)
            if isinstance(fingerprint, dict) and key in fingerprint:
                recorded[key] = fingerprint[key]
    return recorded


def fitted_differences(known: dict[str, Any], model: Any,
                       preprocess: Any) -> tuple[list[str], str | None, str]:
    """What differs between ``model`` / ``preprocess`` and what a saved atlas was fitted with
    (``known``, its ``fitted_with``), as ``ClassConcepts.attach`` compares them: the model's
    differences (weights, structure), the preprocessing's (None when it matches or the file
    recorded none) and the fix of the latter."""
    from ..extraction._fingerprint import READS_DIFFER, callable_identity
    from ..extraction._fingerprint import shown_identity as _short
    from ._persist import identity_differences

    model_differences, differs = identity_differences(known, model, preprocess, "the atlas")
    if not differs:
        return model_differences, None, ""
    if preprocess is None:
        difference = (f"`preprocess` was not given, and this atlas was fitted with the "
                      f"preprocessing {_short(known['preprocess'])}: concept maps and "
                      f"confusions of new images would be computed on inputs the model was "
                      f"not fitted on")
        fix = "Pass the same preprocessing: ConceptAtlas.load(path, model=..., preprocess=...)."
    elif known.get("preprocess") == callable_identity(preprocess):
        difference = (f"`preprocess` reads other values than the preprocessing this atlas was "
                      f"fitted with: {READS_DIFFER}")
    else:
        difference = (f"`preprocess` differs from the preprocessing this atlas was fitted "
                      f"with: fitted with {_short(known['preprocess'])}, given "
                      f"{_short(callable_identity(preprocess))}")
        fix = ("Pass the preprocessing it was fitted with, or strict=False (a warning "
               "instead) when yours computes the same, written otherwise.")
    return model_differences, difference, fix


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


def _whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_fields(meta: dict) -> None:
    """The metadata fields of a saved atlas that its digest cannot vouch for (a file written
    with edited metadata carries a valid digest): each of the type and range the atlas writes.
    A ``ValueError`` names the field."""
    from ..importance import METHODS as IMPORTANCE_METHODS
    from ._persist import valid_fitted_with
    from ._pixel import PIXEL_METHODS

    size = meta["image_size"]
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(_whole(side, 1) for side in size)):
        raise ValueError(f"image_size must be null or [height, width], two whole numbers of "
                         f"pixels >= 1; got {size!r:.80}")
    if not isinstance(meta["layer"], str) or not meta["layer"]:
        raise ValueError(f"layer must be the dotted name of a layer; got {meta['layer']!r:.80}")
    if meta["method"] not in ATLAS_METHODS:
        raise ValueError(f"method must be one of {list(ATLAS_METHODS)}; got "
                         f"{meta['method']!r:.80}")
    importance = meta["importance"]
    resolved = (*PIXEL_METHODS, *IMPORTANCE_METHODS)
    if not isinstance(importance, dict) or importance.get("method") not in resolved:
        got = importance.get("method") if isinstance(importance, dict) else importance
        raise ValueError(f"importance.method must be one of {list(resolved)}; got {got!r:.80}")
    if not isinstance(importance.get("params"), dict):
        raise ValueError(f"importance.params must be a dict; got "
                         f"{importance.get('params')!r:.80}")
    if not isinstance(meta["confusions"], list):
        raise ValueError(f"confusions must be a list of explained class pairs; got "
                         f"{meta['confusions']!r:.80}")
    settings = meta.get("settings")  # files before it: none, a load uses the defaults
    if settings is not None:
        checks = {"importance": lambda v: v in ATLAS_IMPORTANCES,
                  "seed": lambda v: v is None or _whole(v, 0),
                  "max_inputs_per_class": lambda v: v is None or _whole(v, 2),
                  "patch_size": lambda v: v is None or _whole(v, 1),
                  "n_designs": lambda v: v is None or _whole(v, 1),
                  "importance_kwargs": lambda v: v is None or isinstance(v, dict),
                  "method_kwargs": lambda v: v is None or isinstance(v, dict),
                  "model_name": lambda v: v is None or isinstance(v, str)}
        if not isinstance(settings, dict) or not set(settings) <= set(checks):
            raise ValueError(f"settings must be a dict with keys among {list(checks)}; got "
                             f"{settings!r:.80}")
        for key, value in settings.items():
            if not checks[key](value):
                raise ValueError(f"settings.{key} has the value {value!r:.80}, which the atlas "
                                 f"does not write")
    fitted = meta.get("fitted_with")  # files before it: unknown, a load checks nothing
    if fitted is not None and not valid_fitted_with(fitted):
        raise ValueError(f"fitted_with must be a dict of the model's digests and the "
                         f"preprocessing's description; got {fitted!r:.80}")


def _check_importance(tensors: dict[str, torch.Tensor]) -> None:
    """Importances are finite; an interval bound is finite, or NaN where the method gives no
    interval."""
    values = tensors["importance.values"].double()
    if not bool(torch.isfinite(values).all()):
        raise ValueError("importance.values holds NaN or infinite values; the atlas writes "
                         "finite importances")
    for field in ("importance.ci_low", "importance.ci_high"):
        if bool(torch.isinf(tensors[field].double()).any()):
            raise ValueError(f"{field} holds infinite values; the atlas writes finite bounds "
                             f"(NaN where there is no interval)")


def _number(value: Any, allow_none: bool = False) -> bool:
    if value is None:
        return allow_none
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_confusions(items: list, classes: list[int], k: int, n: int) -> None:
    """Each saved confusion is what :func:`confusions` writes: two fitted classes, counts,
    a probability and concept contributions of this dictionary."""
    for i, item in enumerate(items):
        where = f"confusions[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a dict (an explained class pair); got "
                             f"{item!r:.80}")
        if item.get("a") not in classes or item.get("b") not in classes \
                or item["a"] == item["b"]:
            raise ValueError(f"{where} must name two different fitted classes of {classes} as "
                             f"'a' and 'b'; got {item.get('a')!r:.20} and {item.get('b')!r:.20}")
        if not (_whole(item.get("n_images"), 0) and _whole(item.get("n_confused"), 0)
                and item["n_confused"] <= item["n_images"]):
            raise ValueError(f"{where} must count n_confused <= n_images images; got "
                             f"{item.get('n_confused')!r:.20} of {item.get('n_images')!r:.20}")
        probability = item.get("probability")
        if not _number(probability) or not 0 <= probability <= 1:
            raise ValueError(f"{where}.probability must be a probability in [0, 1]; got "
                             f"{probability!r:.40}")
        if not _number(item.get("mean_margin")):
            raise ValueError(f"{where}.mean_margin must be a finite number; got "
                             f"{item.get('mean_margin')!r:.40}")
        ids = item.get("image_ids")
        if not isinstance(ids, list) or not all(_whole(v, 0) and v < n for v in ids):
            raise ValueError(f"{where}.image_ids must list image ids in [0, {n}); got "
                             f"{ids!r:.80}")
        concepts = item.get("concepts")
        if not isinstance(concepts, list) or not all(
                isinstance(c, dict) and _whole(c.get("concept"), 0) and c["concept"] < k
                and _number(c.get("contribution")) and _number(c.get("ci_low"), True)
                and _number(c.get("ci_high"), True) and isinstance(c.get("shared"), bool)
                for c in concepts):
            raise ValueError(f"{where}.concepts must list dicts of a concept in [0, {k}), its "
                             f"finite contribution, its interval and whether it is shared; "
                             f"got {concepts!r:.80}")


def read_atlas(path: str | os.PathLike) -> dict[str, Any]:
    """The parts of a saved atlas (:class:`FormatError` on a file that is not one)."""
    from ..concepts._base import factorizer_from_state

    tensors, meta = io.load_file(path, kind=ATLAS_KIND, version=ATLAS_VERSION)
    try:
        _check_fields(meta)
        spec = meta["factorizer"]
        arrays = {k[len("factorizer."):]: v.numpy() for k, v in tensors.items()
                  if k.startswith("factorizer.")}
        factorizer = factorizer_from_state(spec["name"], spec["params"], arrays, spec["info"])
        classes = meta["classes"]
        if not (isinstance(classes, list) and all(_whole(c, 0) for c in classes)):
            raise ValueError(f"classes must be a list of class ids (whole numbers >= 0); got "
                             f"{classes!r:.80}")
        classes = [int(c) for c in classes]
        k = int(factorizer.components_.shape[0])
        labels = tensors["labels"].numpy().astype(np.int64)
        data = AtlasData(bank=DictionaryBank(factorizer, meta["layer"], meta["method"]),
                         labels=labels, classes=classes,
                         logits=tensors["logits"].double().numpy(),
                         scores=tensors["scores"].double().numpy(), images=None,
                         image_size=None if meta["image_size"] is None else tuple(meta["image_size"]))
        values = tensors["importance.values"].double().numpy()
        _check_shapes(tensors, meta, classes, k)
        _check_importance(tensors)
        _check_confusions(meta["confusions"], classes, k, len(labels))
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
                "exemplars": saved, "confusions": list(meta["confusions"]),
                "settings": meta.get("settings"), "fitted_with": meta.get("fitted_with")}
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
        class_pages=dict(class_pages or {}), exemplar_pixels=_has_pixels(images),
        no_region=list((imp.params or {}).get("no_region") or []))
    return render(report, out_dir, dpi=dpi)
