"""Exemplars: the pixel boxes (crops, segments, cells) where a concept is most present."""

from __future__ import annotations

import numpy as np
import torch

from ..concepts import ConceptBank


def cut_examples(images: torch.Tensor, bank: ConceptBank, rows: np.ndarray,
                 size: int | None = None) -> torch.Tensor:
    """Cut the pixel boxes of ``rows`` from their source images; segments get ACE's grey
    outside their mask. Every example is resized to ``size`` (default: the first box's size)."""
    import torch.nn.functional as F

    prov = bank.provenance
    boxes = _window_boxes(bank) if prov.kind == "position" else None
    boxes = prov.boxes if boxes is None else boxes
    out = []
    fill = float(prov.extra.get("fill", 117 / 255))
    for row in rows:
        image = images[prov.image_ids[row]].float()
        y0, x0, y1, x1 = boxes[row]
        patch = image[:, y0:y1, x0:x1]
        if prov.kind == "segment":
            mask = torch.from_numpy(prov.masks([row])[0][y0:y1, x0:x1])
            patch = torch.where(mask, patch, torch.full_like(patch, fill))
        side = size or max(y1 - y0, x1 - x0)
        out.append(F.interpolate(patch[None], size=(side, side), mode="bilinear",
                                 align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def _window_boxes(bank: ConceptBank) -> np.ndarray | None:
    """For concepts of CLS tokens (``tokens="cls"``) the whole window each position's code was
    read from, kept at its full size inside the image (the window, not the patch cell, is what
    the code describes); None for other banks."""
    from ..extraction._windows import window_boxes

    params = getattr(bank, "params", None) or {}
    prov = bank.provenance
    if params.get("tokens") != "cls" or prov.cells is None or prov.grid is None:
        return None
    boxes = window_boxes(prov.source_size, prov.grid, int(params["window"]), inside=True).numpy()
    return boxes[prov.cells[:, 0] * prov.grid[1] + prov.cells[:, 1]]
