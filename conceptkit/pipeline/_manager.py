"""ConceptManager: one explanation per class, grouped by label or by the model's prediction."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._reprs import summarize
from .._torchutils import check_not_inference_mode
from .._validation import check_images, check_int, describe
from ..models._bundle import ModelBundle
from ..models._candidates import class_index
from ._atlas_data import class_labels
from ._explainer import ConceptExplainer, check_class_names, predict_labels
from ._result import ClassConcepts


class ConceptManager:
    """One :class:`ConceptExplainer` per class.

    ``fit(images, labels)`` groups the images by label — or, when ``labels`` is None, by the
    model's own prediction (as xplique's CraftManager) — explains every class and returns
    ``{class_id: ClassConcepts}`` (also kept in ``classes_``).

    ``model`` and ``layer`` are taken as :class:`ConceptExplainer` takes them: a
    :class:`~conceptkit.models.ModelBundle` (:func:`conceptkit.models.load`) gives its default
    layer, preprocessing, name and class names unless they are given here. ``class_names`` (a
    list by output index, or a dict ``{class_id: name}``) defaults to the bundle's; they reach
    the explainer too (a dict as a list by output index, ``"class <i>"`` where it names no
    class), so that classes can be given by name to :meth:`fit` and to ``explainer.fit``.
    """

    def __init__(self, model: nn.Module | ModelBundle, layer: str | None = None, *,
                 class_names: dict[int, str] | list[str] | None = None,
                 min_images: int = 2, **explainer_kwargs: Any):
        _check_explainer_options(explainer_kwargs)
        if class_names is not None:
            explainer_kwargs["class_names"] = _names_by_index(class_names)
        self.explainer = ConceptExplainer(model, layer, **explainer_kwargs)  # reads a bundle
        # the bundle's class names (the explainer took them) unless the caller gives some
        self.class_names = self.explainer.class_names if class_names is None else class_names
        self.min_images = check_int(min_images, "min_images", minimum=2)
        self.classes_: dict[int, ClassConcepts] = {}
        self.labels_: np.ndarray | None = None

    def __repr__(self) -> str:
        ex = self.explainer
        fitted = (f"fitted: {len(self.classes_)} classes {summarize(sorted(self.classes_))}"
                  if self.classes_ else "not fitted")
        return (f"ConceptManager({ex.model_name} at {ex.layer!r}, n_concepts={ex.n_concepts}, "
                f"method={ex.method!r}, importance={ex.importance!r}, "
                f"min_images={self.min_images}; {fitted})")

    def _name(self, class_id: int) -> str:
        names = self.class_names
        if names is None:
            return f"class {class_id}"
        if isinstance(names, dict):
            return str(names.get(class_id, f"class {class_id}"))
        return str(names[class_id]) if class_id < len(names) else f"class {class_id}"

    def fit(self, images: torch.Tensor, labels: Any = None, classes: Any = None) -> dict[int, ClassConcepts]:
        """Explain every class (or the listed ``classes``: class indices, or class names when
        the manager knows them, each once); returns ``{class_id: ClassConcepts}``.

        ``class_names`` must name the model's outputs: a list of another length than the
        model's number of outputs, or a dict with a key past the last output, is refused, as
        is a class to explain (with ``min_images`` images) past the last output."""
        check_not_inference_mode("ConceptManager.fit")
        images = check_images(images, "images", pixels=True)
        ex = self.explainer
        if labels is None:
            labels = predict_labels(ex.model, images, ex.batch_size, ex.preprocess, ex.progress,
                                    output=ex.output)
        labels = class_labels(labels, images.shape[0])  # the atlas's check of class labels
        if classes is None:
            wanted = np.unique(labels)
        else:
            wanted = np.asarray(self._resolve_classes(classes), dtype=np.int64)
            missing = sorted(set(wanted.tolist()) - set(labels.tolist()))
            if missing:
                raise ValueError(f"`classes` {missing} have no image in `labels` (classes "
                                 f"present: {sorted(set(labels.tolist()))}).")
        n_outputs = _n_outputs(ex, images)
        if n_outputs is not None:  # else the explainer says what the model's output is
            # the classes that will be explained: one left out (too few images) is only named
            counts = {int(c): int(np.sum(labels == c)) for c in wanted}
            self._check_outputs(n_outputs, np.array([c for c in wanted
                                                     if counts[int(c)] >= self.min_images]))
        if isinstance(self.class_names, dict):
            _cover(ex, int(wanted.max()) if wanted.size else -1, n_outputs)
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

    def _resolve_classes(self, classes: Any) -> list[int]:
        """``classes`` as class indices (names resolved as the explainer resolves a class
        given by name); a class listed twice is refused."""
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
            raise TypeError(f"`classes` must be a list of class indices or names; got "
                            f"{describe(classes)}.")
        names = self.explainer.class_names or []
        resolved: dict[int, Any] = {}
        for value in classes:
            if isinstance(value, str):
                index = class_index(value, names, "`classes`")
            else:
                try:
                    index = check_int(value, "classes", minimum=0)
                except TypeError as err:
                    raise TypeError(f"`classes` must be a list of class indices or names; got "
                                    f"{describe(value)} in {describe(classes)}.") from err
            if index in resolved:
                raise ValueError(f"`classes` lists class {index} twice ({resolved[index]!r} and "
                                 f"{value!r}); list each class once.")
            resolved[index] = value
        if not resolved:
            raise ValueError("`classes` is empty: list the classes to explain (indices or "
                             "names), or leave `classes` out to explain every class in `labels`.")
        return list(resolved)

    def _check_outputs(self, n_outputs: int, wanted: np.ndarray) -> None:
        """The class names and the classes to explain must be outputs of the model."""
        names = self.class_names
        if isinstance(names, dict):
            past = sorted(int(key) for key in names if int(key) >= n_outputs)
            if past:
                raise ValueError(f"`class_names` names class {past[0]}, but the model has "
                                 f"{n_outputs} outputs (classes 0 to {n_outputs - 1}): its keys "
                                 f"must be output indices.")
        else:
            check_class_names(names, n_outputs)
        if wanted.size and int(wanted.max()) >= n_outputs:
            raise ValueError(f"`labels` holds class {int(wanted.max())}, but the model has "
                             f"{n_outputs} outputs (classes 0 to {n_outputs - 1}).")

    def report(self, out_dir: str | os.PathLike, *, title: str = "conceptkit report",
               **kwargs: Any) -> Path:
        """Write every class's report and an index page; return the index path.

        ``kwargs`` are those of :meth:`ClassConcepts.report <conceptkit.ClassConcepts.report>`
        for every class: ``n_images``, ``n_exemplars``, ``labels``, ``notes``,
        ``extra_metrics``, ``trust=True`` (each class's own ``trust()``) and the drawing options
        (``dpi``, ``embedding``, ...). The index page shows each class's notes (their count,
        linked to the class page, and the notes folded).
        """
        from ..report import index_entry, write_index
        from ..report._outputs import owned_folder

        if not self.classes_:
            raise ValueError("ConceptManager.report: no class has been explained yet; call "
                             "`fit(images, labels)` first.")
        if "index_link" in kwargs:
            raise TypeError("ConceptManager.report sets `index_link` itself (each class page "
                            "links back to the index); leave it out.")
        trust = kwargs.get("trust", False)
        if trust is not True and trust is not False and trust is not None:
            raise TypeError(f"`trust` of ConceptManager.report must be True or False (True adds "
                            f"each class's own trust()); got {describe(trust)}.")
        out_dir = Path(out_dir)
        entries, notes = [], []
        with owned_folder(out_dir, "class index"):  # one run's index and class folders, no earlier run's
            for cc in self.classes_.values():
                report, page = cc._write_report(out_dir, index_link="../index.html", **kwargs)
                entries.append(index_entry(report, page, out_dir))
                notes.append(report.notes)
            return write_index(entries, out_dir, title=title, notes=notes)


def _check_explainer_options(options: dict[str, Any]) -> None:
    """Refuse a keyword that neither the manager nor :class:`ConceptExplainer` takes, naming
    those they take (rather than Python's message about ``ConceptExplainer.__init__``)."""
    import inspect

    from .._validation import did_you_mean

    params = inspect.signature(ConceptExplainer.__init__).parameters
    taken = [name for name, p in params.items() if name not in ("self", "model", "layer")
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        hint = did_you_mean(unknown, [*taken, "min_images"])
        raise TypeError(f"ConceptManager got unknown argument(s) {unknown}{hint}; it takes "
                        f"model, layer, class_names, min_images and the ConceptExplainer "
                        f"options {', '.join(n for n in taken if n != 'class_names')}.")


def _names_by_index(class_names: Any) -> list[str]:
    """The manager's ``class_names`` as the explainer takes them: a list by output index (a
    dict's gaps named ``"class <i>"``, as the manager names a class it has no name for)."""
    if not isinstance(class_names, dict):
        return class_names  # the explainer checks the list
    for key, name in class_names.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise TypeError(f"`class_names` keys must be class indices >= 0; got {key!r}.")
        if not isinstance(name, str):
            raise TypeError(f"`class_names` values must be str; got {describe(name)} for class "
                            f"{key}.")
    size = max((int(key) + 1 for key in class_names), default=0)
    return [str(class_names.get(i, f"class {i}")) for i in range(size)]


def _cover(explainer: ConceptExplainer, class_id: int, n_outputs: int | None = None) -> None:
    """Name classes up to ``class_id`` in the explainer's list of names — every output of the
    model when their number is known — so that a class the manager's dict of names does not
    reach is fitted (``"class <i>"``), not refused as out of range, and the list names every
    output, as the explainer requires."""
    names = explainer.class_names
    last = class_id if n_outputs is None else n_outputs - 1  # (classes past it are skipped)
    if names is not None and last >= len(names):
        explainer.class_names = [*names, *(f"class {i}" for i in range(len(names), last + 1))]


def _n_outputs(explainer: ConceptExplainer, images: torch.Tensor) -> int | None:
    """The model's number of outputs, from its first image (None when its output is not a
    logits tensor ``(N, n_classes)``: the explainer then says what it is)."""
    try:
        with explainer.model_at_layer.whole_model() as forward:
            out = forward(images[:1])
    except Exception:  # noqa: BLE001 - the explainer's fit runs it again and says what is wrong
        return None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        return None
    return int(out.shape[1])
