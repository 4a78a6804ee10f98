"""The pipeline: one object that explains a class, and a manager over many classes.

``ConceptExplainer(model, layer).fit(images, class_id)`` cuts the class's images into the
method's inputs (CRAFT crops, ICE positions, ACE segments), runs ``g`` once over them,
factorizes, then scores each concept by re-running only ``h`` on reconstructed activations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._results import ClassConcepts, KnownCodes
from ._torchutils import model_device, preserved_model_state
from ._validation import check_choice, check_images, check_int, describe
from .concepts import ACE, CRAFT, ICE, ConceptBank, Factorizer, bank_from_activations
from .extraction import ActivationExtractor, TokenHead, get_layer, positions, split_model
from .importance import METHODS as IMPORTANCE_METHODS
from .importance import concept_importance

#: Discovery methods by name.
DISCOVERY_METHODS: dict[str, type] = {"craft": CRAFT, "ice": ICE, "ace": ACE}


class ConceptExplainer:
    """Explain one class of ``model`` with concepts found at ``layer``.

    Parameters
    ----------
    model
        A trained classifier; left exactly as found after every call.
    layer
        Dotted name of the layer to explain at (e.g. the last conv block before pooling).
    n_concepts
        Number of concepts (ACE: k-means clusters before filtering).
    method
        ``"craft"`` (crops + NMF), ``"ice"`` (every position + NMF) or ``"ace"`` (segments +
        k-means).
    importance
        ``"sobol"`` (default), ``"closed_form"``, ``"gradient_input"``,
        ``"integrated_gradients"``, ``"occlusion"`` or ``"rise"``.
    patch_size
        CRAFT crop size (default 64/224 of the image side).
    factorizer
        Replace the method's factorizer (e.g. ``SemiNMF(10)`` for signed activations).
    batch_size, device, progress
        Batching of ``g``, where to run, progress bars.
    seed
        Seeds the factorizer and the importance designs.
    preprocess
        Callable applied to image batches before the model (normalisation); images themselves
        stay in [0, 1] so that crops, segments and figures are cut from the raw pixels.
    n_designs
        Sobol designs per input (32, as CRAFT).
    importance_kwargs, method_kwargs
        Extra arguments for :func:`~conceptkit.importance.concept_importance` and the method.
    model_name
        Name shown in reports.
    """

    def __init__(self, model: nn.Module, layer: str, n_concepts: int = 10, method: str = "craft",
                 importance: str = "sobol", *, patch_size: int | None = None,
                 factorizer: Factorizer | None = None, batch_size: int = 64, device: Any = None,
                 seed: int | None = None, progress: bool = True, preprocess: Callable | None = None,
                 n_designs: int = 32, importance_kwargs: dict | None = None,
                 method_kwargs: dict | None = None, model_name: str | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module; got {describe(model)}.")
        self.model = model
        self.layer, _ = get_layer(model, layer)
        self.n_concepts = check_int(n_concepts, "n_concepts", minimum=1)
        self.method = check_choice(method, "method", DISCOVERY_METHODS)
        self.importance = check_choice(importance, "importance", IMPORTANCE_METHODS)
        self.patch_size = patch_size
        self.factorizer = factorizer
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.device = device
        self.seed = seed
        self.progress = bool(progress)
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"`preprocess` must be callable; got {describe(preprocess)}.")
        self.preprocess = preprocess
        self.n_designs = check_int(n_designs, "n_designs", minimum=1)
        self.importance_kwargs = dict(importance_kwargs or {})
        self.method_kwargs = dict(method_kwargs or {})
        self.model_name = model_name or type(model).__name__
        self._h: nn.Module | None = None
        self._token_layout: str | None = None  # set when the layer outputs transformer tokens

    # ------------------------------------------------------------------ building blocks
    @property
    def h(self) -> nn.Module:
        """The part of the model after ``layer`` (activations → logits)."""
        if self._h is None:
            _, self._h = split_model(self.model, self.layer)
        return self._h

    @property
    def maps_head(self) -> nn.Module:
        """``h`` taking feature maps: for transformer layers a :class:`TokenHead` that puts each
        input's CLS/register tokens (its ``context``) back in front of the patch tokens."""
        return TokenHead(self.h, self._token_layout) if self._token_layout else self.h

    def activations(self, images: torch.Tensor, with_context: bool = False) -> Any:
        """Feature maps ``(N, C, h, w)`` of ``images`` at the layer (one pass of ``g``).

        Transformer tokens come back as maps of the patch tokens; with ``with_context=True`` the
        dropped CLS/register tokens ``(N, P, C)`` (or None) are returned too.
        """
        extractor = ActivationExtractor(self.model, self.layer, batch_size=self.batch_size,
                                        device=self.device, progress=self.progress,
                                        preprocess=self.preprocess)
        maps = extractor(images)
        if extractor.prefix_ is not None:
            self._token_layout = extractor.token_layout_
        return (maps, extractor.prefix_) if with_context else maps

    def _discovery(self) -> Any:
        cls = DISCOVERY_METHODS[self.method]
        kwargs = dict(factorizer=self.factorizer, batch_size=self.batch_size, device=self.device,
                      progress=self.progress, seed=self.seed, preprocess=self.preprocess)
        if self.method == "craft":
            kwargs["patch_size"] = self.patch_size
        kwargs.update(self.method_kwargs)
        return cls(self.n_concepts, **kwargs)

    def discover(self, images: torch.Tensor, activations: torch.Tensor | None = None) -> ConceptBank:
        """Concept discovery only: a :class:`ConceptBank` of ``images``.

        For ICE, ``activations`` (the images' feature maps) are reused instead of running ``g``.
        """
        method = self._discovery()
        if self.method == "ice":
            maps = self.activations(images) if activations is None else activations
            rows = positions(maps, image_size=tuple(images.shape[-2:]))
            return bank_from_activations(method._factorizer(), rows.rows, rows.provenance,
                                         layer=self.layer, method="ice", params=method._params())
        return method.fit(self.model, self.layer, images)

    # ------------------------------------------------------------------ the whole class
    def fit(self, images: torch.Tensor, class_id: int, class_name: str | None = None,
            image_ids: Any = None) -> ClassConcepts:
        """Explain class ``class_id`` from its images ``(N, 3, H, W)`` (values in [0, 1]).

        Returns
        -------
        ClassConcepts
            Concepts, importances with confidence intervals, and what the report needs.
        """
        images = check_images(images, "images")
        if images.shape[0] < 2:
            raise ValueError(f"`images` has {images.shape[0]} image; a class explanation needs at "
                             f"least 2 images (CRAFT advises hundreds).")
        class_id = check_int(class_id, "class_id", minimum=0)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        self.h  # noqa: B018 - split now: fails early, before any heavy work, on an invalid cut
        timings["split"] = time.perf_counter() - start

        start = time.perf_counter()
        acts, context = self.activations(images, with_context=True)
        timings["activations"] = time.perf_counter() - start
        if acts.ndim not in (2, 4):
            raise ValueError(f"`layer` {self.layer!r} gives activations of shape "
                             f"{tuple(acts.shape)}; conceptkit needs (N, C, h, w) or (N, C).")

        start = time.perf_counter()
        bank = self.discover(images, acts)
        timings["discovery"] = time.perf_counter() - start

        start = time.perf_counter()
        # The class activations are encoded once; importance, metrics, maps, report and save
        # reuse these codes (KnownCodes) instead of re-running the factorizer's solver.
        codes = torch.as_tensor(bank.encode(acts))
        importance = concept_importance(self.maps_head, acts, KnownCodes(bank, acts, codes),
                                        class_id, method=self.importance, n_designs=self.n_designs,
                                        seed=self.seed, device=self.device, progress=self.progress,
                                        context=context, **self._importance_options())
        timings["importance"] = time.perf_counter() - start
        params = {"n_concepts": self.n_concepts, "method": self.method,
                  "importance": self.importance, "patch_size": bank.params.get("patch_size"),
                  "batch_size": self.batch_size, "seed": self.seed, "n_designs": self.n_designs,
                  "n_images": int(images.shape[0])}
        ids = np.arange(images.shape[0]) if image_ids is None else np.asarray(image_ids)
        result = ClassConcepts(class_id=class_id, class_name=class_name or f"class {class_id}",
                               bank=bank, importance=importance, images=images.detach().cpu(),
                               activations=acts, model_name=self.model_name, layer=self.layer,
                               method=self.method, params=params, timings=timings, image_ids=ids,
                               explainer=self, context=context)
        result.__dict__["_codes_cache"] = (bank, acts, codes)
        return result

    def _importance_options(self) -> dict[str, Any]:
        return dict(self.importance_kwargs)


def predict_labels(model: nn.Module, images: torch.Tensor, batch_size: int = 64,
                   preprocess: Callable | None = None, progress: bool = True) -> np.ndarray:
    """The model's predicted class for every image (argmax of the output)."""
    device = model_device(model)
    out = []
    with preserved_model_state(model), torch.no_grad():
        for start in tqdm(range(0, images.shape[0], batch_size), disable=not progress,
                          desc="predictions", leave=False):
            batch = images[start:start + batch_size].to(device)
            if preprocess is not None:
                batch = preprocess(batch)
            logits = model(batch)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            out.append(logits.argmax(1).cpu())
    return torch.cat(out).numpy()


class ConceptManager:
    """One :class:`ConceptExplainer` per class.

    ``fit(images, labels)`` groups the images by label — or, when ``labels`` is None, by the
    model's own prediction (as xplique's CraftManager) — and explains every class.
    """

    def __init__(self, model: nn.Module, layer: str, *, class_names: dict[int, str] | list[str] | None = None,
                 min_images: int = 2, **explainer_kwargs: Any):
        self.explainer = ConceptExplainer(model, layer, **explainer_kwargs)
        self.class_names = class_names
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
        images = check_images(images, "images")
        ex = self.explainer
        if labels is None:
            labels = predict_labels(ex.model, images, ex.batch_size, ex.preprocess, ex.progress)
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f"
                                               and not np.array_equal(labels, np.round(labels))):
            raise TypeError(f"`labels` must hold integer class indices; got {describe(labels)}.")
        labels = labels.astype(np.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"`labels` must have one entry per image ({images.shape[0]}); got "
                             f"shape {labels.shape}.")
        self.labels_ = labels
        wanted = np.unique(labels) if classes is None else np.asarray(list(classes), dtype=np.int64)
        for class_id in tqdm(wanted, disable=not ex.progress, desc="classes"):
            rows = np.flatnonzero(labels == class_id)
            if rows.size < self.min_images:
                continue
            self.classes_[int(class_id)] = ex.fit(images[rows], int(class_id), self._name(int(class_id)),
                                                  image_ids=rows)
        if not self.classes_:
            raise ValueError(f"no class has at least `min_images`={self.min_images} images.")
        return self.classes_

    def report(self, out_dir: str | os.PathLike, **kwargs: Any) -> Path:
        """Write every class's report and an index page; return the index path."""
        from .report import write_index

        out_dir = Path(out_dir)
        entries = [write_class_report(cc, out_dir, return_entry=True, index_link="../index.html",
                                      **kwargs)
                   for cc in self.classes_.values()]
        return write_index(entries, out_dir)


# ---------------------------------------------------------------------------------------------
# Metrics and report assembly (the report renders what it is handed; this computes it)
# ---------------------------------------------------------------------------------------------

def compute_metrics(cc: ClassConcepts, *, stability: bool = False, seed: int | None = 0) -> dict[str, dict]:
    """Extraction metrics of the bank and importance metrics of the importances."""
    from .concepts import metrics as cm
    from .importance.metrics import CDeletion, CInsertion, CMuFidelity

    bank = cc.bank
    out: dict[str, dict] = {"extraction": {}, "importance": {}}
    if bank.activations is not None:
        acts = bank.activations.numpy()
        recon = np.asarray(bank.decode(bank.codes.numpy()))
        codes = bank.codes.numpy()
        out["extraction"]["relative_l2"] = _metric(cm.relative_l2(acts, recon), False)
        out["extraction"]["sparsity_l0"] = _metric(cm.sparsity_l0(codes), False)
        out["extraction"]["hoyer"] = _metric(cm.hoyer(codes), True)
        out["extraction"]["frechet_distance"] = _metric(cm.frechet_distance(acts, recon), False)
        if stability:
            out["extraction"]["stability"] = _metric(
                cm.stability(bank.factorizer, acts, seed=seed), True)
    h = cc.explainer.maps_head if cc.explainer is not None else None
    if h is not None and cc.activations is not None:
        per_input = cc.importance.per_input
        known = cc._bank_with_codes()  # one encoding of the class activations for all metrics
        for metric in (CDeletion(), CInsertion(), CMuFidelity(seed=seed)):
            result = metric.evaluate(h, cc.activations, known, cc.class_id, per_input,
                                     context=cc.context)
            out["importance"][metric.name] = _metric(result.score, metric.higher_is_better)
    return out


def _metric(value: Any, higher_is_better: bool) -> dict[str, Any]:
    value = float(getattr(value, "value", value))
    return {"value": value if np.isfinite(value) else None, "higher_is_better": bool(higher_is_better)}


def write_class_report(cc: ClassConcepts, out_dir: str | os.PathLike, *, n_images: int = 6,
                       n_exemplars: int = 10, labels: dict[int, str] | None = None,
                       notes: list[str] | None = None, extra_metrics: dict | None = None,
                       return_entry: bool = False, index_link: str | None = None) -> Any:
    """Assemble the :class:`~conceptkit.report.ClassReport` of ``cc`` and write it."""
    from .report import ClassReport, ConceptSummary, index_entry
    from .report import write_class_report as render

    order = cc.ranking
    k = cc.n_concepts
    labels = labels or {}
    ci_low = cc.ci_low if cc.ci_low is not None else np.full(k, np.nan)
    ci_high = cc.ci_high if cc.ci_high is not None else np.full(k, np.nan)
    concepts = []
    for c in order:
        ex, ids = cc.top_examples(int(c), n_exemplars, size=min(64, _side(cc)))
        concepts.append(ConceptSummary(index=int(c), label=labels.get(int(c), f"concept {int(c)}"),
                                       importance=float(cc.importances[c]), ci_low=float(ci_low[c]),
                                       ci_high=float(ci_high[c]), exemplars=ex.numpy(),
                                       exemplar_sources=[int(i) for i in ids], extra={}))
    if cc.images is not None:
        shown = cc.images[:n_images]
        maps = cc._shown_maps(n_images)
    else:
        shown = cc.saved_images[:n_images]
        maps = cc.saved_maps[:n_images].float()
    try:
        metrics = cc.metrics()
    except ValueError:
        metrics = {}
    if extra_metrics:
        metrics = {**metrics, **extra_metrics}
    report = ClassReport(
        class_id=int(cc.class_id), class_name=cc.class_name, method=cc.method,
        importance_method=cc.importance.method, layer=cc.layer, model_name=cc.model_name,
        concepts=concepts, images=shown.numpy(),
        image_ids=[int(i) for i in (cc.image_ids[:n_images] if cc.image_ids is not None
                                    else range(shown.shape[0]))],
        maps=maps[:, order].numpy(), per_image_importance=cc.importance.per_input[:, order],
        codes=cc.bank.codes.numpy()[:, order], metrics=metrics, notes=list(notes or []),
        timings=dict(cc.timings))
    page = render(report, out_dir, index_link=index_link)
    return index_entry(report, page, out_dir) if return_entry else page


def _side(cc: ClassConcepts) -> int:
    if cc.images is not None:
        return int(cc.images.shape[-1])
    return int(cc.bank.provenance.source_size[1])
