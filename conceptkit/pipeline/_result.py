"""ClassConcepts: everything the explanation of one class holds (saved and loaded by
:mod:`._persist`, without pickle)."""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import io
from .._deprecation import renamed_arguments, warn_deprecated
from .._torchutils import same_state, tensor_state, values_state, weights_state
from .._validation import all_finite as _all_finite
from .._validation import check_images, check_int, describe
from ..concepts import ConceptBank
from ..concepts._methods import _ROW_NOUNS
from ..importance import ConceptImportance
from ..maps import MAP_KINDS, choose_map_kind
from ._examples import cut_examples
from ._handle import ModelAtLayer
from ._naming import concept_labels, resolve_concept, visualize
from ._notes import MetricsTable

RESULT_KIND = "ClassConcepts"
#: 2: maps stored scaled per image and concept (``maps.scale``); 1 (read too): plain float16.
RESULT_VERSION = 2
RESULT_VERSIONS_READ = (1, 2)
#: Map kinds that differentiate the layer's patch tokens or enlarge the images: an explanation
#: of CLS tokens (tokens="cls") has none of them.
PATCH_TOKEN_KINDS = ("gradient", "pixel", "scale_matched")


@dataclass
class ClassConcepts:
    """The concepts of one class, their importances and what the report needs.

    Attributes
    ----------
    class_id, class_name
        The explained class.
    bank
        The :class:`~conceptkit.concepts.ConceptBank` (components, codes, provenance, factorizer).
    importance
        The :class:`~conceptkit.importance.ConceptImportance` (per input and class level, CI).
    images
        ``(N, 3, H, W)`` the class images (kept in memory; saved as uint8 only for the
        ``n_saved_images`` shown in reports).
    activations
        ``(N, C, h, w)`` the class images' activations at the layer (not saved).
    model_name, layer, method
        Provenance of the explanation.
    params
        The explainer's settings (JSON-able).
    timings
        Seconds spent per stage.
    model_at_layer
        The model cut at the layer, with its preprocessing and batching (None after loading
        until :meth:`attach`): what maps of new images, metrics and sub-concepts run.
    names
        The :class:`~conceptkit.naming.ConceptNames` set by :meth:`name_concepts` (None: the
        concepts keep their index).
    visualizations
        ``{concept: ConceptVisualization}`` made by :meth:`visualize`.
    """

    class_id: int
    class_name: str
    bank: ConceptBank
    importance: ConceptImportance
    images: torch.Tensor | None
    activations: torch.Tensor | None
    model_name: str
    layer: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    image_ids: np.ndarray | None = None
    saved_maps: torch.Tensor | None = None
    saved_maps_kind: str = "coefficient"  # the map kind of saved_maps (files before 0.2: coefficient)
    saved_metrics: dict[str, Any] | None = None
    saved_images: torch.Tensor | None = None
    saved_exemplars: list[torch.Tensor] | None = field(default=None, repr=False)  # uint8, per concept
    saved_exemplar_ids: list[np.ndarray] | None = field(default=None, repr=False)
    model_at_layer: ModelAtLayer | None = field(default=None, repr=False)
    context: torch.Tensor | None = field(default=None, repr=False)  # ViT CLS/register tokens
    names: Any = None
    visualizations: dict[int, Any] = field(default_factory=dict, repr=False)
    # what a loaded explanation was fitted with: {"model_digest": str, "preprocess": str | None,
    # "model_structure": str (files saved since the model's structure is recorded)}
    # (a key is absent where the file did not record it: unknown); None on a fresh explanation
    fitted_with: dict[str, Any] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ the public face
    @property
    def explainer(self) -> ModelAtLayer | None:
        """Deprecated alias of :attr:`model_at_layer` (removed in 0.3)."""
        warn_deprecated("ClassConcepts.explainer", "model_at_layer (it has `model`, `h`, "
                        "`activations(images)`, `preprocess`, `batch_size`)")
        return self.model_at_layer

    @property
    def importances(self) -> np.ndarray:
        """Class-level importance of each concept ``(k,)``."""
        return self.importance.importances

    @property
    def ci_low(self) -> np.ndarray | None:
        """Lower end of the confidence interval of :attr:`importances`."""
        return self.importance.ci_low

    @property
    def ci_high(self) -> np.ndarray | None:
        """Upper end of the confidence interval of :attr:`importances`."""
        return self.importance.ci_high

    @property
    def components(self) -> torch.Tensor:
        """The concept dictionary ``(k, C)``."""
        return self.bank.components

    @property
    def n_concepts(self) -> int:
        return self.bank.n_concepts

    @property
    def ranking(self) -> np.ndarray:
        """Concepts from most to least important."""
        return self.importance.ranking

    @property
    def labels(self) -> list[str]:
        """A label per concept: its name (after :meth:`name_concepts`) or ``"concept j"``."""
        return concept_labels(self.names, self.n_concepts)

    def name_concepts(self, method: str = "dissect", *args: Any, **kwargs: Any) -> Any:
        """Name the concepts and keep the names (saved, shown in reports and figures).

        ``method``: ``"dissect"`` (probe images with part masks), ``"clip"`` (a CLIP model and a
        vocabulary) or ``"classes"`` (the classes each concept pushes through ``h``); the other
        arguments go to :func:`conceptkit.naming.name_concepts`. Returns the
        :class:`~conceptkit.naming.ConceptNames`; concepts given no name keep their index.
        """
        from ..naming import name_concepts

        self.names = name_concepts(self, method, *args, **kwargs)
        return self.names

    def visualize(self, concept: int | str, *, steps: int = 256, image_size: int | None = None,
                  seed: int = 0, progress: bool | None = None, **kwargs: Any) -> Any:
        """MACO feature visualisation of ``concept`` (an index or a name), kept for the report.

        The magnitude spectrum and colours come from the class images; ``kwargs`` go to
        :func:`conceptkit.naming.visualize_concept` (``n_crops``, ``crop_fraction``, ``noise``,
        ``lr``). Returns a :class:`~conceptkit.naming.ConceptVisualization` (image and
        transparency map).
        """
        return visualize(self, concept, steps=steps, image_size=image_size, seed=seed,
                         progress=progress, **kwargs)

    @renamed_arguments(n="n_exemplars", size="image_size")
    def top_examples(self, concept: int | str, n_exemplars: int = 10,
                     image_size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """The ``n_exemplars`` crops / segments / cells where ``concept`` (an index, or a name
        given by :meth:`name_concepts`) is most present.

        Only fitted rows where the concept is present (a code > 0) are exemplars, for a
        factorizer whose codes are non-negative (NMF, k-means, the sparse autoencoder ...); a
        signed factorizer's codes (PCA, ICA) have no "absent" value, and its exemplars are the
        rows of highest code whatever its sign. When fewer than ``n_exemplars`` rows qualify (or
        were saved with a loaded explanation), those are returned, with a warning saying how
        many and why.

        Returns
        -------
        (examples, image_ids)
            ``examples (m, 3, s, s)``, ``m <= n_exemplars``, cut from the source images through
            the bank's
            provenance (resized to ``image_size``, default the crop's own size; after
            :func:`conceptkit.load`, the size they were saved at: 64 px, or the image side
            when smaller; at most as many as were saved), and each one's
            source image id (the ``image_ids`` given to ``fit``, e.g. file names; positions by
            default).
        """
        from ..maps._maps import _image_size

        concept = resolve_concept(self, concept)
        n = check_int(n_exemplars, "n_exemplars", minimum=1)
        side = _image_size(image_size)
        if side is not None and side[0] != side[1]:
            raise ValueError(f"`image_size` of exemplars is one side (they are square); got "
                             f"{image_size!r}.")
        image_size = None if side is None else side[0]
        if self.images is None:
            if self.saved_exemplars is None:
                raise ValueError("this explanation was loaded without its images; exemplars are "
                                 "only available for the concepts saved with it.")
            stack = self.saved_exemplars[concept][:n].float() / 255.0
            if stack.shape[0] < n:
                warnings.warn(f"top_examples: {stack.shape[0]} exemplar(s) of concept {concept} "
                              f"were saved with this explanation, fewer than the {n} asked; "
                              f"returning those (attach the images to the explanation to cut "
                              f"others).", UserWarning, stacklevel=3)
            if stack.shape[0] and image_size is not None and tuple(
                    stack.shape[-2:]) != (image_size,) * 2:
                stack = _resize(stack, image_size).clamp(0, 1)
            return stack, np.asarray(self.saved_exemplar_ids[concept][:n])
        rows = self.bank.top_rows(concept, n, present_only=True)
        if len(rows) < n:
            total = len(self.bank.provenance)
            noun = _ROW_NOUNS.get(self.bank.provenance.kind, "rows")
            why = (f"concept {concept} is present (code > 0) in only {len(rows)} of the {total} "
                   f"fitted {noun}" if self.bank.nonnegative_codes and len(rows) < total
                   else f"the concepts were fitted on {total} {noun}")
            warnings.warn(f"top_examples: {why}; returning {len(rows)} exemplar(s), not the "
                          f"{n} asked.", UserWarning, stacklevel=3)
        if len(rows) == 0:  # no row to cut: an empty stack of the size one would have
            first = cut_examples(self.images, self.bank, np.zeros(1, dtype=np.int64), image_size)
            return first[:0], self._ids_of(self.bank.provenance.image_ids[rows])
        return (cut_examples(self.images, self.bank, rows, image_size),
                self._ids_of(self.bank.provenance.image_ids[rows]))

    def _ids_of(self, positions: np.ndarray) -> np.ndarray:
        """The image ids of positions in the fitted images."""
        ids = self.image_ids
        if ids is None or self.images is None or len(ids) != self.images.shape[0]:
            return positions
        return ids[positions]

    @renamed_arguments(size="image_size")
    def concept_maps(self, images: torch.Tensor | None = None, kind: str = "auto",
                     image_size: Any = None) -> torch.Tensor:
        """Concept attribution maps ``(N, k, H, W)``, at ``image_size`` (default: the images').

        With ``images=None``, the maps of the class images the explanation was fitted on (no
        new pass of ``g`` for coefficient maps). After :func:`conceptkit.load` the fitted images
        are gone: ``concept_maps()`` then returns the maps saved with the file, those of the
        first ``n_images`` images only (8 by default, see :meth:`save`; ``repr`` says how many),
        and other images need the model (:meth:`attach`, then ``concept_maps(images)``). ``kind``: ``"coefficient"`` (encode every
        position of the feature map), ``"gradient"`` (Grad-CAM of each concept coefficient),
        ``"pixel"`` (at the images' resolution: the first-order drop of each concept's code when
        a pixel is painted out, blurred; :func:`conceptkit.maps.pixel_maps`) or
        ``"provenance"`` (the fitted crops' / segments' codes painted back; fitted images only).
        ``"scale_matched"`` (CRAFT: coefficient maps of the images enlarged by image side ÷
        patch size, the scale its concepts were learned at). ``"dominant"``: coefficient maps
        that keep, at each position, only the concept strongest there relative to its 99th
        percentile over the fitted codes (:func:`conceptkit.maps.dominant_maps`; on tokens
        they rank concepts better and point worse, BENCHMARKS.md). ``"auto"`` (default) gives
        pixel maps on convolutional layers (and for ACE on any layer) and coefficient maps on
        transformer tokens or without images (chosen on the ground-truth worlds; see
        :func:`conceptkit.maps.choose_map_kind` for the numbers).
        """
        from ..maps import (
            coefficient_maps,
            dominant_maps,
            gradient_maps,
            pixel_maps,
            provenance_maps,
        )
        from ..maps._maps import _image_size

        size = _image_size(image_size)  # an int side or an (H, W) pair, checked here

        if kind not in MAP_KINDS:
            raise ValueError(f"`kind` must be one of {MAP_KINDS}; got {kind!r}.")
        if images is not None:
            channels = None if self.images is None else int(self.images.shape[1])
            images = check_images(images, "images", pixels=True, channels=channels)
        if (images is None and self.images is None and self.saved_maps is not None
                and kind in ("auto", self.saved_maps_kind)):
            saved = self.saved_maps.float()  # loaded from a file: the maps saved with it
            if size is not None and tuple(saved.shape[-2:]) != size:
                return _resize(saved, size)
            # a copy, as fresh maps are: writing into the returned maps never reaches the
            # explanation (nor the file a later save writes)
            return saved.clone() if saved.data_ptr() == self.saved_maps.data_ptr() else saved
        if kind == "auto":
            kind = self._auto_kind(images)
        if self.params.get("tokens") == "cls" and kind in PATCH_TOKEN_KINDS:
            raise ValueError(f"`kind` {kind!r} differentiates the layer's patch tokens; this "
                             f"explanation's concepts are of CLS tokens (tokens='cls', the "
                             f"default on a transformer that classifies from its CLS token), "
                             f"whose maps are of kind 'coefficient', 'dominant' or 'provenance'. "
                             f"For {kind} maps, explain with tokens='patches'.")
        if kind == "scale_matched":
            return self._scale_matched(self.images if images is None else images, size)
        if kind == "provenance":
            if images is not None:
                raise ValueError("`kind`='provenance' maps exist only for the fitted images; "
                                 "pass images=None.")
            maps = provenance_maps(self.bank, n_images=None if self.images is None else self.images.shape[0])
            return maps if size is None else _resize(maps, size)
        if images is None and self.activations is not None and kind in ("coefficient", "dominant"):
            if size is None and self.images is not None:
                size = tuple(self.images.shape[-2:])
            if kind == "dominant":
                return self._fitted_dominant_maps(size)
            return self._fitted_coefficient_maps(size)
        if images is None:
            if self.images is None:
                saved = ("" if self.saved_maps is None
                         else f" (its saved maps are of kind {self.saved_maps_kind!r})")
                raise ValueError(f"this explanation was loaded without images{saved}; pass "
                                 f"`images` for maps of kind {kind!r}.")
            if kind == "pixel":
                maps = self._fitted_pixel_maps(self.images.shape[0])
                return maps if size is None else _resize(maps, size)
            images = self.images
        handle = self._require_model()
        if kind in ("pixel", "gradient") and images is not self.images:
            # new images through the model's layer first: a size or channel count the model
            # refuses is said here, not as a convolution's error inside the map
            handle.activations(images[:1], progress=False)
        if kind == "pixel":
            return pixel_maps(handle.model, images, self.bank, preprocess=handle.preprocess,
                              image_size=size, batch_size=handle.batch_size, device=handle.device)
        if kind == "gradient":
            return gradient_maps(handle.model, images, self.bank, preprocess=handle.preprocess,
                                 image_size=size, batch_size=handle.batch_size,
                                 device=handle.device)
        acts = handle.activations(images)
        if kind == "dominant":
            return dominant_maps(acts, self.bank, size or tuple(images.shape[-2:]))
        return coefficient_maps(acts, self.bank, size or tuple(images.shape[-2:]))

    # ------------------------------------------------------------------ computed once
    def _class_codes(self) -> torch.Tensor:
        """Codes of the class activations, ``bank.encode(activations)`` ``(N, k, h, w)`` or
        ``(N, k)``, computed once and shared by importance, metrics, maps, report and save."""
        if self.activations is None:
            raise ValueError("this explanation was loaded without its activations; codes of the "
                             "class images need the model (`attach`, then `concept_maps(images)`).")
        cache = self.__dict__.get("_codes_cache")
        # Keyed by identity and in-place writes: replacing or editing `bank` or `activations`
        # recomputes the codes; and by a checksum of the activations' values, which sees the
        # edits the version counter misses (through `.numpy()` or `.data`).
        key = (self._bank_state(), tensor_state(self.activations))
        values = values_state(self.activations)
        if (cache is None or not same_state(cache[0], key)
                or (len(cache) > 2 and cache[2] != values)):
            codes = torch.as_tensor(self.bank.encode(self.activations))
            cache = (key, codes, values)
            self.__dict__["_codes_cache"] = cache
        elif len(cache) == 2:  # codes the explainer computed while fitting: of these values
            cache = (*cache, values)
            self.__dict__["_codes_cache"] = cache
        return cache[1]

    def _cache_for(self, name: str, extra: tuple = ()) -> dict:
        """The cache ``name`` of results computed from the current :meth:`_inputs_state` (and
        ``extra``, more of what they depend on); emptied when that state changes."""
        state = (self._inputs_state(), extra)
        held = self.__dict__.get(name)
        if held is None or not same_state(held[0], state):
            held = (state, {})
            self.__dict__[name] = held
        return held[1]

    def _inputs_state(self) -> tuple:
        """What metrics and trust are computed from: a cache keyed on it notices a bank,
        importance, activations or images replaced or written in place."""
        return (self._bank_state(), tensor_state(self.importance), tensor_state(self.activations),
                tensor_state(self.images))

    def _bank_state(self) -> tuple:
        """The bank's identity, the in-place writes to its dictionary, and its factorizer's
        settings and fitted state (a ``set_params`` or a refit changes the codes)."""
        from ..extraction._fingerprint import estimator_identity

        bank = self.bank
        factorizer = getattr(bank, "factorizer", None)
        return (tensor_state(bank), tensor_state(getattr(bank, "components", None)),
                tensor_state(factorizer),
                None if factorizer is None else estimator_identity(factorizer))

    def _model_state(self) -> tuple:
        handle = self.model_at_layer
        return (tensor_state(handle), None if handle is None else weights_state(handle.model))

    def _bank_with_codes(self) -> Any:
        """The bank, with the class activations' codes already known (see :class:`KnownCodes`)."""
        return KnownCodes(self.bank, self.activations, self._class_codes())

    def _fitted_coefficient_maps(self, size: Any, n_images: int | None = None) -> torch.Tensor:
        from ..maps import coefficient_maps

        if self.activations.ndim != 4:  # the maps module says what it needs
            return coefficient_maps(self.activations[:n_images], self.bank, size)
        codes = self._class_codes()[:n_images].float()
        maps = codes if size is None else _resize(codes, size)
        # Never hand out the cached codes themselves: the caller may write into the maps.
        return maps.clone() if maps.data_ptr() == codes.data_ptr() else maps

    def _fitted_dominant_maps(self, size: Any) -> torch.Tensor:
        """Dominant-concept maps of the fitted images from the codes computed once."""
        from ..maps._maps import _keep_dominant

        if self.activations.ndim != 4:  # the maps module says what it needs
            from ..maps import dominant_maps

            return dominant_maps(self.activations, self.bank, size)
        return _keep_dominant(self._class_codes().float(), self.bank,
                              None if size is None else tuple(size), None)

    def _auto_kind(self, images: torch.Tensor | None) -> str:
        handle = self.model_at_layer
        if handle is not None and not handle.has_run and images is not None:
            # A model attached to a loaded explanation has not run yet: one image tells whether
            # the layer gives transformer tokens (the choice of kind depends on it).
            handle.activations(images[:1], progress=False)
        return choose_map_kind(
            self.method, fitted=images is None and self.images is not None,
            has_images=images is not None or self.images is not None,
            tokens=handle is None or handle.token_layout is not None,
            patch_size=self.bank.params.get("patch_size"), spatial=self._spatial_layer())

    def _spatial_layer(self) -> bool:
        return self.activations is None or self.activations.ndim == 4

    def _scale_matched(self, images: torch.Tensor | None, size: Any) -> torch.Tensor:
        from ..maps import scale_matched_maps, upsample

        self._check_crops()
        if images is None:
            raise ValueError("this explanation was loaded without images; pass `images`.")
        if images is self.images:  # the fitted images: one pass of g, codes kept for reuse
            maps = upsample(self._scale_matched_codes(images.shape[0]), tuple(images.shape[-2:]))
            return maps if size is None else _resize(maps, size)
        handle = self._require_model()
        zoom = min(images.shape[-2:]) / float(self.bank.params["patch_size"])
        maps = scale_matched_maps(handle.model, images, self.bank, zoom,
                                  preprocess=handle.preprocess, device=handle.device,
                                  batch_size=_enlarged_batch(handle.batch_size, zoom))
        return maps if size is None else _resize(maps, size)

    def _check_crops(self) -> None:
        """Scale-matched maps enlarge the images by image side / CRAFT's crop side: refuse an
        explanation without crops (ICE, ACE) with the kinds that work."""
        if "patch_size" not in (self.bank.params or {}):
            raise ValueError(f"kind='scale_matched' enlarges the images by image side / crop "
                             f"side, the scale CRAFT's concepts were learned at; this "
                             f"explanation (method={self.method!r}) was fitted on no crops. Use "
                             f"kind='pixel', 'coefficient' or 'gradient' maps.")

    def _scale_matched_codes(self, n_images: int) -> torch.Tensor:
        """Codes ``(n, k, h', w')`` of the first ``n_images`` fitted images enlarged to the crops'
        scale: exactly what :func:`~conceptkit.maps.scale_matched_maps` computes before it
        resizes, but the enlarged images are made batch by batch (never all at once) and the
        codes are kept, so that ``concept_maps()``, ``report`` and ``save`` run ``g`` over the
        enlarged images once between them."""
        from ..extraction import ActivationExtractor
        from ..maps._maps import enlarged_size_refused

        cache = self.__dict__.get("_scale_cache")
        key = (self._bank_state(), tensor_state(self.images), self._model_state())
        if cache is not None and same_state(cache[0], key) and cache[1].shape[0] >= n_images:
            return cache[1][:n_images]
        handle = self._require_model()
        images = self.images[:n_images]
        zoom = min(images.shape[-2:]) / float(self.bank.params["patch_size"])
        size = (round(images.shape[-2] * zoom), round(images.shape[-1] * zoom))
        with enlarged_size_refused(zoom, tuple(images.shape[-2:]), size):
            acts = ActivationExtractor(handle.model, self.bank.layer,
                                       batch_size=_enlarged_batch(handle.batch_size, zoom),
                                       progress=False, device=handle.device,
                                       preprocess=handle.preprocess)(_Enlarged(images, size))
        codes = torch.as_tensor(self.bank.encode(acts.detach().cpu().float())).float()
        self.__dict__["_scale_cache"] = (key, codes)
        return codes

    def _shown_maps(self, n_images: int) -> torch.Tensor:
        """``concept_maps()[:n_images]`` without computing the maps of the other images."""
        from ..maps import upsample

        kind = self._auto_kind(None)
        if kind == "scale_matched":
            n_images = min(n_images, self.images.shape[0])
            return upsample(self._scale_matched_codes(n_images)[:n_images],
                            tuple(self.images.shape[-2:]))
        if self.activations is not None and kind == "coefficient":
            size = None if self.images is None else tuple(self.images.shape[-2:])
            return self._fitted_coefficient_maps(size, n_images)
        if kind == "pixel" and self.images is not None:
            return self._fitted_pixel_maps(n_images)
        return self.concept_maps()[:n_images]

    def _fitted_pixel_maps(self, n_images: int) -> torch.Tensor:
        """Pixel maps of the first ``n_images`` fitted images, computed once (each costs a
        backward pass per concept) and kept while ``bank``, ``images`` and the attached model
        stay the same objects, unwritten in place; a copy is returned."""
        from ..maps import pixel_maps

        n_images = min(n_images, self.images.shape[0])
        handle = self._require_model()
        key = (self._bank_state(), tensor_state(self.images), self._model_state())
        cache = self.__dict__.get("_pixel_cache")
        if cache is None or not same_state(cache[0], key):
            cache = (key, torch.zeros(0))
        done = cache[1].shape[0]
        if done < n_images:
            more = pixel_maps(handle.model, self.images[done:n_images], self.bank,
                              preprocess=handle.preprocess, batch_size=handle.batch_size,
                              device=handle.device)
            cache = (key, more if done == 0 else torch.cat([cache[1], more]))
            self.__dict__["_pixel_cache"] = cache
        return cache[1][:n_images].clone()

    def subconcepts(self, concept: int, layer: str, **kwargs: Any) -> Any:
        """CRAFT's recursion: sub-concepts of ``concept`` at an earlier ``layer``.

        A :class:`~conceptkit.ConceptTree`; ``kwargs`` go to
        :func:`~conceptkit.decompose_concept` (``n_concepts``, ``depth``, ``importance`` ...).
        The seed defaults to the explanation's.
        """
        from ._recursion import decompose_concept

        handle = self.model_at_layer
        if handle is None or self.images is None:
            raise ValueError("sub-concepts need the model and the class images; this explanation "
                             "was loaded from disk without them. Run the explainer's `fit` again.")
        kwargs.setdefault("preprocess", handle.preprocess)
        kwargs.setdefault("batch_size", handle.batch_size)
        kwargs.setdefault("progress", handle.progress)
        kwargs.setdefault("seed", self.params.get("seed"))
        return decompose_concept(handle.model, self.bank, self.images, concept, layer, **kwargs)

    def _require_model(self) -> ModelAtLayer:
        if self.model_at_layer is None:
            raise ValueError("computing maps of new images needs the model: this explanation was "
                             "loaded from disk. Re-attach it with `attach(model)`.")
        return self.model_at_layer

    def attach(self, model: Any, preprocess: Any = None, batch_size: int = 64,
               device: Any = None, output: int | str | None = None, *,
               strict: bool = False) -> ClassConcepts:
        """Re-attach ``model`` (cut at this explanation's layer) to a loaded explanation, so that
        maps of new images can be computed; returns ``self``. ``output`` picks the logits out of
        a tuple or dict output, as in :class:`~conceptkit.ConceptExplainer`.

        ``model`` may be a :class:`~conceptkit.models.ModelBundle` (:func:`conceptkit.models.load`),
        as :class:`~conceptkit.ConceptExplainer` takes it: its preprocessing is used unless
        ``preprocess`` is given.

        Files saved since 0.2 record a digest of the model's weights and the identity of the
        preprocessing the explanation was fitted with; ``attach`` compares them with what it is
        given and **warns** (a ``UserWarning`` naming what differs: the weights, the
        preprocessing, or both) when they disagree — maps computed then are not those of the
        fitted model. It warns rather than refuses by default because an identity can differ
        while the computation is the same (an equivalent preprocessing written as another
        function or transform, the same weights cast to another dtype); ``strict=True`` refuses
        a mismatch with a ``ValueError`` instead. Files that recorded neither are attached
        without a check (unknown is not a mismatch).
        """
        from ..models._candidates import as_bundle

        bundle = as_bundle(model)
        if bundle is not None:
            model = bundle.model
            preprocess = bundle.preprocess if preprocess is None else preprocess
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module or a conceptkit.models bundle "
                            f"(conceptkit.models.load(name)); got {describe(model)}.")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"`preprocess` must be callable; got {describe(preprocess)}.")
        if not isinstance(strict, bool):
            raise TypeError(f"`strict` must be a bool; got {describe(strict)}.")
        differences = self._attach_differences(model, preprocess)
        if differences:
            message = (f"attach: {' and '.join(differences)}; maps, metrics and sub-concepts "
                       f"computed now are not those of the fitted model. Attach the model and "
                       f"the preprocessing the explanation was fitted with")
            if strict:
                raise ValueError(message + ".")
            warnings.warn(message + " (strict=True refuses a mismatch).", UserWarning,
                          stacklevel=2)
        self.model_at_layer = ModelAtLayer(model, self.layer, preprocess=preprocess,
                                           batch_size=batch_size, device=device, progress=False,
                                           output=output,
                                           tokens=self.params.get("tokens", "patches"),
                                           window=self.params.get("window"))
        return self

    def _attach_differences(self, model: torch.nn.Module, preprocess: Any) -> list[str]:
        """What differs between ``model``/``preprocess`` and what the explanation was fitted
        with, as far as it is known (see :meth:`attach`)."""
        from ..extraction._fingerprint import preprocess_difference
        from ._persist import fitted_identity, identity_differences

        known = self.fitted_with
        if known is None:  # a fresh explanation: the model it was fitted with
            known = fitted_identity(self.model_at_layer)
        differences, differs = identity_differences(known, model, preprocess, "the explanation")
        if differs:
            differences.append(preprocess_difference(known, preprocess, "attached with"))
        return differences

    @property
    def metrics(self) -> MetricsTable:
        """Extraction and importance metrics, each with its direction (computed on first access,
        then kept): ``{"extraction": {name: {"value", "higher_is_better"}}, "importance":
        {...}}``. A loaded explanation returns the metrics saved with it. A property, as
        ``ClassReport.metrics``; :meth:`compute_metrics` takes other settings."""
        return MetricsTable(self.compute_metrics(), self)

    def compute_metrics(self, *, stability: bool = False,
                        seed: int | None = 0) -> dict[str, dict[str, Any]]:
        """The :attr:`metrics`, with the extraction ``stability`` (refits the factorizer on
        bootstrap samples, slow) when asked. Importance metrics need the class activations (not
        kept after loading). A loaded explanation returns the metrics saved with it; it cannot
        compute ``stability`` (the factorized rows are not saved), and says so."""
        from ._assemble import compute_metrics

        if self.activations is None:
            saved = self.saved_metrics
            if stability and "stability" not in ((saved or {}).get("extraction") or {}):
                raise ValueError("`stability`=True refits the factorizer on the factorized rows, "
                                 "which a saved explanation does not keep (this one was loaded "
                                 "from disk): compute it on a fitted explanation (the "
                                 "explainer's `fit`), or leave `stability` out for the saved "
                                 "metrics.")
            if saved is not None:
                return saved
            raise ValueError("metrics need the class activations; this explanation was loaded "
                             "from disk without them.")
        key = (bool(stability), seed)
        # importance metrics read the class logit through the model: another class_id, model,
        # weights or context are other metrics
        cache = self._cache_for("_metrics_cache", (
            self.class_id, self._model_state(), tensor_state(self.context)))
        if key not in cache:  # save() and report() both show the metrics: compute them once
            cache[key] = compute_metrics(self, stability=stability, seed=seed)
        return cache[key]

    def concept_label(self, concept: int) -> str:
        """How reports, figures and the command line name concept ``concept`` (its index in
        :attr:`importances`, :attr:`components` and the maps): its name after
        :meth:`name_concepts`, else ``"concept 8"`` (one entry of :attr:`labels`)."""
        return self.labels[resolve_concept(self, concept)]

    def near_duplicates(self, correlation: float = 0.95, shared: float = 0.8,
                        n_exemplars: int = 10) -> list[dict[str, Any]]:
        """Pairs of concepts that look like one concept: codes correlated at least
        ``correlation`` over the fitted rows, or at least ``shared`` of their top
        ``n_exemplars`` exemplars in common. Each pair is ``{"concepts": (i, j), "correlation",
        "shared_exemplars", "n_exemplars"}``; the report flags them."""
        from ._notes import near_duplicates

        return near_duplicates(self.bank, correlation, shared, n_exemplars)

    def notes(self) -> list[str]:
        """What the report says in words: near-duplicate concepts, Sobol total indices above 1,
        confidence intervals that start below 0."""
        from ._notes import class_notes

        return class_notes(self)

    def __repr__(self) -> str:
        from ._notes import result_repr

        return result_repr(self)

    def trust(self, *, n_seeds: int = 3, seed: int = 0, ground_truth: Any = None) -> dict[str, Any]:
        """How far to trust this explanation: each concept's stability across ``n_seeds`` other
        factorizer seeds (Hungarian-matched dictionary cosine), the confidence-interval widths
        and which ranked pairs they leave unresolved, near-duplicate concepts, notes, and — with
        ``ground_truth=(images, masks, part_names)`` — the evaluation row against the part masks
        (:mod:`conceptkit.pipeline._trust`)."""
        from ._trust import trust

        key = (n_seeds, seed)
        cache = self._cache_for("_trust_cache")
        if ground_truth is not None:
            return trust(self, n_seeds=n_seeds, seed=seed, ground_truth=ground_truth)
        if key not in cache:
            cache[key] = trust(self, n_seeds=n_seeds, seed=seed)
        return cache[key]

    def report(self, out_dir: str | os.PathLike, *, n_images: int = 6, n_exemplars: int = 10,
               labels: dict[int, str] | None = None, notes: list[str] | None = None,
               extra_metrics: dict | None = None, index_link: str | None = None,
               trust: bool | dict = False, **render_options: Any) -> str:
        """Write this class's HTML/PNG/JSON report into ``out_dir``; return the page path.

        The page is assembled by :func:`~conceptkit.pipeline.build_class_report` (``n_images``,
        ``n_exemplars``, ``labels``, ``notes``, ``extra_metrics``) and drawn by
        :func:`conceptkit.report.write_class_report` (``index_link`` and ``render_options``:
        ``dpi``, ``embedding``, ...). ``trust=True`` adds :meth:`trust` (stability across
        seeds, interval overlaps, near duplicates) to the page; a dict from :meth:`trust` (e.g.
        with ``ground_truth``) is shown as it is.
        """
        return str(self._write_report(out_dir, n_images=n_images, n_exemplars=n_exemplars,
                                      labels=labels, notes=notes, extra_metrics=extra_metrics,
                                      index_link=index_link, trust=trust, **render_options)[1])

    def _write_report(self, out_dir: str | os.PathLike, *, n_images: int = 6,
                      n_exemplars: int = 10, labels: dict[int, str] | None = None,
                      notes: list[str] | None = None, extra_metrics: dict | None = None,
                      index_link: str | None = None, trust: bool | dict = False,
                      **render_options: Any) -> tuple[Any, Any]:
        """:meth:`report`, returning ``(ClassReport, page path)`` (what an index page needs)."""
        from ..report import write_class_report
        from ..report._write import _options
        from ._assemble import build_class_report

        # the drawing options are checked before the report is assembled: an unknown or bad
        # option (`dpi=0`) is said at once, not after the maps and exemplars are computed
        drawing = {name: param.default for name, param
                   in inspect.signature(write_class_report).parameters.items()
                   if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "index_link"}
        unknown = sorted(set(render_options) - set(drawing) - {"n_overlay_concepts"})
        if unknown:
            raise TypeError(f"report() got unknown option(s) {unknown}; it takes n_images, "
                            f"n_exemplars, labels, notes, extra_metrics, trust, index_link and "
                            f"the drawing options {sorted(drawing)}.")
        given = dict(render_options)
        if "n_overlay_concepts" in given and "n_top_concepts" not in given:  # deprecated name
            given["n_top_concepts"] = given["n_overlay_concepts"]
        given.pop("n_overlay_concepts", None)
        _options(**{**drawing, **given})
        if trust is not True and trust is not False and trust is not None \
                and not isinstance(trust, dict):
            raise TypeError(f"`trust` must be True, False or a dict from `trust()`; got "
                            f"{describe(trust)}.")
        report = build_class_report(self, n_images=n_images, n_exemplars=n_exemplars,
                                    labels=labels, notes=notes, extra_metrics=extra_metrics,
                                    trust=self.trust() if trust is True else
                                    (None if trust is False or trust is None else trust))
        page = write_class_report(report, out_dir, index_link=index_link, **render_options)
        return report, page

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, n_images: int = 8, n_exemplars: int = 12) -> str:
        """Save to one ``.safetensors`` file (tensors + JSON; loads without pickle).

        The bank, the importances, the metrics, ``n_images`` class images with their concept maps
        and the top ``n_exemplars`` exemplars of every concept are stored (images as uint8
        tensors, maps as float16), so that a report can be rebuilt from the file alone. A loaded
        explanation saves what it was loaded with: the file equals the one it came from.
        ``n_images`` is at least 1 (the report rebuilt from the file shows them). The file also
        records a digest of the model's weights and the identity of the preprocessing, which
        :meth:`attach` compares with what it is given.
        """
        from ._persist import result_state

        n_images = check_int(n_images, "n_images")
        if n_images < 1:
            raise ValueError(f"`n_images` must be >= 1: the file keeps that many class images "
                             f"with their maps, and a report rebuilt from it needs at least one; "
                             f"got {n_images}.")
        tensors, meta = result_state(self, n_images=n_images,
                                     n_exemplars=check_int(n_exemplars, "n_exemplars", minimum=1))
        return str(io.save_file(path, tensors, meta, kind=RESULT_KIND, version=RESULT_VERSION))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClassConcepts:
        """Read a file written by :meth:`save` (no pickle, no code execution).

        Parts that disagree with each other (maps or intervals for another number of concepts,
        exemplars without their ids) are refused here, with a FormatError naming the file.
        """
        from ._persist import result_from_state

        tensors, meta = io.load_file(path, kind=RESULT_KIND, version=RESULT_VERSIONS_READ)
        with io.loading(path, "ClassConcepts file"):
            return result_from_state(cls, tensors, meta)


def _enlarged_batch(batch_size: int, zoom: float) -> int:
    """Images enlarged ``zoom`` times hold ``zoom²`` times the pixels: batches of as many pixels
    as the explainer's other passes of ``g`` (EfficientNet-Lite0 on 224-px views enlarged 3.5x
    peaked at +7 GB with batches of 64; the activations are the same at any batch size)."""
    return max(1, int(batch_size / max(zoom * zoom, 1.0)))


class _Enlarged:
    """Images resized to ``size`` (bilinear, as :func:`~conceptkit.maps.scale_matched_maps`),
    produced batch by batch for :class:`~conceptkit.extraction.ActivationExtractor`."""

    def __init__(self, images: torch.Tensor, size: tuple[int, int]):
        self.images = images
        self.size = size

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def iter_batches(self, batch_size: int):
        import torch.nn.functional as F

        for start in range(0, len(self), batch_size):
            yield F.interpolate(self.images[start:start + batch_size].float(), size=self.size,
                                mode="bilinear", align_corners=False)

    def all_finite(self) -> bool:
        # Bilinear resizing of finite pixels stays finite: one check of the source images.
        return _all_finite(self.images)


class KnownCodes:
    """A concept bank whose ``encode`` of one activation tensor is already known.

    Importance and every importance metric start with ``bank.encode(activations)`` of the same
    class activations; handing them this view of the bank makes that encoding happen once.
    ``encode`` of that very tensor object returns the stored codes, anything else is encoded by
    the bank; every other attribute is the bank's.
    """

    def __init__(self, bank: ConceptBank, activations: torch.Tensor, codes: torch.Tensor):
        self._bank = bank
        self._activations = activations
        self._codes = codes

    @property
    def components(self) -> torch.Tensor:
        return self._bank.components

    def encode(self, activations: Any) -> Any:
        if activations is self._activations:
            return self._codes
        return self._bank.encode(activations)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)


def _resize(maps: torch.Tensor, size: Any) -> torch.Tensor:
    from ..maps import upsample
    from ..maps._maps import _image_size

    return upsample(maps, _image_size(size))
