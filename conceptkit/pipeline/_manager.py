"""ConceptManager: one explanation per class, grouped by label or by the model's prediction."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_images, check_int, describe
from ..models._bundle import ModelBundle
from ._assemble import build_class_report
from ._atlas_data import class_labels
from ._explainer import ConceptExplainer, predict_labels
from ._result import ClassConcepts


class ConceptManager:
    """One :class:`ConceptExplainer` per class.

    ``fit(images, labels)`` groups the images by label — or, when ``labels`` is None, by the
    model's own prediction (as xplique's CraftManager) — explains every class and returns
    ``{class_id: ClassConcepts}`` (also kept in ``classes_``).

    ``model`` and ``layer`` are taken as :class:`ConceptExplainer` takes them: a
    :class:`~conceptkit.models.ModelBundle` (:func:`conceptkit.models.load`) gives its default
    layer, preprocessing, name and class names unless they are given here. ``class_names`` (a
    list by output index, or a dict ``{class_id: name}``) defaults to the bundle's.
    """

    def __init__(self, model: nn.Module | ModelBundle, layer: str | None = None, *,
                 class_names: dict[int, str] | list[str] | None = None,
                 min_images: int = 2, **explainer_kwargs: Any):
        self.explainer = ConceptExplainer(model, layer, **explainer_kwargs)  # reads a bundle
        # the bundle's class names (the explainer took them) unless the caller gives some
        self.class_names = self.explainer.class_names if class_names is None else class_names
        self.min_images = check_int(min_images, "min_images", minimum=2)
        self.classes_: dict[int, ClassConcepts] = {}
        self.labels_: np.ndarray | None = None

    def _name(self, class_id: int) -> str:
        names = self.class_names
        if names is None:
            return f"class {class_id}"
        if isinstance(names, dict):
            return str(names.get(class_id, f"class {class_id}"))
        return str(names[class_id]) if class_id < len(names) else f"class {class_id}"

    def fit(self, images: torch.Tensor, labels: Any = None, classes: Any = None) -> dict[int, ClassConcepts]:
        """Explain every class (or the listed ``classes``); returns ``{class_id: ClassConcepts}``."""
        images = check_images(images, "images", pixels=True)
        ex = self.explainer
        if labels is None:
            labels = predict_labels(ex.model, images, ex.batch_size, ex.preprocess, ex.progress)
        labels = class_labels(labels, images.shape[0])  # the atlas's check of class labels
        if classes is None:
            wanted = np.unique(labels)
        else:
            try:
                wanted = np.asarray([check_int(c, "classes") for c in classes], dtype=np.int64)
            except TypeError as err:
                raise TypeError(f"`classes` must be a list of class indices; got "
                                f"{describe(classes)}.") from err
            missing = sorted(set(wanted.tolist()) - set(labels.tolist()))
            if missing:
                raise ValueError(f"`classes` {missing} have no image in `labels` (classes "
                                 f"present: {sorted(set(labels.tolist()))}).")
        fitted: dict[int, ClassConcepts] = {}  # a new fit replaces the last one's classes
        few = []
        for class_id in tqdm(wanted, disable=not ex.progress, desc="classes"):
            rows = np.flatnonzero(labels == class_id)
            if rows.size < self.min_images:
                few.append(f"{int(class_id)} ({rows.size})")
                continue
            fitted[int(class_id)] = ex.fit(images[rows], int(class_id), self._name(int(class_id)),
                                           image_ids=rows)
        if not fitted:
            raise ValueError(f"no class has at least `min_images`={self.min_images} images.")
        if few:
            warnings.warn(f"ConceptManager.fit left out {len(few)} class(es) with fewer than "
                          f"`min_images`={self.min_images} images: {', '.join(few)}.",
                          UserWarning, stacklevel=2)
        self.labels_ = labels
        self.classes_ = fitted
        return self.classes_

    def report(self, out_dir: str | os.PathLike, **kwargs: Any) -> Path:
        """Write every class's report and an index page; return the index path.

        ``kwargs`` go to :func:`~conceptkit.pipeline.build_class_report` (``n_images``,
        ``n_exemplars``, ``labels``, ``notes``, ``extra_metrics``).
        """
        from ..report import index_entry, write_class_report, write_index
        from ..report._outputs import owned_folder

        out_dir = Path(out_dir)
        entries = []
        with owned_folder(out_dir, "class index"):  # one run's index and class folders, no earlier run's
            for cc in self.classes_.values():
                report = build_class_report(cc, **kwargs)
                page = write_class_report(report, out_dir, index_link="../index.html")
                entries.append(index_entry(report, page, out_dir))
            return write_index(entries, out_dir)
