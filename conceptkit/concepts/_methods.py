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
from torch import nn

from .._validation import check_images, check_int, check_seed, describe
from ..extraction import ActivationExtractor, Provenance, crops, positions, segments
from ..extraction._decompose import ACE_GREY, check_fill, segment_counts
from ._bank import ConceptBank
from ._base import Factorizer
from ._checks import check_sign, configured_factorizer
from ._progress import fit_progress


def bank_from_activations(factorizer: Factorizer, activations: np.ndarray | torch.Tensor,
                          provenance: Provenance, *, layer: str = "", method: str = "custom",
                          params: dict | None = None, keep_activations: bool = True,
                          progress: bool = False) -> ConceptBank:
    """Fit ``factorizer`` on rows ``(n, C)`` with known provenance and wrap it in a bank.

    ``progress`` shows a bar during the fit: iterations for the torch NMF solvers, elapsed time
    for solvers that report nothing (scikit-learn's).
    """
    if not isinstance(factorizer, Factorizer):
        raise TypeError(f"`factorizer` must be a conceptkit Factorizer (NMF, SemiNMF, ...); "
                        f"got {describe(factorizer)}.")
    if len(provenance) != activations.shape[0]:
        raise ValueError(f"`provenance` has {len(provenance)} rows but `activations` has "
                         f"{activations.shape[0]}.")
    _check_rows(factorizer, activations, provenance, layer)
    with fit_progress(factorizer, tuple(activations.shape), progress):
        codes = factorizer.fit_transform(activations)
    acts = torch.as_tensor(np.asarray(activations)) if isinstance(activations, np.ndarray) else activations
    codes = torch.as_tensor(np.asarray(codes) if isinstance(codes, np.ndarray) else codes.cpu())
    return ConceptBank(components=factorizer.components_, codes=codes,
                       provenance=provenance, layer=layer, method=method, params=params or {},
                       factorizer=factorizer,
                       activations=acts.detach().cpu().float() if keep_activations else None,
                       row_scores=_row_scores(factorizer, acts, codes))


def _row_scores(factorizer: Factorizer, acts: torch.Tensor, codes: torch.Tensor) -> torch.Tensor | None:
    """``(n,)`` each row's alignment ``a · w_j`` with its strongest concept ``j``, for codes
    that tie (hard k-means: every member of a cluster has code 1), else None: what
    :meth:`ConceptBank.top_rows` breaks ties with, kept whether or not the activations are."""
    if not getattr(factorizer, "selects_codes", False) or codes.shape[0] == 0:
        return None
    codes = codes.float()
    tied = False
    for column in codes.T:
        present = column[column > 0]
        if present.numel() > torch.unique(present).numel():
            tied = True
            break
    if not tied:
        return None
    # computed as top_rows did from kept activations: the float32 product with each concept
    rows = acts.detach().cpu().float().numpy()
    components = np.asarray(factorizer.components_, dtype=np.float32)
    strongest = codes.argmax(1).numpy()
    scores = np.zeros(rows.shape[0], dtype=np.float32)
    for j in np.unique(strongest):
        members = strongest == j
        scores[members] = rows[members] @ components[j]
    return torch.from_numpy(scores)


_ROW_NOUNS = {"crop": "crops", "position": "feature-map positions", "segment": "segments"}


def _check_rows(factorizer: Factorizer, activations: Any, provenance: Provenance, layer: str) -> None:
    """Say what went wrong in the method's terms (crops, layer) rather than the factorizer's."""
    noun = _ROW_NOUNS.get(provenance.kind, "rows")
    k, n = factorizer.get_params().get("n_concepts"), int(activations.shape[0])
    if isinstance(k, int) and k > n:
        raise ValueError(f"`n_concepts`={k} is larger than the number of {noun} to factorize ({n}); "
                         f"use at most {n} concepts or pass more images.")
    check_sign(factorizer, activations, layer)


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
        self.seed = check_seed(seed, "seed")
        self.preprocess = preprocess
        self.keep_activations = keep_activations

    def _default_factorizer(self, k: int) -> Factorizer:
        from ._nmf import NMF

        return NMF(n_concepts=k, random_state=self.seed)

    def _factorizer(self) -> Factorizer:
        """The factorizer to fit: the default one, or a clone of the user's.

        ``n_concepts=None`` means the factorizer's own ``n_concepts`` (or the method's default when
        there is no factorizer); both given and different is an error rather than one silently
        winning. ``seed`` reaches a user factorizer whose ``random_state`` is unset, on the clone:
        the user's object is never changed.
        """
        if self.factorizer is None:
            k = self.default_concepts if self.n_concepts is None else check_int(
                self.n_concepts, "n_concepts", minimum=1)
            return self._default_factorizer(k)
        return configured_factorizer(self.factorizer, self.n_concepts, self.seed)

    def _extractor(self, model: nn.Module, layer: str, reduce: str | None,
                   progress: bool | None = None, desc: str | None = None) -> ActivationExtractor:
        return ActivationExtractor(model, layer, batch_size=self.batch_size, device=self.device,
                                   progress=self.progress if progress is None else progress,
                                   reduce=reduce, preprocess=self.preprocess, desc=desc)

    def _rows(self, model: nn.Module, layer: str, images: torch.Tensor,
              progress: bool | None = None) -> tuple[torch.Tensor, Provenance, dict]:
        """The activations ``(n, C)`` of the method's inputs, their provenance, extra params."""
        raise NotImplementedError

    def check_first_image(self, model: nn.Module, layer: str, images: torch.Tensor) -> None:
        """Run the method on the first image only and check that the factorizer can take its
        rows (NMF needs non-negative activations), so that a layer with negative activations
        fails in seconds rather than after the whole extraction."""
        factorizer = self._factorizer()
        if not factorizer.requires_nonnegative or getattr(factorizer, "relu", False):
            return
        rows = self._rows(model, layer, images[:1], progress=False)[0]
        check_sign(factorizer, rows, layer, n_images=int(images.shape[0]))

    def _fit_rows(self, model: nn.Module, layer: str, images: torch.Tensor,
                  probe: bool) -> ConceptBank:
        factorizer = self._factorizer()
        if probe and images.shape[0] > 1:
            self.check_first_image(model, layer, images)
        acts, provenance, extra = self._rows(model, layer, images)
        return self._bank(factorizer, acts, provenance, layer, **extra)

    def _params(self, **extra: Any) -> dict[str, Any]:
        params = {"n_concepts": self.n_concepts, "batch_size": self.batch_size, "seed": self.seed}
        params.update(extra)
        return params

    def _bank(self, factorizer: Factorizer, activations: torch.Tensor, provenance: Provenance,
              layer: str, **extra: Any) -> ConceptBank:
        extra.setdefault("n_concepts", factorizer.get_params().get("n_concepts"))
        return bank_from_activations(factorizer, activations, provenance, layer=layer,
                                     method=self.method, params=self._params(**extra),
                                     keep_activations=self.keep_activations,
                                     progress=self.progress)


class CRAFT(_DiscoveryMethod):
    """CRAFT: square crops → ``g`` → spatial mean → NMF (Fel et al., CVPR 2023).

    Parameters
    ----------
    n_concepts
        Number of concepts. Default (None): the ``factorizer``'s ``n_concepts`` when one is given,
        else 10 (as the CRAFT README). Giving both with different values is an error.
    patch_size
        Crop side in pixels. Default: 64/224 of the image side, CRAFT's 64 px for 224-px images.
    stride
        Default ``int(0.8 * patch_size)``.
    factorizer
        Any :class:`Factorizer`; default ``NMF(n_concepts)`` with scikit-learn's defaults (solver
        ``cd``, init ``nndsvda``, tol 1e-4, 200 iterations), as the CRAFT torch reference. A
        given factorizer is cloned; ``seed`` sets the clone's ``random_state`` when it is unset.
    preprocess
        Callable applied to crop batches before the model (normalisation), so crops are cut from
        raw images.
    """

    method = "craft"

    def __init__(self, n_concepts: int | None = None, *, patch_size: int | None = None,
                 stride: int | None = None, factorizer: Factorizer | None = None,
                 batch_size: int = 64, device: Any = None, progress: bool = True,
                 seed: int | None = None, preprocess: Callable | None = None,
                 keep_activations: bool = True):
        super().__init__(n_concepts, factorizer=factorizer, batch_size=batch_size, device=device,
                         progress=progress, seed=seed, preprocess=preprocess,
                         keep_activations=keep_activations)
        self.patch_size = None if patch_size is None else check_int(patch_size, "patch_size",
                                                                     minimum=1)
        self.stride = stride

    def fit(self, model: nn.Module, layer: str, images: torch.Tensor, *,
            probe: bool = True) -> ConceptBank:
        """Discover concepts in ``images (N, C, H, W)`` (colours in [0, 1]) at ``layer``.

        With ``probe`` (default), the first image's crops are checked first (see
        :meth:`check_first_image`).
        """
        images = check_images(images, "images", pixels=True)
        return self._fit_rows(model, layer, images, probe)

    def _rows(self, model, layer, images, progress=None):
        patch = default_patch_size(images.shape[-2:]) if self.patch_size is None else self.patch_size
        crop_set = crops(images, patch, self.stride)
        acts = self._extractor(model, layer, "mean", progress,
                               desc=f"g on {len(crop_set)} crops @ {layer}")(crop_set)
        return acts, crop_set.provenance, {"patch_size": crop_set.patch_size,
                                           "stride": crop_set.stride}


def default_patch_size(size: Sequence[int]) -> int:
    """CRAFT's 64 px at 224 px, scaled to the image size."""
    return max(4, int(round(min(int(size[0]), int(size[1])) * 64 / 224)))


class ICE(_DiscoveryMethod):
    """ICE: every spatial position of the class's feature maps → NMF (Zhang et al., AAAI 2021)."""

    method = "ice"

    def fit(self, model: nn.Module, layer: str, images: torch.Tensor, *,
            probe: bool = True) -> ConceptBank:
        """Discover concepts in ``images (N, C, H, W)`` (colours in [0, 1]) at ``layer``.

        With ``probe`` (default), the first image is checked first (see
        :meth:`check_first_image`).
        """
        images = check_images(images, "images", pixels=True)
        return self._fit_rows(model, layer, images, probe)

    def _rows(self, model, layer, images, progress=None):
        maps = self._extractor(model, layer, None, progress,
                               desc=f"g on {images.shape[0]} images @ {layer}")(images)
        rows = self._positions(maps, layer, tuple(images.shape[-2:]))
        return rows.rows, rows.provenance, {}

    @staticmethod
    def _positions(maps: torch.Tensor, layer: str, image_size: Sequence[int] | None) -> Any:
        if maps.ndim != 4:
            raise ValueError(f"ICE needs spatial feature maps at `layer` {layer!r}; it returns "
                             f"shape {tuple(maps.shape)}. Choose a convolutional/transformer block.")
        return positions(maps, image_size=None if image_size is None else tuple(image_size))

    def fit_activations(self, maps: torch.Tensor, layer: str,
                        image_size: Sequence[int] | None = None) -> ConceptBank:
        """Discover concepts in feature maps ``(N, C, h, w)`` already computed at ``layer``
        (no pass of ``g``); ``image_size`` is the source images' ``(H, W)`` for provenance."""
        rows = self._positions(maps, layer, image_size)
        return self._bank(self._factorizer(), rows.rows, rows.provenance, layer)


class ACE(_DiscoveryMethod):
    """ACE: multi-resolution SLIC segments → ``g`` → spatial mean → k-means (Ghorbani et al. 2019).

    Clusters that come from too few distinct images are dropped with ACE's rule: a cluster
    needs more than ``min_cluster_size`` members, and the number ``m`` of distinct source images
    among its ``s`` members must satisfy one of ``m > 0.5 s``; ``m > 0.25 s`` and ``m > 0.25 D``;
    ``m > 0.1 s`` and ``m > 0.5 D``, where ``D`` is the number of discovery images.

    Parameters
    ----------
    n_concepts
        Number of k-means clusters before filtering. Default (None): the ``factorizer``'s
        ``n_concepts`` when one is given, else 25 (ACE).
    n_segments, compactness, sigma
        SLIC settings per resolution (ACE: 15, 50, 80; 20; 1). ``n_segments`` is a sequence
        of ints (one per resolution) or one int (one resolution), each at least 2.
    min_cluster_size
        ACE's ``min_imgs`` (20 in its constructor).
    fill
        Pixel value in [0, 1] outside each segment (ACE's grey, 117/255).
    images must be RGB in [0, 1]; use ``preprocess`` to normalise the patches for the model.
    """

    method = "ace"
    default_concepts = 25

    def __init__(self, n_concepts: int | None = None, *, n_segments: Sequence[int] = (15, 50, 80),
                 compactness: float = 20.0, sigma: float = 1.0, min_cluster_size: int = 20,
                 fill: float = ACE_GREY, factorizer: Factorizer | None = None, batch_size: int = 64,
                 device: Any = None, progress: bool = True, seed: int | None = None,
                 preprocess: Callable | None = None, keep_activations: bool = True):
        super().__init__(n_concepts, factorizer=factorizer, batch_size=batch_size, device=device,
                         progress=progress, seed=seed, preprocess=preprocess,
                         keep_activations=keep_activations)
        self.n_segments = tuple(segment_counts(n_segments))
        self.compactness = compactness
        self.sigma = sigma
        self.min_cluster_size = min_cluster_size
        self.fill = check_fill(fill)

    def _default_factorizer(self, k: int) -> Factorizer:
        from ._sklearn_factorizers import KMeansConcepts

        return KMeansConcepts(n_concepts=k, random_state=self.seed)

    def _rows(self, model, layer, images, progress=None):
        progress = self.progress if progress is None else progress
        n_segments = segment_counts(self.n_segments)  # also when set after construction
        seg = segments(images, n_segments, self.compactness, self.sigma, fill=self.fill,
                       progress=progress)
        acts = self._extractor(model, layer, "mean", progress,
                               desc=f"g on {len(seg)} segments @ {layer}")(seg)
        return acts, seg.provenance, {"n_segments": n_segments,
                                      "compactness": self.compactness,
                                      "min_cluster_size": self.min_cluster_size}

    def fit(self, model: nn.Module, layer: str, images: torch.Tensor, *,
            probe: bool = True) -> ConceptBank:
        """Discover concepts in ``images (N, 3, H, W)`` (RGB in [0, 1]) at ``layer`` of ``model``.

        With ``probe`` and a factorizer that needs non-negative input, the first image is
        checked first (see :meth:`check_first_image`).
        """
        images = check_images(images, "images", channels=3, pixels=True)
        check_int(self.min_cluster_size, "min_cluster_size", minimum=0)
        bank = self._fit_rows(model, layer, images, probe)
        keep = ace_keep_clusters(bank.codes.argmax(1).numpy(), bank.provenance.image_ids,
                                 bank.n_concepts, images.shape[0], self.min_cluster_size)
        if keep.size == 0:
            raise ValueError(f"ACE kept no cluster: every cluster came from too few of the "
                             f"{images.shape[0]} `images` or had at most "
                             f"`min_cluster_size`={self.min_cluster_size} members. Pass more "
                             f"images or lower `min_cluster_size`.")
        kept = restrict_bank(bank, keep)
        kept.extra["clusters_found"] = int(bank.n_concepts)  # the report says how many left
        return kept


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
    dictionary. The fitted rows keep the fit's codes of the kept concepts: a row that belonged
    to a dropped concept (an ACE segment of an outlier cluster) belongs to none, whether or not
    the bank kept its activations (re-encoding them moved such rows to the nearest kept
    concept, so the codes depended on ``keep_activations``)."""
    keep = np.asarray(keep, dtype=np.int64)
    factorizer = bank.factorizer
    arrays, info = factorizer.get_state()
    per_concept = set(type(factorizer)._concept_arrays)
    # state of the whole dictionary (an online fit's running statistics) does not survive
    # leaving concepts out
    dropped = set(type(factorizer)._whole_dictionary_state)
    sliced = {name: (a[keep] if name in per_concept else a) for name, a in arrays.items()
              if name not in dropped}
    info = {name: value for name, value in info.items() if name not in dropped}
    params = factorizer.get_params(deep=False)
    params["n_concepts"] = int(keep.size)
    if "top_k" in params:
        # a sparse autoencoder keeps the sparsity it was fitted with (top_k=None means a share
        # of n_concepts, which would change with the number of concepts kept), and at most
        # every concept kept
        active = getattr(factorizer, "_k_active", params["top_k"])
        if isinstance(active, int):
            params["top_k"] = min(int(active), int(keep.size))
    # the parameters of a live factorizer, not of a file: no file limits on them. Its own class
    # (not the one registered under its name, which may be another class of that name)
    restricted = type(factorizer).from_state(params, sliced, info, from_file=False)
    codes = bank.codes[:, keep]
    return ConceptBank(components=restricted.components_, codes=codes, provenance=bank.provenance,
                       layer=bank.layer, method=bank.method, params=bank.params,
                       factorizer=restricted, activations=bank.activations,
                       concept_ids=bank.concept_ids[keep], extra=dict(bank.extra),
                       row_scores=bank.row_scores)
