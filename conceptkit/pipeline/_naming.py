"""Names and pictures of an explanation's concepts: what ClassConcepts stores, saves and shows.

:meth:`ClassConcepts.name_concepts` keeps a :class:`~conceptkit.naming.ConceptNames` table and
:meth:`ClassConcepts.visualize` keeps the MACO pictures it made; this module resolves concepts
given by name, turns both into report labels / details, and writes them into (and reads them back
from) the explanation's safetensors file.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from .._validation import check_int, describe, did_you_mean


def concept_labels(names: Any, k: int) -> list[str]:
    """One label per concept: its name, or ``"concept j"`` when unnamed; a name that several
    concepts share gets each one's index, ``"yellow ring [3]"``, as in the report's figures, so
    that ``print(result)``, the command line and the report tell them apart."""
    if names is None:
        return [f"concept {j}" for j in range(k)]
    labels = names.labels()
    return [f"{label} [{j}]" if labels.count(label) > 1 else label
            for j, label in enumerate(labels)]


def resolve_concept(cc: Any, concept: Any) -> int:
    """A concept index from an index, ``"concept j"`` (always concept ``j``, named or not), a
    label of :func:`concept_labels` or a name given by :meth:`ClassConcepts.name_concepts`."""
    if isinstance(concept, str):
        k = cc.n_concepts
        indexed = re.fullmatch(r"concept (\d+)", concept.strip())
        if indexed:
            j = int(indexed.group(1))
            if j >= k:
                raise ValueError(f"`concept` {concept!r} is out of range: this explanation has "
                                 f"{k} concepts, 'concept 0' to 'concept {k - 1}'.")
            return j
        labels = concept_labels(cc.names, k)
        if concept in labels:
            return labels.index(concept)
        names = [] if cc.names is None else [entry.name for entry in cc.names]
        hits = [j for j, name in enumerate(names) if name == concept]
        if hits:  # one name several concepts share
            raise ValueError(f"`concept` {concept!r} names concepts {hits}; pass one index.")
        also = "" if cc.names is None else " (or 'concept <index>')"
        raise ValueError(f"`concept` {concept!r} is not the name of a concept; names: "
                         f"{labels}{also}.")
    return check_int(concept, "concept", minimum=0, maximum=cc.n_concepts - 1)


#: What :meth:`ClassConcepts.visualize` sets itself among :func:`visualize_concept`'s arguments.
_VISUALIZE_OWN = ("model", "bank", "concept", "images", "steps", "image_size", "preprocess",
                  "seed", "progress")


def _check_visualize_options(kwargs: dict[str, Any]) -> None:
    """Refuse an option :func:`~conceptkit.naming.visualize_concept` does not take, by name."""
    import inspect

    from ..naming import visualize_concept

    options = [name for name in inspect.signature(visualize_concept).parameters
               if name not in _VISUALIZE_OWN]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        # preprocess (and the model, bank, images) come from the explanation itself
        hint = did_you_mean(unknown, [*options, "steps", "image_size", "seed", "progress"])
        raise TypeError(f"`visualize` got unknown option(s) {unknown}{hint}; it takes steps, "
                        f"image_size, seed, progress and the MACO options "
                        f"{', '.join(options)} (the preprocessing is the explanation's).")


def visualize(cc: Any, concept: Any, *, steps: int, image_size: int | None, seed: int,
              progress: bool | None, **kwargs: Any) -> Any:
    """:meth:`ClassConcepts.visualize`: MACO with the class images' spectrum, kept on ``cc``."""
    from ..naming import visualize_concept

    _check_visualize_options(kwargs)
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
    if entry.below_chance:  # kept as a name (its score passed), flagged here and in the notes
        details["trust below chance"] = ("probe inputs that show the named thing activate the "
                                         "concept less than the others (see the notes)")
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
