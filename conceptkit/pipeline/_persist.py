"""ClassConcepts on disk: one ``.safetensors`` file (tensors + a JSON header), no pickle."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .. import io
from .._validation import check_image_ids, id_list
from ..concepts import ConceptBank
from ..importance import ConceptImportance

RESULT_KIND = "ClassConcepts"
RESULT_VERSION = 1


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def save_result(self: Any, path: str | os.PathLike, *, n_images: int = 8,
                n_exemplars: int = 12) -> str:
    """What :meth:`ClassConcepts.save` writes."""
    tensors, meta = self.bank.to_state()
    tensors = {f"bank.{k}": v for k, v in tensors.items()}
    imp = self.importance
    tensors["importance.per_input"] = np.asarray(imp.per_input, dtype=np.float64)
    if imp.ci_low is not None:
        tensors["importance.ci_low"] = np.asarray(imp.ci_low, dtype=np.float64)
        tensors["importance.ci_high"] = np.asarray(imp.ci_high, dtype=np.float64)
    exemplar_ids: list[list] = []
    if self.images is not None:
        shown = self.images[:n_images]
        tensors["images"] = _to_uint8(shown)
        tensors["maps"] = self._shown_maps(n_images).to(torch.float16)
        for c in range(self.n_concepts):
            ex, ids = self.top_examples(c, n_exemplars, image_size=min(64, self.images.shape[-1]))
            tensors[f"exemplars.{c}"] = _to_uint8(ex)
            exemplar_ids.append(id_list(ids))
    elif self.saved_maps is not None:
        tensors["maps"] = self.saved_maps.to(torch.float16)
    try:
        metrics = self.compute_metrics()
    except ValueError:
        metrics = self.saved_metrics or {}
    meta_all = {
        "bank": meta, "class_id": int(self.class_id), "class_name": self.class_name,
        "model_name": self.model_name, "layer": self.layer, "method": self.method,
        "params": self.params, "timings": self.timings, "metrics": metrics,
        "importance": {"method": imp.method, "class_id": int(imp.class_id), "params": imp.params,
                       "has_ci": imp.ci_low is not None},
        "exemplar_ids": exemplar_ids or [id_list(ids) for ids in
                                         self.bank.extra.get("exemplar_ids", [])],
        "image_ids": [] if self.image_ids is None else id_list(self.image_ids[:n_images]),
    }
    return str(io.save_file(path, tensors, meta_all, kind=RESULT_KIND, version=RESULT_VERSION))


def load_result(cls: Any, path: str | os.PathLike) -> Any:
    """What :meth:`ClassConcepts.load` reads."""
    tensors, meta = io.load_file(path, kind=RESULT_KIND, version=RESULT_VERSION)
    with io.loading(path, "ClassConcepts file"):
        bank_tensors = {k[5:]: v for k, v in tensors.items() if k.startswith("bank.")}
        bank = ConceptBank.from_state(bank_tensors, meta["bank"])
        k = bank.n_concepts
        exemplars = [tensors[f"exemplars.{c}"] for c in range(k) if f"exemplars.{c}" in tensors]
        if len(exemplars) == k:
            bank.extra["exemplars"] = exemplars
        exemplar_ids = meta.get("exemplar_ids", [])
        if not isinstance(exemplar_ids, list):
            raise TypeError("exemplar_ids must be a list")
        bank.extra["exemplar_ids"] = [_ids_with_repeats(ids, f"exemplar_ids[{c}]")
                                      for c, ids in enumerate(exemplar_ids)]
        saved_ids = meta.get("image_ids", [])
        if not isinstance(saved_ids, list):
            raise TypeError("image_ids must be a list")
        imp_meta = meta["importance"]
        per_input = tensors["importance.per_input"].numpy()
        importance = ConceptImportance(
            per_input=per_input, importances=per_input.mean(axis=0),
            ci_low=tensors["importance.ci_low"].numpy() if imp_meta["has_ci"] else None,
            ci_high=tensors["importance.ci_high"].numpy() if imp_meta["has_ci"] else None,
            method=imp_meta["method"], class_id=int(imp_meta["class_id"]),
            params=imp_meta["params"])
        images = tensors.get("images")
        result = cls(class_id=int(meta["class_id"]), class_name=str(meta["class_name"]),
                     bank=bank, importance=importance, images=None, activations=None,
                     model_name=meta["model_name"], layer=meta["layer"], method=meta["method"],
                     params=meta["params"], timings=meta["timings"],
                     image_ids=check_image_ids(saved_ids, len(saved_ids)),
                     saved_maps=tensors.get("maps"), saved_metrics=meta.get("metrics"),
                     saved_images=None if images is None else images.float() / 255.0)
        if per_input.shape[1] != k:
            raise ValueError(f"importances have {per_input.shape[1]} concepts, the bank {k}")
        return result


def _ids_with_repeats(ids: Any, name: str) -> np.ndarray:
    """Exemplar source ids (one image may give several exemplars): all ints or all strings."""
    if not isinstance(ids, list):
        raise TypeError(f"{name} must be a list")
    if all(isinstance(v, str) for v in ids):
        return np.asarray(ids, dtype=str)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
        return np.asarray(ids, dtype=np.int64)
    raise TypeError(f"{name} must hold ints or strings")
