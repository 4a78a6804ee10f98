"""Naming by masks: Network Dissection (Bau et al., CVPR 2017) for discovered concepts.

For concept ``k`` with map ``a_k(x)`` (its coefficient map, at the image size), one threshold
``T_k`` is taken over the whole probe set so that a fraction ``quantile`` of all its pixels lie
above it; the binary map ``M_k = a_k > T_k`` (strictly above, as the paper's rule: pixels tied
at the threshold are off, so a map that is 0 on most pixels keeps only its positive ones) is
compared with the masks ``L_c`` of every part ``c``::

    IoU(k, c) = Σ_x |M_k(x) ∩ L_c(x)| / Σ_x |M_k(x) ∪ L_c(x)|      (sums over all probe pixels)

The name is the part of highest IoU; the paper calls a unit a detector when that IoU exceeds
0.04 (``min_score``), and below it the concept stays unnamed.

The paper's ``quantile`` is 0.005 (top 0.5 % of activations), sized for Broden, where most
concepts cover a small share of the probe pixels. ``quantile="auto"`` (the default here) sets it
to the mean pixel share of the probe's parts, so that a concept's binary map is as large as a
typical part: on the ground-truth worlds (parts cover ~5 % of a class's pixels) 0.005 leaves a few
pixels per image and lets small, rare parts win.

Two guards against a small part winning by its size alone. For a part much smaller than the
binary map, ``IoU ≈ |M ∩ L| / |M|`` is bounded by the part's area over the map's: a part shown in
one probe image can reach the detector threshold although nearly all of the concept's top pixels
lie elsewhere. So a part must be shown (a non-empty mask) in at least ``min_images`` probe images
to name a concept and to enter the automatic quantile (3, as
:func:`conceptkit.evaluate.localisation`'s ``min_images``), and every name records
``part_share``, the share of the concept's top pixels that lie on the named part: below
:data:`SMALL_PART_SHARE` the result (and the report) says the name rests on a small share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import check_float, describe
from ._probe import Probe


def resolve_quantile(quantile: Any, masks: torch.Tensor) -> float:
    """The top fraction of pixels kept per concept (see the module notes)."""
    if quantile == "auto":
        cover = masks.flatten(2).float().mean(dim=(0, 2))          # (G,) share of probe pixels
        present = cover[cover > 0]
        if present.numel() == 0:
            raise ValueError("the probe masks are all empty: no part to name concepts after.")
        return float(present.mean())
    if isinstance(quantile, str):
        raise ValueError(f"`quantile` must be a fraction in (0, 1) or 'auto'; got {quantile!r}.")
    value = check_float(quantile, "quantile", minimum=0.0, maximum=1.0, strict_minimum=True)
    if value >= 1.0:  # every pixel "on": a binary map that overlaps every part alike
        raise ValueError(f"`quantile` must be a fraction below 1 (or 'auto'); got {quantile!r}.")
    return value


#: A part whose mask covers at least this share of every probe image covers whole images: any
#: binary map overlaps it as much as another, so it cannot name a concept.
WHOLE_IMAGE = 0.99

#: Below this share of a concept's top pixels on its named part (three in four lie elsewhere),
#: the name rests on a small share of where the concept fires: the result's notes (and the
#: report) say so. On the shapes world (coefficient maps, 3 seeds) the causal parts' right names
#: hold 12-93 % of their concepts' top pixels (3 of 35 below a quarter), the names that the
#: ``min_images`` rule removed or changed mostly 4-23 %.
SMALL_PART_SHARE = 0.25


def _threshold(values: torch.Tensor, quantile: float) -> float | None:
    """``T`` with a fraction ``quantile`` of ``values`` strictly above it (exactly so without
    ties; pixels tied at ``T`` are off); None when every pixel would be on."""
    n_on = max(1, int(round(quantile * values.numel())))
    if n_on >= values.numel():
        return None
    return float(torch.topk(values, n_on + 1).values[-1])


def _overlaps(maps: torch.Tensor, masks: torch.Tensor, quantile: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(k, G)`` intersections of the binary maps ``a_k > T_k`` with the masks, ``(k,)`` the
    binary maps' sizes and ``(G,)`` the part areas, in pixels over the probe."""
    k, n_parts = maps.shape[1], masks.shape[1]
    flat_masks = masks.permute(1, 0, 2, 3).reshape(n_parts, -1)                  # (G, P) bool
    area = flat_masks.sum(1).double().numpy()
    inter, n_on = np.zeros((k, n_parts)), np.zeros(k)
    for j in range(k):
        values = maps[:, j].reshape(-1).double()
        threshold = _threshold(values, quantile)
        if threshold is None:  # every pixel on: a binary map that overlaps every part alike
            continue
        on = values > threshold
        n_on[j] = float(on.sum())
        inter[j] = (flat_masks & on).sum(1).double().numpy()
    return inter, n_on, area


def _ious(inter: np.ndarray, n_on: np.ndarray, area: np.ndarray) -> np.ndarray:
    union = area[None, :] + n_on[:, None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _checked(maps: Any, masks: Any, what: str = "`maps`") -> tuple[torch.Tensor, torch.Tensor]:
    """``maps (N, k, H, W)`` finite floats and ``masks (N, G, H, W)`` bool of the same N, H, W
    (``what``: how the maps are named in the errors)."""
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(maps)
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.dtype == torch.bool \
            or maps.is_complex():
        raise ValueError(f"`maps` must be a real tensor of concept maps (N, k, H, W); got "
                         f"{describe(maps)}.")
    if not isinstance(masks, torch.Tensor) or masks.ndim != 4:
        raise ValueError(f"`masks` must be a tensor of part masks (N, G, H, W); got "
                         f"{describe(masks)}.")
    if masks.shape[0] != maps.shape[0] or masks.shape[2:] != maps.shape[2:]:
        raise ValueError(f"`masks` {tuple(masks.shape)} must have the N, H and W of `maps` "
                         f"{tuple(maps.shape)} (the same probe images; resize the maps to the "
                         f"masks' size first, as name_by_masks does).")
    if masks.dtype != torch.bool:
        values = masks.double()
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError("`masks` must be bool (or hold only 0/1 values); got other values. "
                             "Threshold soft masks first (e.g. masks > 0.5).")
        masks = values.bool()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{what} hold NaN or infinite values; a threshold over them means "
                         f"nothing. Replace them (e.g. torch.nan_to_num) first, or check the "
                         f"model's activations on these images.")
    return maps, masks


def iou_table(maps: torch.Tensor, masks: torch.Tensor, quantile: float) -> np.ndarray:
    """``(k, G)`` IoU of every concept's thresholded maps with every part's masks (module notes).

    ``maps (N, k, H, W)`` float and ``masks (N, G, H, W)`` bool (or 0/1) over the same probe
    images; ``quantile`` in (0, 1) (or ``"auto"``: the parts' mean pixel share).
    """
    maps, masks = _checked(maps, masks)
    quantile = resolve_quantile(quantile, masks)
    return _ious(*_overlaps(maps, masks, quantile))


@dataclass(frozen=True)
class Dissection:
    """What :func:`dissect` measures: ``iou`` and ``share`` ``(k, G)`` (the share of each
    concept's top pixels on each part), the quantile used, per part the number of probe images
    that show it (``shown``) and whether it may name a concept (``allowed``), and the concepts
    whose maps are constant over the probe (``constant``, ``(k,)``: no pixel above the others)."""

    iou: np.ndarray
    share: np.ndarray
    quantile: float
    shown: np.ndarray
    allowed: np.ndarray
    constant: np.ndarray


def dissect_scores(maps: torch.Tensor, probe: Probe, quantile: Any,
                   min_images: int = 3) -> tuple[np.ndarray, float]:
    """``(k, G)`` IoU table of ``maps`` against the probe's masks, and the quantile used."""
    found = dissect(maps, probe, quantile, min_images)
    return found.iou, found.quantile


def dissect(maps: torch.Tensor, probe: Probe, quantile: Any, min_images: int = 3) -> Dissection:
    """IoU of ``maps`` against the probe's masks, with what decides which parts may name."""
    if probe.masks is None:
        raise ValueError("`probe` has no part masks; 'dissect' needs a ConceptDataset or "
                         "(images, masks, names).")
    if tuple(maps.shape[-2:]) != tuple(probe.masks.shape[-2:]):
        maps = torch.nn.functional.interpolate(maps.float(), size=tuple(probe.masks.shape[-2:]),
                                               mode="bilinear", align_corners=False)
    maps, masks = _checked(maps, probe.masks, "the concept maps of the probe images")
    whole = (masks.flatten(2).float().mean(-1).amin(0) >= WHOLE_IMAGE).numpy()   # (G,)
    if bool(whole.all()):
        raise ValueError("every part's mask covers whole probe images: no part can be located, "
                         "so none can name a concept.")
    shown = masks.flatten(2).any(-1).sum(0).numpy()                               # (G,)
    allowed = ~whole & (shown >= min_images)
    if not allowed.any():
        raise ValueError(f"no part is shown in at least `min_images`={min_images} of the "
                         f"{masks.shape[0]} probe images (most: {int(shown[~whole].max())}); a "
                         f"part seen in fewer cannot name a concept. Pass a probe with more "
                         f"images of each part, or a lower `min_images`.")
    # a part that cannot name a concept would also move the automatic quantile
    q = resolve_quantile(quantile, masks[:, torch.as_tensor(allowed)])
    inter, n_on, area = _overlaps(maps, masks, q)
    iou = _ious(inter, n_on, area)
    iou[:, whole] = 0.0
    share = np.divide(inter, n_on[:, None], out=np.zeros_like(inter), where=n_on[:, None] > 0)
    constant = (maps.amax(dim=(0, 2, 3)) == maps.amin(dim=(0, 2, 3))).numpy()
    return Dissection(iou, share, q, shown, allowed, constant)
