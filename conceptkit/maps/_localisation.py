"""How well concept maps agree with ground-truth masks (pointing game, IoU, relevance mass)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._reprs import dataclass_repr
from .._validation import check_float, check_int, describe


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if maps.ndim != 3 or masks.ndim != 3:
        raise ValueError(f"`maps` and `masks` must both be (N, H, W); got {maps.shape} and {masks.shape}.")
    if maps.shape != masks.shape:
        raise ValueError(f"`maps` {maps.shape} and `masks` {masks.shape} must have the same shape.")
    if maps.shape[0] == 0:
        raise ValueError("`maps` and `masks` hold no image (N = 0).")
    maps = maps.astype(np.float64)
    if not np.isfinite(maps).all():
        raise ValueError("`maps` contains NaN or Inf values.")
    return maps, masks.astype(bool)


def _dilate(masks: np.ndarray, tolerance: int) -> np.ndarray:
    """Grow boolean masks ``(N, H, W)`` by ``tolerance`` pixels (Chebyshev distance)."""
    from scipy.ndimage import binary_dilation

    structure = np.ones((1, 2 * tolerance + 1, 2 * tolerance + 1), dtype=bool)
    return binary_dilation(masks, structure=structure)


def pointing_game(maps, masks, tolerance: int = 0) -> np.ndarray:
    """Per image: 1.0 if the map's maximum falls inside the mask, else 0.0. ``(N,)``.

    ``tolerance`` counts a hit within that many pixels of the mask, as the original pointing
    game (Zhang et al., 2016, 15 px at 224 px) does; hollow parts (rings) need it. Images with
    an empty mask, a constant map or a map with no positive value get NaN (nothing to point at
    / no pointer). The last matters for signed maps (SemiNMF codes of transformer tokens): a
    concept whose code is negative everywhere in an image is absent from it, and the least
    negative pixel is not evidence of where it is (as :func:`relevance_mass`, which counts
    positive mass only).
    """
    maps, masks = _maps_and_masks(maps, masks)
    # a hit within `tolerance` pixels; beyond the image's size it changes nothing more
    tolerance = min(check_int(tolerance, "tolerance", minimum=0), max(masks.shape[1:]))
    empty = ~masks.reshape(masks.shape[0], -1).any(1)
    if tolerance:
        masks = _dilate(masks, tolerance)
    flat = maps.reshape(maps.shape[0], -1)
    hits = masks.reshape(masks.shape[0], -1)[np.arange(flat.shape[0]), flat.argmax(1)].astype(float)
    hits[empty] = np.nan
    hits[(flat.max(1) <= flat.min(1)) | (flat.max(1) <= 0)] = np.nan
    return hits


def relevance_mass(maps, masks) -> np.ndarray:
    """Per image: share of the positive map mass that lies inside the mask ``(N,)`` (NaN if none)."""
    maps, masks = _maps_and_masks(maps, masks)
    positive = np.clip(maps, 0, None)
    inside = (positive * masks).reshape(maps.shape[0], -1).sum(1)
    total = positive.reshape(maps.shape[0], -1).sum(1)
    out = np.full(maps.shape[0], np.nan)
    ok = (total > 0) & masks.reshape(masks.shape[0], -1).any(1)
    out[ok] = inside[ok] / total[ok]
    return out


def mask_iou(maps, masks, quantile: float = 0.9) -> np.ndarray:
    """Per image: IoU between the mask and the map thresholded at its ``quantile`` ``(N,)``.

    CRAFT displays maps above their 90th percentile; the same cut is the default here. Only
    positive values count as the concept being there (as :func:`relevance_mass` and the
    pointing game): a signed map's zeros are not turned on by one negative pixel elsewhere.
    """
    check_float(quantile, "quantile", minimum=0.0, maximum=1.0)
    maps, masks = _maps_and_masks(maps, masks)
    flat = maps.reshape(maps.shape[0], -1)
    cut = np.quantile(flat, quantile, axis=1)
    on = (flat >= cut[:, None]) & (flat > flat.min(1, keepdims=True)) & (flat > 0)
    truth = masks.reshape(masks.shape[0], -1)
    inter = (on & truth).sum(1)
    union = (on | truth).sum(1)
    out = np.full(maps.shape[0], np.nan)
    ok = truth.any(1) & (union > 0)
    out[ok] = inter[ok] / union[ok]
    return out


LOCALISATION_METRICS = {"pointing_game": pointing_game, "relevance_mass": relevance_mass,
                        "iou": mask_iou}


def _as_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def localisation_table(maps, masks, present=None, metric: str = "pointing_game",
                       **metric_kwargs) -> np.ndarray:
    """Score ``(k, G)`` of every discovered concept against every ground-truth concept.

    Parameters
    ----------
    maps
        ``(N, k, H, W)`` concept maps of N images.
    masks
        ``(N, G, H, W)`` ground-truth masks of G concepts.
    present
        ``(N, G)`` presence; default: a mask is non-empty. Only images where the ground-truth
        concept is present count for it (NaN where it is present nowhere).
    metric
        ``"pointing_game"``, ``"relevance_mass"`` or ``"iou"`` (mean over images).
    metric_kwargs
        Passed to the metric (e.g. ``tolerance`` for the pointing game).
    """
    if metric not in LOCALISATION_METRICS:
        raise ValueError(f"`metric` must be one of {list(LOCALISATION_METRICS)}; got {metric!r}.")
    base = LOCALISATION_METRICS[metric]

    def fn(m, g):
        return base(m, g, **metric_kwargs)

    maps, masks = _as_numpy(maps), _as_numpy(masks)
    if (maps.ndim != 4 or masks.ndim != 4 or maps.shape[0] != masks.shape[0]
            or maps.shape[2:] != masks.shape[2:]):
        raise ValueError(f"`maps` (N, k, H, W) and `masks` (N, G, H, W) must agree on N, H, W; "
                         f"got {maps.shape} and {masks.shape}.")
    if present is None:
        present = masks.reshape(masks.shape[0], masks.shape[1], -1).any(-1)
    else:
        present = _as_numpy(present)
        if present.shape != masks.shape[:2]:
            raise ValueError(f"`present` must be (N, G) = {masks.shape[:2]}; got {describe(present)}.")
        present = present.astype(bool)
    table = np.full((maps.shape[1], masks.shape[1]), np.nan)
    for g in range(masks.shape[1]):
        rows = np.flatnonzero(present[:, g])
        if rows.size == 0:
            continue
        for j in range(maps.shape[1]):
            values = fn(maps[rows, j], masks[rows, g])
            table[j, g] = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
    return table


@dataclass(frozen=True)
class ConceptMatch:
    """Best discovered concept for a ground-truth concept, and how well it localises it."""

    truth: int
    concept: int
    score: float
    metric: str
    n_images: int


def match_concepts(maps, masks, present=None, metric: str = "pointing_game",
                   **metric_kwargs) -> list[ConceptMatch]:
    """For every ground-truth concept, the discovered concept whose maps localise it best.

    Parameters are those of :func:`localisation_table`; ground-truth concepts present in no image
    are left out.
    """
    table = localisation_table(maps, masks, present, metric, **metric_kwargs)
    masks_np = _as_numpy(masks)
    present_np = (masks_np.reshape(masks_np.shape[0], masks_np.shape[1], -1).any(-1)
                  if present is None else _as_numpy(present).astype(bool))
    matches = []
    for g in range(table.shape[1]):
        if np.all(np.isnan(table[:, g])):
            continue
        best = int(np.nanargmax(table[:, g]))
        matches.append(ConceptMatch(truth=g, concept=best, score=float(table[best, g]),
                                    metric=metric, n_images=int(present_np[:, g].sum())))
    return matches


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
ConceptMatch.__repr__ = dataclass_repr  # type: ignore[method-assign]
