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
    out = []
    fill = float(prov.extra.get("fill", 117 / 255))
    for row in rows:
        image = images[prov.image_ids[row]].float()
        y0, x0, y1, x1 = prov.boxes[row]
        patch = image[:, y0:y1, x0:x1]
        if prov.kind == "segment":
            mask = torch.from_numpy(prov.masks([row])[0][y0:y1, x0:x1])
            patch = torch.where(mask, patch, torch.full_like(patch, fill))
        side = size or max(y1 - y0, x1 - x0)
        out.append(F.interpolate(patch[None], size=(side, side), mode="bilinear",
                                 align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)
