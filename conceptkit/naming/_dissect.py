"""Naming by masks: Network Dissection (Bau et al., CVPR 2017) for discovered concepts.

For concept ``k`` with map ``a_k(x)`` (its coefficient map, at the image size), one threshold
``T_k`` is taken over the whole probe set so that a fraction ``quantile`` of all its pixels lie
above it; the binary map ``M_k = a_k > T_k`` is compared with the masks ``L_c`` of every part ``c``::

    IoU(k, c) = Σ_x |M_k(x) ∩ L_c(x)| / Σ_x |M_k(x) ∪ L_c(x)|      (sums over all probe pixels)

The name is the part of highest IoU; the paper calls a unit a detector when that IoU exceeds
0.04 (``min_score``), and below it the concept stays unnamed.

The paper's ``quantile`` is 0.005 (top 0.5 % of activations), sized for Broden, where most
concepts cover a small share of the probe pixels. ``quantile="auto"`` (the default here) sets it
to the mean pixel share of the probe's parts, so that a concept's binary map is as large as a
typical part: on the ground-truth worlds (parts cover ~5 % of a class's pixels) 0.005 leaves a few
pixels per image and lets small, rare parts win.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_float
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


def iou_table(maps: torch.Tensor, masks: torch.Tensor, quantile: float) -> np.ndarray:
    """``(k, G)`` IoU of every concept's thresholded maps with every part's masks (module notes).

    ``maps (N, k, H, W)`` float and ``masks (N, G, H, W)`` bool over the same probe images.
    """
    n, k = maps.shape[:2]
    table = np.zeros((k, masks.shape[1]))
    flat_masks = masks.permute(1, 0, 2, 3).reshape(masks.shape[1], -1)     # (G, P)
    area = flat_masks.sum(1).double()
    for j in range(k):
        values = maps[:, j].reshape(-1).double()
        n_on = max(1, int(round(quantile * values.numel())))
        threshold = torch.topk(values, n_on).values[-1]
        on = values >= threshold
        if bool(on.all()):  # a constant map has no top pixels: it overlaps everything equally
            continue
        inter = (flat_masks & on).sum(1).double()
        union = area + on.sum().double() - inter
        table[j] = torch.where(union > 0, inter / union, torch.zeros_like(union)).numpy()
    return table


def dissect_scores(maps: torch.Tensor, probe: Probe, quantile: Any) -> tuple[np.ndarray, float]:
    """``(k, G)`` IoU table of ``maps`` against the probe's masks, and the quantile used."""
    if probe.masks is None:
        raise ValueError("`probe` has no part masks; 'dissect' needs a ConceptDataset or "
                         "(images, masks, names).")
    if tuple(maps.shape[-2:]) != tuple(probe.masks.shape[-2:]):
        maps = torch.nn.functional.interpolate(maps.float(), size=tuple(probe.masks.shape[-2:]),
                                               mode="bilinear", align_corners=False)
    whole = probe.masks.flatten(2).float().mean(-1).amin(0) >= WHOLE_IMAGE   # (G,)
    if bool(whole.all()):
        raise ValueError("every part's mask covers whole probe images: no part can be located, "
                         "so none can name a concept.")
    # such a part would also inflate the automatic quantile; it is left out of both
    q = resolve_quantile(quantile, probe.masks[:, ~whole])
    table = iou_table(maps, probe.masks, q)
    table[:, whole.numpy()] = 0.0
    return table, q
