"""The concept atlas: ONE concept dictionary for every class of a model.

Per-class explanations cannot say which concepts classes share (concept 3 of one class and
concept 5 of another are unrelated vectors). The atlas learns one dictionary over the activations
of all classes (Fel et al., NeurIPS 2023, "holistic" CRAFT), scores every concept for every class
with the per-class importance methods on the shared codes, and answers whole-model questions:
which concepts two classes share, why the model confuses two classes, which images of the whole
dataset carry a concept. The activations come from images in memory or from an on-disk
:class:`~conceptkit.extraction.ActivationStore` (``"maps"`` layout) streamed chunk by chunk; with
:mod:`torch.distributed` initialised, the dictionary of a store is fitted across the ranks.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._deprecation import renamed_arguments
from .._torchutils import check_not_inference_mode
from .._validation import check_choice, check_float, check_int, describe, resolve_seed
from ..concepts import Factorizer
from ..importance import ConceptImportance, concept_importance
from ..importance._concept import (
    DEFAULT_DESIGNS,
    check_importance_kwargs,
    sobol_designs,
    student_interval,
)
from ..maps import concept_scales
from ..maps._maps import _keep_dominant
from ._atlas_data import (
    ATLAS_IMPORTANCES,
    ATLAS_METHODS,
    AtlasData,
    class_labels,
    from_images,
    from_store,
    head_logits,
)
from ._atlas_results import (
    AtlasImportance,
    ConceptSearch,
    ConfusionExplanation,
    margin_contributions,
)
from ._pixel import PIXEL_METHODS, check_pixel_options, check_quantiles, pixel_ablation
from ._result import KnownCodes

#: The atlas's pixel-ablation region: each concept's top decile over the whole dataset, one size
#: (measured in BENCHMARKS.md, "Concept atlas"); the per-class explainer averages four sizes
#: (``_pixel.REGION_QUANTILES``). ``importance_kwargs={"quantile": ...}`` sets either.
ATLAS_QUANTILE = 0.9
#: The atlas paints the map's regions alone, as measured in "Concept atlas"; the per-class
#: explainer grows them to the superpixels they mostly cover on convolutional feature maps
#: (``_pixel.default_segments``).
#: ``importance_kwargs={"n_segments": ...}`` sets either.
ATLAS_N_SEGMENTS = None
#: The ``importance_kwargs`` the atlas's pixel ablation takes.
ATLAS_PIXEL_OPTIONS = ("quantile", "confidence", "score", "n_segments")
#: Pixel-ablation settings the atlas's importance records in its ``params`` (and its file).
PIXEL_SETTINGS = ("quantile", "thresholds", "fill", "score", "n_segments")



class ConceptAtlas:
    """One concept dictionary for all classes of ``model`` at ``layer``.

    Parameters
    ----------
    model : nn.Module
        The classifier; left as found after every call.
    layer : str, optional
        Dotted name of the layer to explain at; optional with a bundle
        (:func:`conceptkit.models.load`) that knows a default layer, as for
        :class:`~conceptkit.ConceptExplainer`.
    n_concepts : int
        Size of the shared dictionary.
    method : {"ice", "craft"}
        ``"ice"`` (default) fits the dictionary on every spatial position of every image's
        feature map (ICE); ``"craft"`` on the pooled activations of random crops of every image
        (CRAFT). Both encode whole feature maps for importance, maps and search. ICE is the
        default because it is what the atlas was measured with on the ground-truth worlds
        (BENCHMARKS.md, "Concept atlas") and what the per-class explainer and ``conceptkit
        atlas`` use.
    factorizer : Factorizer or None
        The dictionary learner (default: the method's NMF, or on transformer tokens the
        sparse autoencoder of :func:`~conceptkit.pipeline.token_factorizer`, as in
        :class:`ConceptExplainer`; for a store ``NMF(solver="torch_hals")``, fitted by
        :func:`~conceptkit.concepts.fit_distributed`).
    importance : str
        Per-class importance method: ``"auto"`` (default), ``"pixel_ablation"`` or one of
        :data:`conceptkit.importance.METHODS`. ``"auto"`` is ``"pixel_ablation"`` when the atlas is
        fitted on images (each concept's region, the top decile of its map over the whole
        dataset, painted out of the class's images, the whole model re-run: the class-probability
        drop; the per-class explainer's default method, which averages four region sizes where
        the atlas paints one and does not grow it to superpixels, as measured in "Concept
        atlas"; ``importance_kwargs={"quantile": ..., "n_segments": ...}`` sets them) and
        ``"sobol"`` when it is fitted on an activation store, which holds no pixels. Why: on the four shipped ground-truth worlds the classes for which a concept is
        important under pixel ablation are the classes whose model relies on its part far more often
        than under Sobol (``BENCHMARKS.md``, "Concept atlas"). ``importance.method`` says which ran.
    seed : int or None
        Seeds the factorizer, the crops and the importance designs. ``None``: each fit draws
        one seed from fresh entropy for all of them and records it (``fitted_settings_["seed"]``
        and ``importance.params["seed"]``, and a saved atlas's settings); passing it back
        repeats the fit.
    class_names : list or dict or None
        Names of the classes for reports.
    max_inputs_per_class : int or None
        At most this many images of each class go into its importance (spread evenly over the
        class); None uses all.
    batch_size, device, progress, preprocess, patch_size, n_designs, importance_kwargs,
    method_kwargs, model_name
        As for :class:`~conceptkit.ConceptExplainer`.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, n_concepts: int = 20,
                 method: str = "ice",
                 *, factorizer: Factorizer | None = None, importance: str = "auto",
                 seed: int | None = None, class_names: Any = None,
                 max_inputs_per_class: int | None = 512, batch_size: int = 64, device: Any = None,
                 progress: bool = True, preprocess: Any = None, patch_size: int | None = None,
                 n_designs: int | None = None, importance_kwargs: dict | None = None,
                 method_kwargs: dict | None = None, model_name: str | None = None) -> None:
        from ._explainer import ConceptExplainer, options_dict

        self.method = check_choice(method, "method", ATLAS_METHODS)
        self.importance_method = check_choice(importance, "importance", ATLAS_IMPORTANCES)
        if factorizer is not None and not isinstance(factorizer, Factorizer):
            raise TypeError(f"`factorizer` must be a conceptkit Factorizer (NMF, SemiNMF, TopKSAE, "
                            f"...); got {describe(factorizer)}.")
        self.explainer = ConceptExplainer(
            model, layer, n_concepts, method, "sobol" if importance == "auto" else importance,
            patch_size=patch_size,
            factorizer=factorizer, batch_size=batch_size, device=device, seed=seed,
            progress=progress, preprocess=preprocess, n_designs=n_designs,
            method_kwargs=method_kwargs, model_name=model_name,
            tokens="patches")  # an atlas reads a transformer layer's patch tokens
        # "auto" resolves only at fit: a given n_designs goes unused when it paints pixels
        self._designs_given = n_designs is not None
        # the atlas checks its own importance options: "auto" resolves only at fit (pixel
        # ablation on images, Sobol on a store), so the explainer's own check cannot apply
        self.explainer.importance_kwargs = options_dict(importance_kwargs, "importance_kwargs")
        if self.importance_method in PIXEL_METHODS:  # the atlas's own options, checked now
            check_pixel_options(self.explainer.importance_kwargs, ATLAS_PIXEL_OPTIONS,
                                self.importance_method)
        elif self.importance_method != "auto":
            check_importance_kwargs(self.importance_method, self.explainer.importance_kwargs)
        self.class_names = class_names
        self.max_inputs_per_class = (None if max_inputs_per_class is None else
                                     check_int(max_inputs_per_class, "max_inputs_per_class",
                                               minimum=2))
        self.data_: AtlasData | None = None
        self.importance_: AtlasImportance | None = None

    def __repr__(self) -> str:
        ex = self.explainer
        where = f"{ex.model_name} at {ex.layer!r}" if ex is not None else \
            f"{self.layer!r}, loaded without its model"
        if self.data_ is None:
            importance = getattr(self, "importance_method", None)
            return (f"ConceptAtlas({where}, n_concepts={self.n_concepts}, "
                    f"method={self.method!r}, importance={importance!r}; not fitted)")
        data = self.data_
        source = " (from an activation store)" if data.store is not None else ""
        importance = None if self.importance_ is None else self.importance_.method
        return (f"ConceptAtlas({where}, n_concepts={self.n_concepts}, method={self.method!r}, "
                f"importance={importance!r}; fitted on {len(data.labels)} images of "
                f"{len(data.classes)} classes{source})")

    # ------------------------------------------------------------------ fitting
    @property
    def model(self) -> nn.Module | None:
        return None if self.explainer is None else self.explainer.model

    @property
    def layer(self) -> str:
        return self._saved_layer if self.explainer is None else self.explainer.layer

    def _require_model(self, what: str) -> Any:
        if self.explainer is None:
            raise RuntimeError(f"`{what}` needs the model, and this atlas was loaded without one: "
                               f"use `ConceptAtlas.load(path, model=...)` (or "
                               f"`conceptkit.load(path)` then set it by loading with a model).")
        return self.explainer

    @property
    def n_concepts(self) -> int:
        return self._data().n_concepts if self.data_ is not None else self.explainer.n_concepts

    def fit(self, data: Any, labels: Any = None, *, store_options: dict | None = None) -> ConceptAtlas:
        """Learn the shared dictionary and every class's concept importances; returns ``self``.

        Parameters
        ----------
        data : tensor (N, 3, H, W), Dataset, ActivationStore or store path
            Images in [0, 1] (a Dataset yields ``(image, label, ...)`` or has ``images`` and
            ``labels`` tensors, such as :class:`~conceptkit.datasets.ConceptDataset`), or a
            ``"maps"`` activation store of those images.
        labels : array of int (N,) or None
            Class of each image; None takes the dataset's labels, the store's
            ``meta["labels"]``, or else the model's predictions.
        store_options : dict or None
            Keyword arguments for :func:`~conceptkit.concepts.fit_distributed` (``max_iter``,
            ``tol``, ``batch_rows``, ``init_rows``) when ``data`` is a store.
        """
        from ..extraction import ActivationStore

        check_not_inference_mode("ConceptAtlas.fit")
        ex = self.explainer
        if ex is None:
            raise RuntimeError("This atlas was loaded without its model: pass the model to "
                               "`ConceptAtlas.load(path, model=...)` to fit it again.")
        store = isinstance(data, (str, os.PathLike, ActivationStore))
        if store:
            if self.importance_method in PIXEL_METHODS:
                raise ValueError(f"importance={self.importance_method!r} paints concepts out of "
                                 f"images, and an activation store holds none; fit on the images "
                                 f"or choose importance='auto' (Sobol on a store) or 'sobol'.")
            if self.method != "ice":
                raise ValueError(f"method={self.method!r} cuts crops or segments out of images, "
                                 f"and an activation store holds feature maps only: fit on the "
                                 f"images, or use method='ice' (it factorizes the maps).")
        elif store_options is not None:
            raise ValueError("`store_options` set how a store is streamed; `data` is images. "
                             "Leave `store_options` out.")
        # a refit that fails leaves the atlas as it was, not half replaced
        from ._atlas_io import fitted_identity, fitted_settings

        before = (self.data_, self.importance_, getattr(self, "concept_names_", None),
                  getattr(self, "fitted_settings_", None), getattr(self, "fitted_with_", None))
        # one seed for the dictionary, the crops and every class's importance: the given one,
        # or one drawn now for seed=None, which the fit records (its settings, the
        # importance's params), so that passing it back repeats the fit
        given_seed = ex.seed
        ex.seed = resolve_seed(ex.seed)
        try:
            self.data_ = (from_store(ex, data, labels, store_options or {}) if store
                          else from_images(ex, data, labels))
            self.importance_ = self._importance()
            self.concept_names_ = None  # names of the last dictionary do not fit this one
            # what a saved file records, so that a load with the model computes as this fit
            self.fitted_settings_ = fitted_settings(self)
            self.fitted_with_ = fitted_identity(ex, self.data_.store)
        except BaseException:
            (self.data_, self.importance_, self.concept_names_, self.fitted_settings_,
             self.fitted_with_) = before
            raise
        finally:
            ex.seed = given_seed  # seed=None draws afresh at the next fit
        return self

    def _data(self) -> AtlasData:
        if self.data_ is None:
            raise RuntimeError("This ConceptAtlas is not fitted yet: call `fit(images, labels)` "
                               "(or `fit(store)`) first.")
        return self.data_

    def _resolved_importance(self) -> str:
        if self.importance_method != "auto":
            return self.importance_method
        return "pixel_ablation" if self._data().images is not None else "sobol"

    def _region_quantile(self) -> Any:
        """Pixel ablation's region quantile(s): the user's, else :data:`ATLAS_QUANTILE`."""
        return self.explainer.importance_kwargs.get("quantile", ATLAS_QUANTILE)

    def _region_kind(self) -> str:
        """The maps whose regions pixel ablation paints: ``"dominant"`` at a layer that gives
        transformer tokens when the fitted codes are dense (more than half of them positive,
        as SemiNMF's are), else ``"coefficient"``.

        Why (issue 13; BENCHMARKS.md, "Concept atlas"): a region is each concept's top decile
        over the whole dataset, so in the images of a class that lacks the concept it falls
        wherever the concept's code is highest. SemiNMF codes of tokens are dense (every concept
        positive at every token), so there it fell on the parts that other concepts explain,
        and concepts became important to classes that never show them; keeping each position
        for its strongest concept (:func:`conceptkit.maps.dominant_maps`) brought the parts of
        the shapes ViT whose concept is important to exactly the classes that rely on them from
        0/6, 1/6, 1/6 to 4/6, 5/6, 5/6 (seeds 0-2; context ViT 0/3 to 1/3, 1/3, 0/3). The
        default factorizer of tokens (:func:`~conceptkit.pipeline.token_factorizer`) gives
        sparse codes, and with it the codes' own regions do best: 4/6, 6/6, 4/6 and 2/3, 1/3,
        3/3 (dominant regions 3/6, 6/6, 3/6 and 2/3, 1/3, 2/3). On the CNN worlds, whose NMF
        codes are sparse, dominant regions were no better (shapes 5/6 against 6/6, textures 3/4
        against 3/4, seed 0)."""
        handle = self.explainer.model_at_layer
        if not (handle.has_run and handle.token_layout is not None):
            return "coefficient"
        bank = self._data().bank
        known = self.__dict__.get("_region_kind_of")
        if known is None or known[0] is not bank:   # once per fitted dictionary
            codes = getattr(bank, "codes", None)
            dense = codes is not None and float((torch.as_tensor(codes) > 0).float().mean()) > 0.5
            known = self.__dict__["_region_kind_of"] = (bank, "dominant" if dense else "coefficient")
        return known[1]

    def _region_maps(self, acts: Any) -> torch.Tensor:
        """The maps of :meth:`_region_kind` for ``acts``, at the images' size."""
        data = self._data()
        codes = torch.as_tensor(np.asarray(data.bank.encode(acts))).float()
        if self._region_kind() == "coefficient":
            return _upsampled(codes, data.image_size)
        scales = self.__dict__.get("_region_scales")
        if scales is None or scales[0] is not data.bank:
            scales = self.__dict__["_region_scales"] = (data.bank, concept_scales(data.bank.codes))
        return _keep_dominant(codes, data.bank, tuple(data.image_size), scales[1])

    def _map_thresholds(self, quantile: Any, batch: int = 32,
                        max_values: int = 2_000_000) -> np.ndarray:
        """Each concept's region threshold for pixel ablation: the ``quantile`` of its map values
        over the fitted images (one threshold for all classes, as Network Dissection takes a
        unit's quantile over the whole dataset), so that a class whose images do not show a
        concept gets an empty region rather than the concept's weakest top decile. Estimated on
        every 4th row and column of the maps at the images' size, over at most ``max_values``
        values per concept (evenly spaced images beyond that; deterministic)."""
        data = self._data()
        quantiles = check_quantiles(quantile)
        height, width = data.image_size
        per_image = -(-height // 4) * -(-width // 4)
        n = len(data.labels)
        ids = np.arange(n)
        if n * per_image > max_values:
            ids = np.unique(np.linspace(0, n - 1, max(1, max_values // per_image)).astype(np.int64))
        samples = []
        for start in range(0, len(ids), batch):
            acts, _ = data.activations(ids[start:start + batch])
            maps = self._region_maps(acts)
            samples.append(maps[:, :, ::4, ::4].transpose(0, 1).reshape(maps.shape[1], -1))
        values = torch.cat(samples, dim=1).double().numpy()
        cuts = np.quantile(values, list(quantiles), axis=1)  # (len(quantiles), k)
        return cuts[0] if len(quantiles) == 1 else cuts

    def _pixel_importance(self, forward: Any, class_id: int, ids: np.ndarray, cut: np.ndarray,
                          chunk: int = 32) -> ConceptImportance:
        """Pixel ablation of one class's images, in chunks of images so that the maps at the
        images' size never all sit in memory; the interval is over all the class's images."""
        ex, data = self.explainer, self._data()
        kwargs = {"n_segments": ATLAS_N_SEGMENTS, **ex.importance_kwargs,
                  "quantile": self._region_quantile()}
        confidence = kwargs.pop("confidence", 0.95)
        parts, info, empty = [], {}, None
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            acts, _ = data.activations(part)
            maps = self._region_maps(acts)
            result = pixel_ablation(forward, data.images[torch.as_tensor(part)], maps,
                                    int(class_id), batch_size=ex.batch_size, progress=False,
                                    thresholds=cut, confidence=None, **kwargs)
            parts.append(result.per_input)
            info = result.params
            # a concept has no region in the class when it has none in any chunk
            chunk_empty = set(result.params["no_region"])
            empty = chunk_empty if empty is None else empty & chunk_empty
        per_input = np.concatenate(parts)
        low, high = student_interval(per_input, confidence)
        params = {**info, "no_region": sorted(empty or ()),
                  "n_inputs": int(per_input.shape[0]), "confidence": confidence,
                  "maps": self._region_kind(), "regions": "quantile over the fitted images"}
        return ConceptImportance(per_input=per_input, importances=per_input.mean(axis=0),
                                 ci_low=low, ci_high=high, method="pixel_ablation",
                                 class_id=int(class_id), params=params)

    def _importance(self) -> AtlasImportance:
        ex, data = self.explainer, self._data()
        method = self._resolved_importance()
        rows, lows, highs, classes, no_region, settings = [], [], [], [], [], {}
        pixels = (ex.model_at_layer.whole_model() if method in PIXEL_METHODS
                  else contextlib.nullcontext())
        if method in PIXEL_METHODS:
            check_pixel_options(ex.importance_kwargs, ATLAS_PIXEL_OPTIONS, method)
            if getattr(self, "_designs_given", False):
                warnings.warn("`n_designs` went unused: importance='auto' paints concepts out "
                              "of the images (pixel ablation), which draws no Sobol design; it "
                              "counts only on a store, or with importance='sobol'.",
                              UserWarning, stacklevel=3)
        cut = self._map_thresholds(self._region_quantile()) \
            if method in PIXEL_METHODS else None
        with pixels as forward:
            for class_id in tqdm(data.classes, desc="importance per class",
                                 disable=not ex.progress):
                ids = _spread(np.flatnonzero(data.labels == class_id), self.max_inputs_per_class)
                if method in PIXEL_METHODS:
                    result = self._pixel_importance(forward, int(class_id), ids, cut)
                    # the rule that painted the regions, the same for every class: recorded
                    # so that a saved atlas says which one ran
                    settings = {key: result.params[key] for key in PIXEL_SETTINGS
                                if key in result.params}
                else:
                    acts, context = data.activations(ids)
                    codes = data.bank.encode(acts)
                    result = concept_importance(ex.maps_head, acts,
                                                KnownCodes(data.bank, acts, codes), int(class_id),
                                                method=method,
                                                **sobol_designs(method, ex.n_designs or DEFAULT_DESIGNS),
                                                seed=ex.seed, device=ex.device, progress=False,
                                                context=context, **ex.importance_kwargs)
                rows.append(result.importances)
                no_region.append(list(result.params.get("no_region", [])))
                lows.append(result.ci_low if result.ci_low is not None
                            else result.importances * np.nan)
                highs.append(result.ci_high if result.ci_high is not None
                             else result.importances * np.nan)
                classes.append(int(class_id))
        return AtlasImportance(values=np.asarray(rows, dtype=np.float64),
                               ci_low=np.asarray(lows, dtype=np.float64),
                               ci_high=np.asarray(highs, dtype=np.float64), classes=classes,
                               class_names=[self.class_name(c) for c in classes],
                               method=method,
                               params={"n_designs": ex.n_designs if method == "sobol" else None, "seed": ex.seed,
                                       "max_inputs_per_class": self.max_inputs_per_class,
                                       "requested": self.importance_method,
                                       **({**settings, "maps": self._region_kind(),
                                           # per class (rows): concepts with no region in any
                                           # of its images, whose 0 means "not in this class"
                                           "no_region": no_region}
                                          if method in PIXEL_METHODS else {})})

    # ------------------------------------------------------------------ questions
    @property
    def importance(self) -> AtlasImportance:
        """Classes × concepts importance with confidence intervals (:class:`AtlasImportance`)."""
        if self.importance_ is None:
            self._data()
        return self.importance_

    def class_name(self, class_id: int) -> str:
        names = self.class_names
        if isinstance(names, dict):
            return str(names.get(int(class_id), f"class {class_id}"))
        if names is not None and 0 <= int(class_id) < len(names):
            return str(names[int(class_id)])
        return f"class {class_id}"

    def shared_concepts(self, a: int, b: int, relative: float | None = None,
                        minimum: float | None = None) -> list[dict]:
        """Concepts important to both classes ``a`` and ``b``, most shared first.

        A concept is important to a class by :meth:`AtlasImportance.important` (by default: a
        class-probability drop of at least 0.1 under pixel ablation, else at least 0.25 times the
        class's largest importance; its interval excluding 0 in both cases; ``relative`` and
        ``minimum`` override the rule). Concepts are ranked by the smaller of their two relative
        importances.
        """
        imp = self.importance
        if relative is not None:
            relative = check_float(relative, "relative", minimum=0.0, maximum=1.0)
        if minimum is not None:
            minimum = check_float(minimum, "minimum")
        ra, rb = imp.row(a), imp.row(b)
        both = imp.important(relative, minimum)[[ra, rb]].all(axis=0)
        norm = imp.normalized()
        strength = np.minimum(norm[ra], norm[rb])
        order = [int(j) for j in np.argsort(-strength, kind="stable") if both[j]]
        return [{"concept": j, "importance_a": float(imp.values[ra, j]),
                 "importance_b": float(imp.values[rb, j]), "shared_strength": float(strength[j])}
                for j in order]

    def confusion_matrix(self) -> np.ndarray:
        """``(n_classes, n_classes)`` mean softmax probability of class ``b`` (column) on the
        images of class ``a`` (row), over the fitted classes; the diagonal is the accuracy-like
        self-probability. Soft, so near-confusions count even when no image is misclassified."""
        data = self._data()
        probs = torch.from_numpy(data.logits).double().softmax(1).numpy()
        classes = data.classes
        return np.array([[probs[data.labels == a][:, b].mean() for b in classes] for a in classes])

    @renamed_arguments(n="n_pairs")
    def most_confused_pairs(self, n_pairs: int = 5) -> list[tuple[int, int, float]]:
        """The ``n_pairs`` ordered class pairs ``(a, b)`` with the largest mean probability of
        ``b`` on images of ``a`` (see :meth:`confusion_matrix`)."""
        matrix = self.confusion_matrix()
        np.fill_diagonal(matrix, -np.inf)
        classes = self._data().classes
        n_pairs = check_int(n_pairs, "n_pairs", minimum=1)
        order = np.argsort(-matrix, axis=None, kind="stable")[:n_pairs]
        pairs = [np.unravel_index(i, matrix.shape) for i in order]
        return [(int(classes[i]), int(classes[j]), float(matrix[i, j])) for i, j in pairs
                if np.isfinite(matrix[i, j])]

    def explain_confusion(self, a: int, b: int, images: torch.Tensor | None = None, *,
                          min_images: int = 10, n_examples: int = 6,
                          relative: float | None = None,
                          minimum: float | None = None) -> ConfusionExplanation:
        """Which concepts push images of class ``a`` towards class ``b``.

        Uses ``images`` (all taken to be of class ``a``) or else the fitted images of ``a``;
        selects those whose logit of ``b`` exceeds their logit of ``a`` (or, when fewer than
        ``min_images`` do, the ``min_images`` with the largest margin ``logit_b - logit_a``,
        although the model may classify none of them as ``b``; ``n_confused`` says how many
        cross over) and measures each concept's
        contribution to that margin by removing it from the reconstruction (see
        :class:`ConfusionExplanation`). ``shared`` marks concepts important to both classes.
        """
        data, ex = self._data(), self._require_model("explain_confusion")
        imp = self.importance
        ra, rb = imp.row(a), imp.row(b)
        n_examples = check_int(n_examples, "n_examples", minimum=1)
        if a == b:
            raise ValueError(f"`a` and `b` must be two different classes; got {a} twice.")
        min_images = check_int(min_images, "min_images", minimum=1)
        if images is None:
            ids = np.flatnonzero(data.labels == a)
            margins = data.logits[ids, b] - data.logits[ids, a]
            source_images = data.images
        else:
            from .._validation import check_images

            # the channels are checked where the images reach the model's first convolution,
            # after its preprocessing (a grey model with an RGB -> grey `preprocess` takes RGB)
            source_images = check_images(images, "images")
            ids = np.arange(source_images.shape[0])
            acts_all, ctx_all = ex.activations(source_images, with_context=True)
            logits = head_logits(ex.maps_head, acts_all, ctx_all, ex.batch_size)
            margins = logits[:, b] - logits[:, a]
        confused = margins > 0
        if confused.sum() >= min_images:
            chosen = np.flatnonzero(confused)
        else:
            chosen = np.argsort(-margins, kind="stable")[:min_images]
        selected = ids[chosen]
        if images is None:
            acts, context = data.activations(selected)
        else:
            acts = acts_all[torch.as_tensor(chosen)]
            context = None if ctx_all is None else ctx_all[torch.as_tensor(chosen)]
        codes = torch.as_tensor(np.asarray(data.bank.encode(acts))).float()
        head = ex.maps_head
        recon_margin, per_image = margin_contributions(
            lambda x, ctx=None: torch.from_numpy(head_logits(head, x, ctx, x.shape[0])),
            codes, _decoder(data.bank), a, b, batch_size=max(1, ex.batch_size // 4),
            context=context)
        mean = per_image.mean(axis=0)
        low, high = student_interval(per_image, 0.95)
        important = imp.important(relative, minimum)
        shared = important[ra] & important[rb]
        examples = None
        if source_images is not None:
            examples = source_images[torch.as_tensor(selected[np.argsort(-margins[chosen],
                                                                          kind="stable")][:n_examples])]
        return ConfusionExplanation(a=int(a), b=int(b),
                                    concepts=np.argsort(-mean, kind="stable"), contributions=mean,
                                    ci_low=low, ci_high=high, per_image=per_image,
                                    image_ids=selected, margins=margins[chosen],
                                    reconstructed_margins=recon_margin,
                                    n_confused=int((margins[chosen] > 0).sum()), shared=shared,
                                    images=examples)

    @renamed_arguments(n="n_images")
    def top_images(self, concept: int, n_images: int = 20, classes: Any = None, *,
                   with_maps: bool = True) -> ConceptSearch:
        """The ``n_images`` fitted images where ``concept`` is most present (largest mean code
        over the feature map), optionally only among images of ``classes``; with the images
        (when the atlas holds them) and their concept maps upsampled to the image size."""
        data = self._data()
        concept = check_int(concept, "concept", minimum=0, maximum=data.n_concepts - 1)
        n = check_int(n_images, "n_images", minimum=1)
        pool = np.arange(len(data.labels))
        if classes is not None:
            wanted = np.asarray([check_int(c, "classes") for c in np.atleast_1d(classes)],
                                dtype=np.int64)
            pool = pool[np.isin(data.labels, wanted)]
            if pool.size == 0:
                raise ValueError(f"`classes` {wanted.tolist()} match no fitted image; fitted "
                                 f"classes: {data.classes}.")
        scores = data.scores[pool, concept]
        best = pool[np.argsort(-scores, kind="stable")[:n]]
        images = None if data.images is None else data.images[torch.as_tensor(best)]
        maps = None
        if with_maps:
            acts, _ = data.activations(best)
            maps = _upsampled(data.bank.encode(acts), data.image_size)[:, concept]
        return ConceptSearch(concept=concept, image_ids=best, scores=data.scores[best, concept],
                             labels=data.labels[best], images=images, maps=maps)

    def concept_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, k, H, W)`` of every shared concept on ``images`` (one pass of ``g``)."""
        from .._validation import check_images

        ex = self._require_model("concept_maps")
        images = check_images(images, "images")  # channels: checked after preprocessing
        acts = ex.activations(images)
        return _upsampled(self._data().bank.encode(acts), tuple(images.shape[-2:]))

    # ------------------------------------------------------------------ outputs
    def report(self, out_dir: str | os.PathLike, **kwargs: Any) -> Path:
        """Write the atlas report (index, concept pages); returns the index path."""
        from ._atlas_io import write_atlas_report

        return write_atlas_report(self, out_dir, **kwargs)

    def save(self, path: str | os.PathLike, *, n_exemplars: int = 8) -> str:
        """Save to one ``.safetensors`` file (no pickle); read back with :func:`conceptkit.load`."""
        from ._atlas_io import save_atlas

        return save_atlas(self, path, n_exemplars=n_exemplars)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None, *,
             preprocess: Any = None, batch_size: int = 64, device: Any = None,
             progress: bool = False, strict: bool = True) -> Any:
        """Read a saved atlas; with ``model`` it can also explain new images.

        A loaded atlas answers ``importance``, ``shared_concepts``, ``most_confused_pairs``,
        ``top_images(..., with_maps=False)`` and writes its report from the saved exemplars;
        ``explain_confusion`` and ``concept_maps`` need ``model`` (and the ``preprocess`` the
        atlas was fitted with; ``batch_size``, ``device`` and ``progress`` as for the
        constructor). The settings the atlas was fitted with (seed, ``max_inputs_per_class``,
        importance options, ...) are restored from the file, so a refit runs as the first fit.

        Files saved since the atlas records them hold the identity of the model and the
        preprocessing it was fitted with, compared as ``ClassConcepts.attach`` compares them: a
        preprocessing that is missing or differs raises a ``ValueError`` naming ``preprocess``
        (``strict=False`` warns instead, for an equivalent preprocessing written otherwise);
        other weights or another structure of the model warn. Older files are loaded with the
        constructor's defaults and checked for nothing (unknown is not a mismatch).
        """
        from ._atlas_io import fitted_differences, read_atlas

        if not isinstance(strict, bool):
            raise TypeError(f"`strict` must be a bool; got {describe(strict)}.")
        parts = read_atlas(path)
        k = parts["data"].n_concepts
        settings, fitted = parts["settings"], parts["fitted_with"]
        if model is not None:
            options: dict[str, Any] = {"importance": parts["importance"].method}
            if settings is not None:  # None: not known (files before them, or not JSON)
                options.update({key: value for key, value in settings.items()
                                if value is not None or key in ("seed", "max_inputs_per_class",
                                                                "patch_size", "n_designs")})
            atlas = cls(model, parts["layer"], k, parts["method"], factorizer=parts["factorizer"],
                        progress=progress, preprocess=preprocess, batch_size=batch_size,
                        device=device, **options)
            if fitted is not None:
                model_differences, difference, fix = fitted_differences(
                    fitted, atlas.explainer.model, atlas.explainer.preprocess)
                if difference is not None and strict:
                    raise ValueError(f"{difference}. {fix}")
                differences = model_differences + ([difference] if difference else [])
                if differences:
                    warnings.warn(f"ConceptAtlas.load: {'; and '.join(differences)}; concept "
                                  f"maps and confusions of new images computed now are not "
                                  f"those of the fitted model.", UserWarning, stacklevel=2)
        else:
            if preprocess is not None:
                raise ValueError("`preprocess` is the model's input normalisation, and no "
                                 "`model` was given: pass both, or leave `preprocess` out.")
            atlas = cls.__new__(cls)
            atlas.explainer = None
            atlas.method = parts["method"]
            atlas.max_inputs_per_class = None
            atlas._saved_layer = parts["layer"]
        atlas.class_names = parts["class_names"]
        atlas.data_ = parts["data"]
        atlas.importance_ = parts["importance"]
        atlas.concept_names_ = parts["concept_names"]
        atlas.saved_exemplars_ = parts["exemplars"]
        atlas.saved_confusions_ = parts["confusions"]
        # saved again as read: the file's record, not the settings of the model given now
        atlas.fitted_settings_ = settings
        atlas.fitted_with_ = fitted
        return atlas


def _spread(ids: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` of ``ids``, evenly spaced (deterministic)."""
    if limit is None or ids.size <= limit:
        return ids
    return ids[np.linspace(0, ids.size - 1, limit).round().astype(np.int64)]


def _decoder(bank: Any):
    def decode(codes: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(bank.decode(codes.numpy()))).float()
    return decode


def _upsampled(codes: Any, size: tuple[int, int] | None) -> torch.Tensor:
    from ..maps import upsample

    codes = torch.as_tensor(np.asarray(codes)).float()
    return codes if size is None else upsample(codes, tuple(size))


__all__ = ["ATLAS_METHODS", "ConceptAtlas", "class_labels"]
