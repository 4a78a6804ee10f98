"""What a :class:`~conceptkit.ClassConcepts` file holds, and the checks a loaded one must pass.

Saving a fresh explanation stores the first ``n_images`` class images (uint8) with their concept
maps (float16) and the top exemplars of every concept (uint8 tensors, one ``(m, 3, s, s)`` stack
per concept; never JSON lists), a digest of the model's weights and the identity of the
preprocessing (``fitted_with``, compared by ``ClassConcepts.attach``). A loaded explanation has no class images or activations, only
these saved parts, and saves exactly them again: ``load -> save`` writes the file it came from.
Concept names and MACO visualisations, when the explanation has them, are stored beside
(:mod:`._naming`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import id_list
from ..concepts import ConceptBank
from ..extraction._fingerprint import identity_differences, recorded_identity  # noqa: F401  (identity_differences: re-exported for the atlas and attach)
from ..importance import ConceptImportance
from ..maps import MAP_KINDS
from ._examples import fewer_exemplars_quietly
from ._naming import load_names, names_state


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def result_state(cc: Any, *, n_images: int, n_exemplars: int) -> tuple[dict[str, Any], dict]:
    """Tensors and JSON metadata of ``cc`` (a ClassConcepts, fresh or loaded)."""
    if int(cc.class_id) != int(cc.importance.class_id):  # the file would be refused on load
        raise ValueError(f"`class_id` {cc.class_id} disagrees with `importance.class_id` "
                         f"{cc.importance.class_id}: the importances were computed for class "
                         f"{cc.importance.class_id}; explain class {cc.class_id} with the "
                         f"explainer's `fit` instead of changing `class_id`.")
    tensors, bank_meta = cc.bank.to_state()
    tensors = {f"bank.{k}": v for k, v in tensors.items()}
    imp = cc.importance
    tensors["importance.per_input"] = np.asarray(imp.per_input, dtype=np.float64)
    if imp.ci_low is not None:
        tensors["importance.ci_low"] = np.asarray(imp.ci_low, dtype=np.float64)
        tensors["importance.ci_high"] = np.asarray(imp.ci_high, dtype=np.float64)
    exemplar_ids: list[list] = []
    maps_kind = cc.saved_maps_kind
    if cc.images is not None:
        tensors["images"] = _to_uint8(cc.images[:n_images])
        _put_maps(tensors, cc._shown_maps(n_images))
        maps_kind = cc._auto_kind(None)
        for c in range(cc.n_concepts):
            with fewer_exemplars_quietly():  # the file keeps the exemplars there are
                ex, ids = cc.top_examples(c, n_exemplars,
                                          image_size=min(64, cc.images.shape[-1]))
            tensors[f"exemplars.{c}"] = _to_uint8(ex)
            exemplar_ids.append(id_list(ids))
    else:  # a loaded explanation: what it was loaded with
        if cc.saved_images is not None:
            tensors["images"] = _to_uint8(cc.saved_images[:n_images])
        if cc.saved_maps is not None:
            _put_maps(tensors, cc.saved_maps[:n_images])
        for c, stack in enumerate(cc.saved_exemplars or []):
            tensors[f"exemplars.{c}"] = stack[:n_exemplars].to(torch.uint8)
            exemplar_ids.append(id_list(cc.saved_exemplar_ids[c][:n_exemplars]))
    try:
        metrics = cc.compute_metrics()
    except ValueError:
        metrics = cc.saved_metrics or {}
    meta = {
        "bank": bank_meta, "class_id": int(cc.class_id), "class_name": cc.class_name,
        "model_name": cc.model_name, "layer": cc.layer, "method": cc.method,
        "params": cc.params, "timings": cc.timings, "metrics": metrics,
        "importance": {"method": imp.method, "class_id": int(imp.class_id), "params": imp.params,
                       "has_ci": imp.ci_low is not None},
        "exemplar_ids": exemplar_ids, "maps_kind": maps_kind,
        "image_ids": [] if cc.image_ids is None else id_list(cc.image_ids[:n_images]),
    }
    # what attach() compares: the fitted model's weight digest and preprocessing identity (a
    # loaded explanation keeps what its file recorded, nothing where it recorded nothing)
    fitted = cc.fitted_with if cc.fitted_with is not None else fitted_identity(cc.model_at_layer)
    if fitted:
        meta["fitted_with"] = dict(fitted)
    named_tensors, named_meta = names_state(cc)  # names and MACO pictures, when there are any
    tensors.update(named_tensors)
    meta.update(named_meta)
    return tensors, meta


#: What a file's ``fitted_with`` may record (``model_code`` and ``preprocess_reads`` in files
#: saved since they are read; older files lack them, and they are then not compared).
FITTED_FIELDS = frozenset({"model_digest", "model_structure", "model_code", "preprocess",
                           "preprocess_reads"})


def valid_fitted_with(value: Any) -> bool:
    """Whether a file's ``fitted_with`` is what a save writes: a dict of known fields, digests
    as strings, the preprocessing's description and reads as strings or None."""
    return (isinstance(value, dict) and set(value) <= FITTED_FIELDS
            and all(isinstance(value.get(key, ""), str)
                    for key in ("model_digest", "model_structure", "model_code"))
            and all(value.get(key) is None or isinstance(value[key], str)
                    for key in ("preprocess", "preprocess_reads")))


def fitted_identity(handle: Any) -> dict[str, Any]:
    """``{"model_digest", "model_structure", "preprocess"}`` of the model (its weights, its
    structure) and preprocessing of ``handle`` (what a saved file records, so that
    ``ClassConcepts.attach`` can compare); empty without one."""
    if handle is None:
        return {}
    return recorded_identity(handle.model, handle.preprocess)


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


def _put_maps(tensors: dict, maps: torch.Tensor) -> None:
    """Maps as float16 scaled to [-1, 1] per image and concept, with the scales (float32)
    beside them: pixel maps at 224 px are around 1e-7, below float16's normal range (13 % of
    pixels became 0 and arg-maxes moved), and maps above 65504 would have been Inf."""
    maps = maps.detach().float().cpu()
    scale = maps.abs().amax(dim=(2, 3)) if maps.numel() else torch.ones(maps.shape[:2])
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    tensors["maps"] = (maps / scale[:, :, None, None]).to(torch.float16)
    tensors["maps.scale"] = scale


def _read_maps(tensors: dict) -> torch.Tensor | None:
    """The maps a file holds, in float32 (files before the scales: float16 as stored)."""
    maps, scale = tensors.get("maps"), tensors.get("maps.scale")
    if maps is None or scale is None:
        _check(scale is None, "map scales without maps")
        return maps
    _check(maps.ndim == 4 and tuple(scale.shape) == tuple(maps.shape[:2])
           and scale.is_floating_point() and bool(torch.isfinite(scale).all())
           and bool((scale > 0).all()), f"map scales of shape {tuple(scale.shape)} for maps of "
           f"shape {tuple(maps.shape)}")
    return maps.float() * scale.float()[:, :, None, None]


def _int(value: Any, name: str) -> int:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
           f"{name} must be a non-negative integer; got {value!r}")
    return int(value)


#: The tensors an explanation file holds (and its bank's, exemplars' and visualisations',
#: which their own readers check name by name).
_TENSORS = frozenset({"importance.per_input", "importance.ci_low", "importance.ci_high",
                      "images", "maps", "maps.scale"})
_TENSOR_PREFIXES = ("bank.", "exemplars.", "visualization.")


def result_from_state(cls: type, tensors: dict[str, torch.Tensor], meta: dict) -> Any:
    """A loaded ClassConcepts; ``ValueError`` (and friends) when its parts disagree."""
    unknown = sorted(key for key in tensors if not key.startswith(_TENSOR_PREFIXES)
                     and key not in _TENSORS)
    _check(not unknown, f"{len(unknown)} unknown tensor(s) {unknown[:5]}"
           f"{' ...' if len(unknown) > 5 else ''} (an explanation saves none of these names)")
    for field in ("class_name", "model_name", "layer", "method"):
        _check(isinstance(meta.get(field), str),
               f"{field} must be a string; got {meta.get(field)!r:.80}")
    bank = ConceptBank.from_state({k[5:]: v for k, v in tensors.items() if k.startswith("bank.")},
                                  meta["bank"])
    k = bank.n_concepts
    imp_meta = meta["importance"]
    _check(isinstance(imp_meta, dict) and isinstance(imp_meta.get("has_ci"), bool)
           and isinstance(imp_meta.get("method"), str)
           and isinstance(imp_meta.get("params"), dict),
           "malformed importance metadata")
    per_input = tensors["importance.per_input"].numpy()
    _check(per_input.ndim == 2 and per_input.shape[1] == k and per_input.shape[0] > 0
           and bool(np.isfinite(per_input).all()),
           f"importances of shape {per_input.shape} for {k} concepts")
    ci = [None, None]
    if imp_meta["has_ci"]:
        ci = [tensors["importance.ci_low"].numpy(), tensors["importance.ci_high"].numpy()]
        _check(all(c.shape == (k,) for c in ci),
               f"confidence intervals of shapes {[c.shape for c in ci]} for {k} concepts")
        # NaN where one image gives no interval; never Inf, never a low bound above the high
        _check(not any(bool(np.isinf(c).any()) for c in ci)
               and not bool((ci[0] > ci[1]).any()),
               "confidence intervals with infinite bounds or a low bound above the high")
    importance = ConceptImportance(
        per_input=per_input, importances=per_input.mean(axis=0), ci_low=ci[0], ci_high=ci[1],
        method=imp_meta["method"], class_id=_int(imp_meta["class_id"], "importance class_id"),
        params=imp_meta["params"])
    images, maps = tensors.get("images"), _read_maps(tensors)
    if images is not None:
        _check(images.ndim == 4 and images.shape[1] == 3 and images.dtype == torch.uint8,
               f"images of shape {tuple(images.shape)} and dtype {images.dtype} (RGB, uint8)")
    if maps is not None:
        _check(maps.ndim == 4 and maps.shape[1] == k and maps.is_floating_point(),
               f"maps of shape {tuple(maps.shape)} for {k} concepts")
        _check(bool(torch.isfinite(maps).all()), "maps with NaN or Inf values")
        _check(images is None or (maps.shape[0] == images.shape[0]
                                  and maps.shape[2:] == images.shape[2:]),
               f"maps of shape {tuple(maps.shape)} for images of shape "
               f"{None if images is None else tuple(images.shape)}")
    image_ids = meta.get("image_ids", [])
    _check(isinstance(image_ids, list) and _ids_kind(image_ids) is not None
           and len(set(image_ids)) == len(image_ids)
           and (images is None or len(image_ids) in (0, images.shape[0])),
           "image_ids that do not match the images")
    exemplars = [tensors.get(f"exemplars.{c}") for c in range(k)]
    ids = meta.get("exemplar_ids", [])
    extra = [key for key in tensors if key.startswith("exemplars.")
             and key not in {f"exemplars.{c}" for c in range(k)}]
    if all(e is None for e in exemplars) and not extra:
        exemplars = ids = None
        _check(meta.get("exemplar_ids", []) == [], "exemplar ids without exemplars")
    else:
        _check(not extra and all(e is not None for e in exemplars), "exemplars of some concepts only")
        _check(isinstance(ids, list) and len(ids) == k, f"exemplar ids for {len(ids)} of {k} concepts")
        for c, (stack, row) in enumerate(zip(exemplars, ids)):
            _check(stack.ndim == 4 and stack.shape[1] == 3 and stack.dtype == torch.uint8
                   and isinstance(row, list)
                   and len(row) == stack.shape[0] and _ids_kind(row) is not None,
                   f"exemplars of concept {c}: {tuple(stack.shape)} with ids {row!r}")
    _check(isinstance(meta["params"], dict) and isinstance(meta["timings"], dict),
           "params or timings of the wrong type")
    _check(all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and v >= 0 for v in meta["timings"].values()),
           "timings that are not numbers of seconds")
    metrics = meta.get("metrics")
    _check(metrics is None or (isinstance(metrics, dict)
                               and all(isinstance(v, dict) for v in metrics.values())),
           "metrics of the wrong type")
    class_id = _int(meta["class_id"], "class_id")
    _check(class_id == importance.class_id, f"class_id {class_id} but importances of class "
           f"{importance.class_id}")
    fitted_with = meta.get("fitted_with", {})  # files before it: unknown, attach checks nothing
    _check(valid_fitted_with(fitted_with), f"malformed fitted_with metadata {fitted_with!r:.80}")
    maps_kind = meta.get("maps_kind", "coefficient")  # files before 0.2 saved coefficient maps
    _check(maps_kind in MAP_KINDS and maps_kind != "auto", f"maps of unknown kind {maps_kind!r}")
    names, visualizations = load_names(tensors, meta, k)
    return cls(class_id=class_id, class_name=str(meta["class_name"]),
               bank=bank, importance=importance, images=None, activations=None,
               model_name=str(meta["model_name"]), layer=str(meta["layer"]),
               method=str(meta["method"]), params=meta["params"], timings=meta["timings"],
               image_ids=_id_array(image_ids), saved_maps=maps, saved_maps_kind=str(maps_kind),
               saved_metrics=metrics,
               saved_exemplars=exemplars,
               saved_exemplar_ids=None if ids is None else [_id_array(row) for row in ids],
               saved_images=None if images is None else images.float() / 255.0,
               names=names, visualizations=visualizations, fitted_with=dict(fitted_with))


def _ids_kind(ids: list) -> type | None:
    """``int`` or ``str`` when ``ids`` are all one of them (an empty list counts as ints)."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
        return int
    if all(isinstance(v, str) and v for v in ids):
        return str
    return None


def _id_array(ids: list) -> np.ndarray:
    return np.asarray(ids, dtype=str if _ids_kind(ids) is str and ids else np.int64)
