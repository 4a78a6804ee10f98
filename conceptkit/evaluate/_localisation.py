"""How well each concept's maps localise each ground-truth part, and which part each concept sits
on."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from .._validation import check_float, check_int, describe
from ..maps import mask_iou, pointing_game, relevance_mass, upsample
from ._inputs import (
    BACKGROUND,
    UNDETERMINED,
    check_masks,
    check_part_names,
    checked_images,
    fitted_on,
    part_label,
)

#: The per-image scores of a (concept, part) pair, all higher-is-better and in [0, 1].
METRICS = ("pointing_game", "relevance_mass", "iou", "auc")
#: Pointing-game tolerance as a fraction of the image side (4 px at 64 px, 14 px at 224 px; the
#: original pointing game uses 15 px at 224 px).
TOLERANCE_FRACTION = 1 / 16
#: z of the Wilson interval that compares a concept's pointing games on parts shown in
#: different numbers of images (95 %).
WILSON_Z = 1.959963984540054


def default_tolerance(image_size: int) -> int:
    """Pointing-game tolerance in pixels for images ``image_size`` pixels wide."""
    return max(1, round(TOLERANCE_FRACTION * image_size))


@dataclass(frozen=True, eq=False)
class Localisation:
    """Scores of ``k`` concepts' maps against ``P`` parts over ``N`` images.

    Attributes
    ----------
    per_image : dict of str -> ndarray (N, k, P)
        ``"pointing_game"``, ``"relevance_mass"``, ``"iou"`` and ``"auc"`` of each image, NaN
        where the part is absent from the image.
    pointing_game, relevance_mass, iou, auc : ndarray (k, P)
        Their means over the images that show the part (NaN for a part shown in none).
    n_present : ndarray (P,)
        Images showing each part.
    best_concept : ndarray (P,) of int
        For each part, the concept that localises it best (``-1`` if no image shows it).
    concept_parts : ndarray (k,) of int
        For each concept, the part it sits on, ``-1`` for background, ``-2`` when no part is
        shown in ``min_images`` images, so that no concept can be placed (see
        :func:`localisation`).
    tolerance : int
        Pointing-game tolerance in pixels.
    quantile : float
        The IoU threshold: a map's pixels at or above this quantile of the image.
    part_names : tuple of str or None
    maps : tensor (N, k, H, W)
        The maps that were scored (at the masks' size), kept for the deletion curves.
    kind, min_images, assign_threshold
        The settings :func:`localisation` ran with (``kind`` None when maps were given; all
        None on a hand-made Localisation), compared by :func:`faithfulness` with its own.
    """

    per_image: dict
    pointing_game: np.ndarray
    relevance_mass: np.ndarray
    iou: np.ndarray
    auc: np.ndarray
    n_present: np.ndarray
    best_concept: np.ndarray
    concept_parts: np.ndarray
    tolerance: int
    quantile: float
    part_names: tuple[str, ...] | None = None
    maps: torch.Tensor | None = field(default=None, repr=False)
    kind: str | None = field(default=None, repr=False)
    min_images: int | None = field(default=None, repr=False)
    assign_threshold: float | None = field(default=None, repr=False)

    @property
    def n_concepts(self) -> int:
        return int(self.pointing_game.shape[0])

    def score(self, metric: str) -> np.ndarray:
        """The ``(k, P)`` table of ``metric``."""
        if metric not in METRICS:
            raise ValueError(f"`metric` must be one of {list(METRICS)}; got {metric!r}.")
        return getattr(self, metric)

    def name(self, part: int) -> str:
        return part_label(part, self.part_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary (NaN becomes None)."""
        return {"tolerance": self.tolerance, "quantile": self.quantile,
                "part_names": list(self.part_names) if self.part_names else None,
                "n_present": [int(n) for n in self.n_present],
                "best_concept": [int(c) for c in self.best_concept],
                "concept_parts": [int(p) for p in self.concept_parts],
                **{m: [[None if not np.isfinite(v) else float(v) for v in row]
                       for row in self.score(m)] for m in METRICS}}

    def __repr__(self) -> str:
        parts = ", ".join(f"c{j}->{self.name(int(p))}" for j, p in enumerate(self.concept_parts))
        return (f"Localisation(n_concepts={self.n_concepts}, n_parts={len(self.n_present)}, "
                f"tolerance={self.tolerance} px, concepts on: {parts})")


def concept_maps_of(result: Any, images: torch.Tensor | None, kind: str = "auto") -> torch.Tensor:
    """``result.concept_maps`` of ``images``; when ``result`` is a ClassConcepts and they are the
    images it was fitted on, the fitted path (``images=None``: cached codes, provenance maps) is
    used. Any other explanation is always asked for the maps of ``images``."""
    if not hasattr(result, "concept_maps"):
        raise TypeError(f"`result` must have `concept_maps(images, kind=...)` (e.g. a "
                        f"ClassConcepts) or be maps (N, k, H, W); got {describe(result)}.")
    if fitted_on(result, images):
        images = None
    maps = result.concept_maps(images, kind=kind)
    return torch.as_tensor(maps)


def checked_maps(maps: Any, masks: torch.Tensor, name: str = "`result`") -> torch.Tensor:
    """Maps ``(N, k, H, W)`` as float tensors at the masks' size; ``name`` says where they came
    from in messages. Smaller maps are enlarged bilinearly; larger ones are first shrunk by area
    averaging (each mask pixel gets the mean of the map pixels it covers), which keeps every
    peak's mass where bilinear sampling would skip pixels between its sample points."""
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(np.ascontiguousarray(maps))
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        raise ValueError(f"{name} must be concept maps of shape (N, k, H, W) (one map per image "
                         f"and concept); got {describe(maps)}.")
    if maps.shape[0] != masks.shape[0]:
        raise ValueError(f"{name} holds maps of {maps.shape[0]} images but `masks` has "
                         f"{masks.shape[0]}; pass the masks of the same images.")
    if maps.shape[1] == 0:
        raise ValueError(f"{name} holds no concept map (shape {tuple(maps.shape)}): at least one "
                         f"concept is needed, maps of shape (N, k >= 1, H, W).")
    if maps.shape[2] == 0 or maps.shape[3] == 0:
        raise ValueError(f"{name} holds empty maps (shape {tuple(maps.shape)}); expected maps "
                         f"of at least 1 x 1 pixel.")
    maps = maps.detach().cpu().float()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} contains NaN or Inf concept-map values.")
    given, size = tuple(maps.shape[-2:]), tuple(masks.shape[-2:])
    # Whether each map is constant is decided here, at its own size: float32 resizing rounds a
    # constant map into one whose values differ in the last bits (0.69999993..0.70000005),
    # which would then have a maximum to point with and an order for the AUC. A constant map
    # stays exactly its value; every other map is resized as it always was.
    low = maps.amin(dim=(-2, -1), keepdim=True)
    constant = maps.amax(dim=(-2, -1), keepdim=True) <= low
    if given[0] > size[0] or given[1] > size[1]:
        # shrink by area averaging: bilinear sampling reads 4 pixels per output pixel and
        # would drop a peak lying between its sample points
        maps = F.adaptive_avg_pool2d(maps, (min(given[0], size[0]), min(given[1], size[1])))
    resized = upsample(maps, size)
    if bool(constant.any()):
        resized = torch.where(constant, low, resized)
    return resized


def roc_auc(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image and concept, the ROC-AUC of map values as scores of mask pixels ``(N, k, P)``.

    The Mann-Whitney form: the probability that a random pixel inside the mask scores higher
    than a random pixel outside it, ties counting one half (equal to
    ``sklearn.metrics.roc_auc_score(mask, map)``). NaN where the mask is empty or full.
    """
    n, k = maps.shape[:2]
    ranks = rankdata(maps.reshape(n, k, -1), axis=-1)
    truth = masks.reshape(n, masks.shape[1], -1).astype(np.float64)
    n_pos = truth.sum(-1)  # (N, P)
    n_neg = truth.shape[-1] - n_pos
    rank_sum = np.einsum("nkx,npx->nkp", ranks, truth)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - (n_pos * (n_pos + 1) / 2)[:, None]) / (n_pos * n_neg)[:, None]
    auc[np.broadcast_to(((n_pos == 0) | (n_neg == 0))[:, None], auc.shape)] = np.nan
    return auc


def localisation(result: Any, images: Any, masks: Any, part_names: Sequence[str] | None = None,
                 *, kind: str = "auto", tolerance: int | None = None, quantile: float = 0.9,
                 min_images: int = 3, assign_threshold: float = 0.5) -> Localisation:
    """Score each concept's maps against each part's masks.

    For concept ``j``, part ``p`` and an image that shows ``p``:

    - pointing game: 1 if the map's maximum lies within ``tolerance`` pixels of the mask, else 0
      (a constant map points nowhere: 0; constant at the size it is given, before resizing);
    - relevance mass: the share of the map's positive mass inside the mask (0 if none);
    - IoU between the mask and the map's pixels at or above its ``quantile`` in the image;
    - ROC-AUC of the map's values as scores of mask vs non-mask pixels (0.5 for a map with no
      positive value, a concept absent from the image, as for a constant map).

    Each is averaged over the images showing the part.

    Parameters
    ----------
    result : explanation or tensor (N, k, H, W)
        Anything with ``concept_maps(images, kind=...)`` (a ClassConcepts), or the maps
        themselves (resized to the masks' size: enlarged bilinearly, shrunk by area
        averaging).
    images : tensor (N, 3, H, W) or None
        The images (may be None when maps are passed).
    masks : tensor (N, P, H, W) of bool
    part_names : sequence of str, optional
    kind : str
        The map kind asked of ``result`` (``"auto"``, ``"coefficient"``, ``"gradient"``, ...).
    tolerance : int, optional
        Pointing-game tolerance in pixels (default: ``max(1, round(side / 16))``, ``side``
        the masks' shorter side).
    quantile : float
        IoU threshold quantile (CRAFT shows maps above their 90th percentile).
    min_images : int
        A part shown in fewer images cannot be the part a concept sits on (its scores are
        still reported). When no part is shown in this many images, every concept's part is
        undetermined (``-2``), not the background.
    assign_threshold : float
        A concept sits on the eligible part where the lower end of the 95 % Wilson interval
        of its pointing game is highest (ties: the higher relevance mass, then the lower part
        index) if that part's pointing game is at least this; otherwise it sits on the
        background (``-1``). The bound weighs each pointing game by the number of images
        behind it: a concept that points at a part in 3 of the 3 images showing it and at
        another in 26 of 30 sits on the second.

    Returns
    -------
    Localisation
    """
    if not isinstance(result, (torch.Tensor, np.ndarray)) and not hasattr(result,
                                                                          "concept_maps"):
        raise TypeError(f"`result` must be an explanation with `concept_maps(images, kind=...)` "
                        f"(e.g. a ClassConcepts) or concept maps as a tensor or array of shape "
                        f"(N, k, H, W); got {describe(result)}.")
    given_maps = isinstance(result, (torch.Tensor, np.ndarray))
    if given_maps and result.ndim != 4:
        # before the masks are compared with it: its first axis may not be the images
        hint = {3: " If they are one concept's maps of N images, add the concept axis "
                   "(result[:, None]); if they are the k maps of one image, add the image axis "
                   "(result[None]).",
                2: " If it is one map of one image, add both axes (result[None, None])."}
        raise ValueError(f"`result` must be concept maps of shape (N, k, H, W) (one map per "
                         f"image and concept); got {describe(result)}.{hint.get(result.ndim, '')}")
    if given_maps:
        masks = check_masks(masks, None if images is None else checked_images(images),
                            n_images=result.shape[0], other="`result` (the concept maps)")
        maps = checked_maps(result, masks)
    else:
        images = checked_images(images)
        masks = check_masks(masks, images)
        maps = checked_maps(concept_maps_of(result, images, kind), masks,
                            name=f"`result.concept_maps(images, kind={kind!r})`")
    names = check_part_names(part_names, masks.shape[1])
    side = int(min(masks.shape[-2:]))
    tolerance = default_tolerance(side) if tolerance is None else check_int(
        tolerance, "tolerance", minimum=0)
    quantile = check_float(quantile, "quantile", minimum=0.0, maximum=1.0)
    min_images = check_int(min_images, "min_images", minimum=1)
    assign_threshold = check_float(assign_threshold, "assign_threshold", minimum=0.0, maximum=1.0)

    maps_np = maps.numpy()
    masks_np = masks.numpy()
    n, k = maps_np.shape[:2]
    n_parts = masks_np.shape[1]
    present = masks_np.reshape(n, n_parts, -1).any(-1)
    per_image = {m: np.full((n, k, n_parts), np.nan) for m in METRICS}
    per_image["auc"] = roc_auc(maps_np, masks_np)
    # A map with no positive value says the concept is absent from the image (as for the
    # pointing game and relevance mass): its order of negative values ranks no pixel as the
    # concept's, so its AUC is chance, 0.5, as a constant map's is (defined parts only).
    absent = maps_np.reshape(n, k, -1).max(-1) <= 0
    per_image["auc"] = np.where(absent[:, :, None] & np.isfinite(per_image["auc"]), 0.5,
                                per_image["auc"])
    per_image["auc"][~np.broadcast_to(present[:, None], per_image["auc"].shape)] = np.nan
    for p in range(n_parts):
        rows = np.flatnonzero(present[:, p])
        if rows.size == 0:
            continue
        truth = masks_np[rows, p]
        for j in range(k):
            concept = maps_np[rows, j]
            # Undefined values on images that show the part are failures: a constant map points
            # nowhere (NaN from the maps module) and a map without positive mass puts none on it.
            per_image["pointing_game"][rows, j, p] = np.nan_to_num(
                pointing_game(concept, truth, tolerance), nan=0.0)
            per_image["relevance_mass"][rows, j, p] = np.nan_to_num(
                relevance_mass(concept, truth), nan=0.0)
            per_image["iou"][rows, j, p] = mask_iou(concept, truth, quantile)
    counts = present.sum(0)
    tables = {m: _mean_present(per_image[m], counts) for m in METRICS}
    best = np.full(n_parts, -1)
    for p in np.flatnonzero(counts > 0):
        best[p] = _best(tables["pointing_game"][:, p], tables["relevance_mass"][:, p])
    eligible = counts >= min_images
    # with no part shown in min_images images nothing says where a concept sits: undetermined,
    # not the background (which would read as a concept that misses every part)
    parts = np.full(k, BACKGROUND if eligible.any() else UNDETERMINED)
    for j in range(k if eligible.any() else 0):
        # parts compared by what their images support: the lower Wilson bound of the pointing
        # game, so that 3 hits in 3 images do not outrank 26 in 30
        bound = np.where(eligible, wilson_lower(tables["pointing_game"][j], counts), -np.inf)
        rm = np.where(eligible, tables["relevance_mass"][j], -np.inf)
        p = _best(bound, rm)
        if tables["pointing_game"][j, p] >= assign_threshold:
            parts[j] = p
    return Localisation(per_image=per_image, **tables, n_present=counts, best_concept=best,
                        concept_parts=parts, tolerance=tolerance, quantile=quantile,
                        part_names=names, maps=maps,
                        kind=None if given_maps else kind, min_images=min_images,
                        assign_threshold=assign_threshold)


def _mean_present(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    out = np.full(values.shape[1:], np.nan)
    shown = counts > 0
    with warnings.catch_warnings():  # an all-NaN column (AUC of a part filling every image)
        warnings.simplefilter("ignore", RuntimeWarning)
        out[:, shown] = np.nanmean(values[:, :, shown], axis=0)
    return out


def wilson_lower(rate: np.ndarray, n: np.ndarray, z: float = WILSON_Z) -> np.ndarray:
    """Lower end of the Wilson score interval of a proportion ``rate`` observed over ``n``
    trials (elementwise; NaN where ``n`` is 0). ``z`` 1.96: a 95 % interval."""
    rate = np.asarray(rate, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = rate + z * z / (2 * n)
        spread = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
        out = (centre - spread) / (1 + z * z / n)
    return np.where(n > 0, out, np.nan)


def _best(primary: np.ndarray, secondary: np.ndarray) -> int:
    """Index of the highest ``primary`` (NaN lowest), ties broken by ``secondary``, then by the
    lower index."""
    primary = np.nan_to_num(primary, nan=-np.inf)
    secondary = np.nan_to_num(secondary, nan=-np.inf)
    order = np.lexsort((np.arange(primary.size), -secondary, -primary))
    return int(order[0])
