"""Concept discovery methods: CRAFT (crops), ICE (positions), ACE (segments).

Each method cuts the class's images into its inputs, runs ``g`` once over them, factorizes the
activations and returns a :class:`ConceptBank`. The factorizer is swappable:
``CRAFT(factorizer=SemiNMF(10))`` on signed (ViT/CLIP) activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import clone
from torch import nn

from .._validation import check_images, check_int, describe
from ..extraction import ActivationExtractor, Provenance, crops, positions, segments
from ..extraction._decompose import ACE_GREY
from ._bank import ConceptBank
from ._base import Factorizer, factorizer_from_state


def bank_from_activations(factorizer: Factorizer, activations: np.ndarray | torch.Tensor,
                          provenance: Provenance, *, layer: str = "", method: str = "custom",
                          params: dict | None = None, keep_activations: bool = True) -> ConceptBank:
    """Fit ``factorizer`` on rows ``(n, C)`` with known provenance and wrap it in a bank."""
    if not isinstance(factorizer, Factorizer):
        raise TypeError(f"`factorizer` must be a conceptkit Factorizer (NMF, SemiNMF, ...); "
                        f"got {describe(factorizer)}.")
    if len(provenance) != activations.shape[0]:
        raise ValueError(f"`provenance` has {len(provenance)} rows but `activations` has "
                         f"{activations.shape[0]}.")
    _check_rows(factorizer, activations, provenance, layer)
    codes = factorizer.fit_transform(activations)
    acts = torch.as_tensor(np.asarray(activations)) if isinstance(activations, np.ndarray) else activations
    return ConceptBank(components=factorizer.components_, codes=torch.as_tensor(np.asarray(codes)
                       if isinstance(codes, np.ndarray) else codes.cpu()),
                       provenance=provenance, layer=layer, method=method, params=params or {},
                       factorizer=factorizer,
                       activations=acts.detach().cpu().float() if keep_activations else None)


_ROW_NOUNS = {"crop": "crops", "position": "feature-map positions", "segment": "segments"}


def _check_rows(factorizer: Factorizer, activations: Any, provenance: Provenance, layer: str) -> None:
    """Say what went wrong in the method's terms (crops, layer) rather than the factorizer's."""
    noun = _ROW_NOUNS.get(provenance.kind, "rows")
    k, n = factorizer.get_params().get("n_concepts"), int(activations.shape[0])
    if isinstance(k, int) and k > n:
        raise ValueError(f"`n_concepts`={k} is larger than the number of {noun} to factorize ({n}); "
                         f"use at most {n} concepts or pass more images.")
    if factorizer.requires_nonnegative and not getattr(factorizer, "relu", False):
        low = float(activations.min())
        if low < 0:
            raise ValueError(
                f"the activations at `layer` {layer!r} have negative values (min {low:.4g}), but "
                f"{type(factorizer).__name__} needs non-negative activations: pick a layer after a "
                f"ReLU, pass factorizer=SemiNMF(k) for signed activations (ViT/CLIP tokens), or "
                f"factorizer=NMF(k, relu=True) to clip negatives to 0.")


class _DiscoveryMethod:
    """Shared plumbing: validation, the factorizer, the extractor."""

    method: ClassVar[str] = ""
    default_concepts: ClassVar[int] = 10

    def __init__(self, n_concepts: int | None = None, *, factorizer: Factorizer | None = None,
                 batch_size: int = 64, device: Any = None, progress: bool = True,
                 seed: int | None = None, preprocess: Callable | None = None,
                 keep_activations: bool = True):
        self.n_concepts = n_concepts
        self.factorizer = factorizer
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.seed = seed
        self.preprocess = preprocess
        self.keep_activations = keep_activations

    def _default_factorizer(self, k: int) -> Factorizer:
        from ._nmf import NMF

        return NMF(n_concepts=k, random_state=self.seed)

    def _factorizer(self) -> Factorizer:
        if self.factorizer is None:
            k = self.default_concepts if self.n_concepts is None else check_int(
                self.n_concepts, "n_concepts", minimum=1)
            return self._default_factorizer(k)
        if not isinstance(self.factorizer, Factorizer):
            raise TypeError(f"`factorizer` must be a conceptkit Factorizer (NMF, SemiNMF, "
                            f"KMeansConcepts, ...); got {describe(self.factorizer)}.")
        est = clone(self.factorizer)  # never mutate the user's object
        if self.n_concepts is not None:
            est.set_params(n_concepts=check_int(self.n_concepts, "n_concepts", minimum=1))
        return est

    def _extractor(self, model: nn.Module, layer: str, reduce: str | None) -> ActivationExtractor:
        return ActivationExtractor(model, layer, batch_size=self.batch_size, device=self.device,
                                   progress=self.progress, reduce=reduce, preprocess=self.preprocess)

    def _params(self, **extra: Any) -> dict[str, Any]:
        params = {"n_concepts": self.n_concepts, "batch_size": self.batch_size, "seed": self.seed}
        params.update(extra)
        return params

    def _bank(self, factorizer: Factorizer, activations: torch.Tensor, provenance: Provenance,
              layer: str, **extra: Any) -> ConceptBank:
        return bank_from_activations(factorizer, activations, provenance, layer=layer,
                                     method=self.method, params=self._params(**extra),
                                     keep_activations=self.keep_activations)


class CRAFT(_DiscoveryMethod):
    """CRAFT: square crops → ``g`` → spatial mean → NMF (Fel et al., CVPR 2023).

    Parameters
    ----------
    n_concepts
        Number of concepts (default 10, as the CRAFT README).
    patch_size
        Crop side in pixels. Default: 64/224 of the image side, CRAFT's 64 px for 224-px images.
    stride
        Default ``int(0.8 * patch_size)``.
    factorizer
        Any :class:`Factorizer`; default ``NMF(n_concepts)`` with scikit-learn's defaults (solver
        ``cd``, init ``nndsvda``, tol 1e-4, 200 iterations), as the CRAFT torch reference.
    preprocess
        Callable applied to crop batches before the model (normalisation), so crops are cut from
        raw images.
    """

    method = "craft"

    def __init__(self, n_concepts: int | None = 10, *, patch_size: int | None = None,
                 stride: int | None = None, factorizer: Factorizer | None = None,
                 batch_size: int = 64, device: Any = None, progress: bool = True,
                 seed: int | None = None, preprocess: Callable | None = None,
                 keep_activations: bool = True):
        super().__init__(n_concepts, factorizer=factorizer, batch_size=batch_size, device=device,
                         progress=progress, seed=seed, preprocess=preprocess,
                         keep_activations=keep_activations)
        self.patch_size = patch_size
        self.stride = stride

    def fit(self, model: nn.Module, layer: str, images: torch.Tensor) -> ConceptBank:
        """Discover concepts in ``images (N, C, H, W)`` at ``layer`` of ``model``."""
        images = check_images(images, "images")
        factorizer = self._factorizer()
        patch = self.patch_size or default_patch_size(images.shape[-2:])
        crop_set = crops(images, patch, self.stride)
        acts = self._extractor(model, layer, "mean")(crop_set)
        return self._bank(factorizer, acts, crop_set.provenance, layer, patch_size=crop_set.patch_size,
                          stride=crop_set.stride)


def default_patch_size(size: Sequence[int]) -> int:
    """CRAFT's 64 px at 224 px, scaled to the image size."""
    return max(4, int(round(min(int(size[0]), int(size[1])) * 64 / 224)))


class ICE(_DiscoveryMethod):
    """ICE: every spatial position of the class's feature maps → NMF (Zhang et al., AAAI 2021)."""

    method = "ice"

    def fit(self, model: nn.Module, layer: str, images: torch.Tensor) -> ConceptBank:
        """Discover concepts in ``images (N, C, H, W)`` at ``layer`` of ``model``."""
        images = check_images(images, "images")
        factorizer = self._factorizer()
        maps = self._extractor(model, layer, None)(images)
        return self._fit_maps(factorizer, maps, layer, tuple(images.shape[-2:]))

    def fit_activations(self, maps: torch.Tensor, layer: str,
                        image_size: Sequence[int] | None = None) -> ConceptBank:
        """Discover concepts in feature maps ``(N, C, h, w)`` already computed at ``layer``
        (no pass of ``g``); ``image_size`` is the source images' ``(H, W)`` for provenance."""
        return self._fit_maps(self._factorizer(), maps, layer, image_size)

    def _fit_maps(self, factorizer: Factorizer, maps: torch.Tensor, layer: str,
                  image_size: Sequence[int] | None) -> ConceptBank:
        if maps.ndim != 4:
            raise ValueError(f"ICE needs spatial feature maps at `layer` {layer!r}; it returns "
                             f"shape {tuple(maps.shape)}. Choose a convolutional/transformer block.")
        rows = positions(maps, image_size=None if image_size is None else tuple(image_size))
        return self._bank(factorizer, rows.rows, rows.provenance, layer)


class ACE(_DiscoveryMethod):
    """ACE: multi-resolution SLIC segments → ``g`` → spatial mean → k-means (Ghorbani et al. 2019).

    Clusters that come from too few distinct images are dropped with ACE's rule: a cluster
    needs more than ``min_cluster_size`` members, and the number ``m`` of distinct source images
    among its ``s`` members must satisfy one of ``m > 0.5 s``; ``m > 0.25 s`` and ``m > 0.25 D``;
    ``m > 0.1 s`` and ``m > 0.5 D``, where ``D`` is the number of discovery images.

    Parameters
    ----------
    n_concepts
        Number of k-means clusters before filtering (ACE: 25).
    n_segments, compactness, sigma
        SLIC settings per resolution (ACE: 15, 50, 80; 20; 1).
    min_cluster_size
        ACE's ``min_imgs`` (20 in its constructor).
    images must be RGB in [0, 1]; use ``preprocess`` to normalise the patches for the model.
    """

    method = "ace"
    default_concepts = 25

    def __init__(self, n_concepts: int | None = 25, *, n_segments: Sequence[int] = (15, 50, 80),
                 compactness: float = 20.0, sigma: float = 1.0, min_cluster_size: int = 20,
                 fill: float = ACE_GREY, factorizer: Factorizer | None = None, batch_size: int = 64,
                 device: Any = None, progress: bool = True, seed: int | None = None,
                 preprocess: Callable | None = None, keep_activations: bool = True):
        super().__init__(n_concepts, factorizer=factorizer, batch_size=batch_size, device=device,
                         progress=progress, seed=seed, preprocess=preprocess,
                         keep_activations=keep_activations)
        self.n_segments = n_segments
        self.compactness = compactness
        self.sigma = sigma
        self.min_cluster_size = min_cluster_size
        self.fill = fill

    def _default_factorizer(self, k: int) -> Factorizer:
        from ._sklearn_factorizers import KMeansConcepts

        return KMeansConcepts(n_concepts=k, random_state=self.seed)

    def fit(self, model: nn.Module, layer: str, images: torch.Tensor) -> ConceptBank:
        """Discover concepts in ``images (N, 3, H, W)`` (RGB in [0, 1]) at ``layer`` of ``model``."""
        images = check_images(images, "images", channels=3)
        check_int(self.min_cluster_size, "min_cluster_size", minimum=0)
        factorizer = self._factorizer()
        seg = segments(images, self.n_segments, self.compactness, self.sigma, fill=self.fill,
                       progress=self.progress)
        acts = self._extractor(model, layer, "mean")(seg)
        bank = self._bank(factorizer, acts, seg.provenance, layer, n_segments=list(self.n_segments),
                          compactness=self.compactness, min_cluster_size=self.min_cluster_size)
        keep = ace_keep_clusters(bank.codes.argmax(1).numpy(), seg.provenance.image_ids,
                                 bank.n_concepts, images.shape[0], self.min_cluster_size)
        if keep.size == 0:
            raise ValueError(f"ACE kept no cluster: every cluster came from too few of the "
                             f"{images.shape[0]} `images` or had at most "
                             f"`min_cluster_size`={self.min_cluster_size} members. Pass more "
                             f"images or lower `min_cluster_size`.")
        return restrict_bank(bank, keep)


def ace_keep_clusters(assignments: np.ndarray, image_ids: np.ndarray, n_clusters: int,
                      n_images: int, min_cluster_size: int) -> np.ndarray:
    """Indices of the clusters that pass ACE's outlier-cluster rule (see :class:`ACE`)."""
    keep = []
    for c in range(n_clusters):
        members = assignments == c
        size = int(members.sum())
        if size <= min_cluster_size:
            continue
        m = np.unique(image_ids[members]).size
        if (m > 0.5 * size or (m > 0.25 * size and m > 0.25 * n_images)
                or (m > 0.1 * size and m > 0.5 * n_images)):
            keep.append(c)
    return np.asarray(keep, dtype=np.int64)


def restrict_bank(bank: ConceptBank, keep: np.ndarray) -> ConceptBank:
    """A bank with only the concepts ``keep``; the factorizer is rebuilt with those rows of its
    dictionary, and the codes of the fitted rows are recomputed with it."""
    keep = np.asarray(keep, dtype=np.int64)
    factorizer = bank.factorizer
    arrays, info = factorizer.get_state()
    per_concept = set(type(factorizer)._concept_arrays)
    sliced = {name: (a[keep] if name in per_concept else a) for name, a in arrays.items()}
    params = factorizer.get_params(deep=False)
    params["n_concepts"] = int(keep.size)
    if isinstance(params.get("top_k"), int):  # a sparse autoencoder keeps at most every concept
        params["top_k"] = min(params["top_k"], int(keep.size))
    restricted = factorizer_from_state(type(factorizer).__name__, params, sliced, info)
    codes = (restricted.transform(bank.activations) if bank.activations is not None
             else bank.codes[:, keep])
    return ConceptBank(components=restricted.components_, codes=codes, provenance=bank.provenance,
                       layer=bank.layer, method=bank.method, params=bank.params,
                       factorizer=restricted, activations=bank.activations,
                       concept_ids=bank.concept_ids[keep], extra=dict(bank.extra))
