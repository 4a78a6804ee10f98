"""Exemplars: the pixel boxes (crops, segments, cells) where a concept is most present."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from .._torchutils import median_colour
from ..concepts import ConceptBank


def cut_examples(images: torch.Tensor, bank: ConceptBank, rows: np.ndarray,
                 size: int | None = None) -> torch.Tensor:
    """Cut the pixel boxes of ``rows`` from their source images; segments get ACE's grey
    outside their mask. Every example is resized to ``size`` (default: the first box's size)."""
    import torch.nn.functional as F

    prov = bank.provenance
    windows = _window_boxes(bank) if prov.kind == "position" else None
    boxes = prov.boxes if windows is None else windows[0]
    out = []
    fill = float(prov.extra.get("fill", 117 / 255))
    for row in rows:
        image = images[prov.image_ids[row]].float()
        y0, x0, y1, x1 = boxes[row]
        patch = image[:, y0:y1, x0:x1]
        if prov.kind == "segment":
            mask = torch.from_numpy(prov.masks([row])[0][y0:y1, x0:x1])
            patch = torch.where(mask, patch, torch.full_like(patch, fill))
        if windows is not None:  # a window cut by the border: what the CLS token saw, in place
            wy0, wx0, wy1, wx1 = windows[1][row]
            surround = median_colour(image[None])[0]  # the fill around the window it saw
            canvas = surround.expand(-1, wy1 - wy0, wx1 - wx0).clone()
            canvas[:, y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] = patch
            patch, (y0, x0, y1, x1) = canvas, (wy0, wx0, wy1, wx1)
        if size is None:  # the first box's size for every example (ACE's segments differ)
            size = max(y1 - y0, x1 - x0)
        side = size
        out.append(F.interpolate(patch[None], size=(side, side), mode="bilinear",
                                 align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def _window_boxes(bank: ConceptBank) -> tuple[np.ndarray, np.ndarray] | None:
    """For concepts of CLS tokens (``tokens="cls"``) the window each position's code was read
    from (the window, not the patch cell, is what the code describes): per fitted row, the box
    the CLS token saw (clipped to the image) and the whole window around it (which may reach
    past the border, where the exemplar shows the image's median colour, as around the window
    the token saw); None for other banks."""
    from ..extraction._windows import window_boxes

    params = getattr(bank, "params", None) or {}
    prov = bank.provenance
    if params.get("tokens") != "cls" or prov.cells is None or prov.grid is None:
        return None
    window = int(params["window"])
    index = prov.cells[:, 0] * prov.grid[1] + prov.cells[:, 1]
    seen = window_boxes(prov.source_size, prov.grid, window).numpy()[index]
    whole = window_boxes(prov.source_size, prov.grid, window, clip=False).numpy()[index]
    return seen, whole


@contextlib.contextmanager
def fewer_exemplars_quietly() -> Iterator[None]:
    """Silence :meth:`ClassConcepts.top_examples`' warning that it returns fewer exemplars than
    asked: for the library's own callers (a report, a save), which show what there is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="top_examples: ", category=UserWarning)
        yield
