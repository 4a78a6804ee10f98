"""Where each row of a concept method's input comes from (image, box, mask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = ("crop", "position", "segment", "image")
_MAX_SIDE = 1 << 16  # a loaded provenance declaring larger images is damaged


@dataclass
class Provenance:
    """Source of every row fed to a factorizer, so that concepts can be drawn back on images.

    Attributes
    ----------
    kind
        ``"crop"`` (CRAFT patches), ``"position"`` (ICE feature-map cells), ``"segment"`` (ACE
        superpixels) or ``"image"`` (one row per image).
    image_ids
        ``(n,)`` index of the source image of each row.
    boxes
        ``(n, 4)`` pixel box ``[y0, x0, y1, x1]`` (end exclusive) of each row in its source image.
    source_size
        ``(H, W)`` of the source images.
    cells
        ``(n, 2)`` feature-map cell ``(y, x)`` of each row (positions only).
    grid
        ``(h, w)`` feature-map size (positions only).
    label_maps
        ``(N, R, H, W)`` SLIC label map of every image at every resolution (segments only).
    segment_refs
        ``(n, 2)`` ``(resolution, label)`` of each segment row (segments only).
    """

    kind: str
    image_ids: np.ndarray
    boxes: np.ndarray
    source_size: tuple[int, int]
    cells: np.ndarray | None = None
    grid: tuple[int, int] | None = None
    label_maps: np.ndarray | None = None
    segment_refs: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}; got {self.kind!r}.")
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        self.boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
        self.source_size = (int(self.source_size[0]), int(self.source_size[1]))

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def n_images(self) -> int:
        """Number of distinct source images."""
        return int(np.unique(self.image_ids).size)

    def masks(self, rows: Any = None) -> np.ndarray:
        """Pixel footprint ``(len(rows), H, W)`` (bool) of the given rows in their source image."""
        rows = np.arange(len(self)) if rows is None else np.atleast_1d(np.asarray(rows, dtype=np.int64))
        height, width = self.source_size
        out = np.zeros((rows.size, height, width), dtype=bool)
        for i, row in enumerate(rows):
            if self.kind == "segment" and self.label_maps is not None:
                resolution, label = self.segment_refs[row]
                out[i] = self.label_maps[self.image_ids[row], resolution] == label
            else:
                y0, x0, y1, x1 = self.boxes[row]
                out[i, y0:y1, x0:x1] = True
        return out

    def subset(self, rows: Any) -> Provenance:
        """Provenance of a subset of rows (label maps are shared, not copied)."""
        rows = np.asarray(rows, dtype=np.int64)
        return Provenance(
            kind=self.kind, image_ids=self.image_ids[rows], boxes=self.boxes[rows],
            source_size=self.source_size,
            cells=None if self.cells is None else self.cells[rows], grid=self.grid,
            label_maps=self.label_maps,
            segment_refs=None if self.segment_refs is None else self.segment_refs[rows],
            extra=dict(self.extra),
        )

    def to_state(self, prefix: str = "provenance.") -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON info for saving (see :mod:`conceptkit.io`)."""
        arrays = {prefix + "image_ids": self.image_ids, prefix + "boxes": self.boxes}
        if self.cells is not None:
            arrays[prefix + "cells"] = np.asarray(self.cells, dtype=np.int64)
        if self.label_maps is not None:
            arrays[prefix + "label_maps"] = np.asarray(self.label_maps)
        if self.segment_refs is not None:
            arrays[prefix + "segment_refs"] = np.asarray(self.segment_refs, dtype=np.int64)
        info = {"kind": self.kind, "source_size": list(self.source_size),
                "grid": None if self.grid is None else list(self.grid), "extra": self.extra}
        return arrays, info

    @classmethod
    def from_state(cls, arrays: dict[str, Any], info: dict, prefix: str = "provenance.") -> Provenance:
        """Rebuild from :meth:`to_state` output."""
        def get(name: str) -> np.ndarray | None:
            value = arrays.get(prefix + name)
            return None if value is None else np.asarray(value)

        grid = info.get("grid")
        result = cls(kind=info["kind"], image_ids=get("image_ids"), boxes=get("boxes"),
                     source_size=tuple(info["source_size"]), cells=get("cells"),
                     grid=None if grid is None else tuple(grid), label_maps=get("label_maps"),
                     segment_refs=get("segment_refs"), extra=dict(info.get("extra") or {}))
        result._check_state()
        return result

    def _check_state(self) -> None:
        """Refuse a rebuilt provenance whose parts disagree (what a loaded file declares must
        fit the arrays it holds: masks are allocated from ``source_size``)."""
        height, width = self.source_size
        n = len(self)
        problems = []
        if not (0 < height <= _MAX_SIDE and 0 < width <= _MAX_SIDE):
            problems.append(f"source_size {self.source_size} outside [1, {_MAX_SIDE}]")
        boxes = self.boxes
        if boxes.shape != (n, 4) or (n and (
                (boxes[:, :2] < 0).any() or (boxes[:, 2:] < boxes[:, :2]).any()
                or (boxes[:, 2] > height).any() or (boxes[:, 3] > width).any())):
            problems.append("boxes outside the source images")
        if n and self.image_ids.min() < 0:
            problems.append("negative image ids")
        if self.label_maps is not None:
            maps, refs = self.label_maps, self.segment_refs
            if maps.ndim != 4 or tuple(maps.shape[2:]) != (height, width):
                problems.append(f"label maps {maps.shape} for images of {self.source_size}")
            elif (refs is None or refs.shape != (n, 2)
                  or (n and ((refs < 0).any() or (refs[:, 0] >= maps.shape[1]).any()
                             or self.image_ids.max() >= maps.shape[0]))):
                problems.append("segment references outside the label maps")
        if self.grid is not None:
            grid = tuple(int(g) for g in self.grid)
            cells = self.cells
            if len(grid) != 2 or not all(0 < g <= _MAX_SIDE for g in grid):
                problems.append(f"grid {self.grid}")
            elif cells is not None and (cells.shape != (n, 2) or (n and (
                    (cells < 0).any() or (cells[:, 0] >= grid[0]).any()
                    or (cells[:, 1] >= grid[1]).any()))):
                problems.append("cells outside the grid")
        if problems:
            raise ValueError("inconsistent provenance: " + "; ".join(problems))
