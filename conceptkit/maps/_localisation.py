"""How well concept maps agree with ground-truth masks (pointing game, IoU, relevance mass)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_float, describe


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if maps.ndim != 3 or masks.ndim != 3:
        raise ValueError(f"`maps` and `masks` must both be (N, H, W); got {maps.shape} and {masks.shape}.")
    if maps.shape != masks.shape:
        raise ValueError(f"`maps` {maps.shape} and `masks` {masks.shape} must have the same shape.")
    return maps.astype(np.float64), masks.astype(bool)


def pointing_game(maps, masks) -> np.ndarray:
    """Per image: 1.0 if the map's maximum falls inside the mask, else 0.0. ``(N,)``.

    Images with an empty mask or a constant map get NaN (nothing to point at / no pointer).
    """
    maps, masks = _maps_and_masks(maps, masks)
    flat = maps.reshape(maps.shape[0], -1)
    hits = masks.reshape(masks.shape[0], -1)[np.arange(flat.shape[0]), flat.argmax(1)].astype(float)
    hits[~masks.reshape(masks.shape[0], -1).any(1)] = np.nan
    hits[flat.max(1) <= flat.min(1)] = np.nan
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

    CRAFT displays maps above their 90th percentile; the same cut is the default here.
    """
    check_float(quantile, "quantile", minimum=0.0, maximum=1.0)
    maps, masks = _maps_and_masks(maps, masks)
    flat = maps.reshape(maps.shape[0], -1)
    cut = np.quantile(flat, quantile, axis=1)
    on = (flat >= cut[:, None]) & (flat > flat.min(1, keepdims=True))
    truth = masks.reshape(masks.shape[0], -1)
    inter = (on & truth).sum(1)
    union = (on | truth).sum(1)
    out = np.full(maps.shape[0], np.nan)
    ok = truth.any(1) & (union > 0)
    out[ok] = inter[ok] / union[ok]
    return out


LOCALISATION_METRICS = {"pointing_game": pointing_game, "relevance_mass": relevance_mass,
                        "iou": mask_iou}


@dataclass(frozen=True)
class ConceptMatch:
    """Best discovered concept for a ground-truth concept, and how well it localises it."""

    truth: int
    concept: int
    score: float
    metric: str
    n_images: int


def match_concepts(maps, masks, present=None, metric: str = "pointing_game") -> list[ConceptMatch]:
    """For every ground-truth concept, the discovered concept whose maps localise it best.

    Parameters
    ----------
    maps
        ``(N, k, H, W)`` concept maps of N images.
    masks
        ``(N, G, H, W)`` ground-truth masks of G concepts.
    present
        ``(N, G)`` presence; default: a mask is non-empty. Only images where the ground-truth
        concept is present count for it.
    metric
        ``"pointing_game"``, ``"relevance_mass"`` or ``"iou"`` (mean over images).
    """
    if metric not in LOCALISATION_METRICS:
        raise ValueError(f"`metric` must be one of {list(LOCALISATION_METRICS)}; got {metric!r}.")
    fn = LOCALISATION_METRICS[metric]
    maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if maps.ndim != 4 or masks.ndim != 4 or maps.shape[0] != masks.shape[0] or maps.shape[2:] != masks.shape[2:]:
        raise ValueError(f"`maps` (N, k, H, W) and `masks` (N, G, H, W) must agree on N, H, W; got "
                         f"{maps.shape} and {masks.shape}.")
    if present is None:
        present = masks.reshape(masks.shape[0], masks.shape[1], -1).any(-1)
    else:
        present = present.detach().cpu().numpy() if isinstance(present, torch.Tensor) else np.asarray(present)
        if present.shape != masks.shape[:2]:
            raise ValueError(f"`present` must be (N, G) = {masks.shape[:2]}; got {describe(present)}.")
        present = present.astype(bool)
    matches = []
    for g in range(masks.shape[1]):
        rows = np.flatnonzero(present[:, g])
        if rows.size == 0:
            continue
        scores = []
        for j in range(maps.shape[1]):
            values = fn(maps[rows, j], masks[rows, g])
            scores.append(float(np.nanmean(values)) if np.isfinite(values).any() else 0.0)
        best = int(np.argmax(scores))
        matches.append(ConceptMatch(truth=g, concept=best, score=float(scores[best]), metric=metric,
                                    n_images=int(rows.size)))
    return matches
