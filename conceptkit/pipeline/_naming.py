"""Names and pictures of an explanation's concepts: what ClassConcepts stores, saves and shows.

:meth:`ClassConcepts.name_concepts` keeps a :class:`~conceptkit.naming.ConceptNames` table and
:meth:`ClassConcepts.visualize` keeps the MACO pictures it made; this module resolves concepts
given by name, turns both into report labels / details, and writes them into (and reads them back
from) the explanation's safetensors file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_int, describe


def concept_labels(names: Any, k: int) -> list[str]:
    """One label per concept: its name, or ``"concept j"`` when unnamed."""
    return names.labels() if names is not None else [f"concept {j}" for j in range(k)]


def resolve_concept(cc: Any, concept: Any) -> int:
    """A concept index from an index or a name given by :meth:`ClassConcepts.name_concepts`."""
    if isinstance(concept, str):
        labels = concept_labels(cc.names, cc.n_concepts)
        hits = [j for j, label in enumerate(labels) if label == concept]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise ValueError(f"`concept` {concept!r} names concepts {hits}; pass one index.")
        raise ValueError(f"`concept` {concept!r} is not the name of a concept; names: {labels}.")
    return check_int(concept, "concept", minimum=0, maximum=cc.n_concepts - 1)


def visualize(cc: Any, concept: Any, *, steps: int, image_size: int | None, seed: int,
              progress: bool | None, **kwargs: Any) -> Any:
    """:meth:`ClassConcepts.visualize`: MACO with the class images' spectrum, kept on ``cc``."""
    from ..naming import visualize_concept

    concept = resolve_concept(cc, concept)
    model = cc._require_model()
    images = cc.images if cc.images is not None else cc.saved_images
    if images is None:
        raise ValueError("a visualisation needs images for its magnitude spectrum; this "
                         "explanation holds none.")
    kwargs.setdefault("device", model.device)
    kwargs.setdefault("input_size", int(min(images.shape[-2:])))  # the caller's, when given
    vis = visualize_concept(model.model, cc.bank, concept, images, steps=steps,
                            image_size=image_size, preprocess=model.preprocess,
                            seed=seed, progress=model.progress if progress is None else progress,
                            **kwargs)
    cc.visualizations[concept] = vis
    return vis


def name_details(entry: Any, score_name: str) -> dict[str, Any]:
    """What the report shows beside a name: score, trust, runner-ups, definition."""
    details: dict[str, Any] = {f"name score ({score_name})": entry.score,
                               "trust (AUC)": entry.trust}
    if entry.runner_ups:
        details["runner-ups"] = ", ".join(f"{n} ({s:.3g})" for n, s in entry.runner_ups)
    if entry.description:
        details["definition"] = entry.description
    return details


def visualization_picture(vis: Any) -> np.ndarray:
    """``(2, 3, s, s)``: the visualisation and the same faded where its transparency is low."""
    return torch.stack([vis.image, vis.masked()]).clamp(0, 1).numpy()


def names_state(cc: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON of the names and visualisations, for :meth:`ClassConcepts.save`."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    if cc.names is not None:
        meta["names"] = cc.names.to_dict()
    if cc.visualizations:
        meta["visualizations"] = {}
        for c, vis in sorted(cc.visualizations.items()):
            tensors[f"visualization.{c}.image"] = (vis.image.clamp(0, 1) * 255).round().to(torch.uint8)
            tensors[f"visualization.{c}.transparency"] = vis.transparency.to(torch.float16)
            meta["visualizations"][str(c)] = {"params": vis.params,
                                              "objective": [float(v) for v in vis.objective]}
    return tensors, meta


def load_names(tensors: dict[str, torch.Tensor], meta: dict[str, Any], k: int) -> tuple[Any, dict]:
    """Names and visualisations read back by :meth:`ClassConcepts.load`; ValueError when they do
    not fit the explanation."""
    from ..naming import ConceptNames, ConceptVisualization

    names = None
    if meta.get("names") is not None:
        names = ConceptNames.from_dict(meta["names"])
        if len(names) != k:
            raise ValueError(f"the stored names cover {len(names)} concepts, the bank {k}")
    visualizations = {}
    stored = meta.get("visualizations") or {}
    if not isinstance(stored, dict):
        raise ValueError(f"visualizations must be a dict; got {describe(stored)}")
    listed = {f"visualization.{key}.{part}" for key in stored for part in ("image", "transparency")}
    stray = sorted(key for key in tensors if key.startswith("visualization.") and key not in listed)
    if stray:
        raise ValueError(f"visualisation tensors {stray} that the metadata does not list")
    for key, info in stored.items():
        c = int(key)
        if not 0 <= c < k:
            raise ValueError(f"a visualisation of concept {c} in a bank of {k} concepts")
        image = tensors[f"visualization.{c}.image"]
        transparency = tensors[f"visualization.{c}.transparency"].float()
        if image.ndim != 3 or image.shape[0] != 3 or transparency.shape != image.shape[1:] \
                or image.dtype != torch.uint8 or not bool(torch.isfinite(transparency).all()):
            raise ValueError(f"visualisation {c} has image {describe(image)} and transparency "
                             f"{describe(transparency)}")
        visualizations[c] = ConceptVisualization(
            image.float() / 255.0, transparency, c, np.asarray(info["objective"], dtype=np.float64),
            dict(info["params"]))
    return names, visualizations
