"""The three input decompositions of concept methods: crops (CRAFT), positions (ICE),
segments (ACE). Each returns the inputs and their :class:`Provenance`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._deprecation import renamed_arguments, warn_deprecated
from .._validation import all_finite, check_float, check_images, check_int, describe
from ._provenance import Provenance

ACE_GREY = 117.0 / 255.0  # ACE's `average_image_value` (117) in [0, 1] pixel units


def _pair(size: int | Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        value = check_int(size, name, minimum=1)
        return value, value
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return check_int(size[0], name, minimum=1), check_int(size[1], name, minimum=1)
    raise TypeError(f"`{name}` must be an int or a pair (H, W); got {describe(size)}.")


@dataclass
class CropSet:
    """Square patches of a batch of images, resized to ``image_size`` (the size of the images
    the model then sees) on demand.

    Crops are produced batch by batch (:meth:`iter_batches`) so that thousands of 224-px crops
    never sit in memory at once; :attr:`images` materialises all of them.
    """

    source: torch.Tensor
    provenance: Provenance
    patch_size: int
    stride: int
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.provenance)

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """Resized crops ``(len(rows), C, *image_size)`` for the given row indices."""
        boxes = self.provenance.boxes[rows]
        ids = self.provenance.image_ids[rows]
        patches = torch.stack([self.source[i, :, y0:y1, x0:x1]
                               for i, (y0, x0, y1, x1) in zip(ids, boxes)])
        if tuple(patches.shape[-2:]) == self.image_size:
            return patches
        return F.interpolate(patches, size=self.image_size, mode="bilinear", align_corners=False)

    def iter_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self))))

    def all_finite(self) -> bool:
        """Whether every crop is finite, read once from the source images (bilinear resizing of
        finite pixels stays finite), so batch consumers need not scan each resized batch."""
        return all_finite(self.source)

    @property
    def images(self) -> torch.Tensor:
        """All crops ``(M, C, *image_size)`` (memory: M·C·H·W floats)."""
        return self.batch(np.arange(len(self)))

    @property
    def output_size(self) -> tuple[int, int]:
        """Deprecated name of :attr:`image_size`."""
        warn_deprecated(f"{type(self).__name__}.output_size", "image_size")
        return self.image_size


@renamed_arguments(output_size="image_size")
def crops(images: torch.Tensor, patch_size: int, stride: int | None = None,
          image_size: int | Sequence[int] | None = None) -> CropSet:
    """Cut each image into square patches (CRAFT).

    Parameters
    ----------
    images
        ``(N, C, H, W)`` images; non-square images are fine.
    patch_size
        Side of the square patches in pixels (CRAFT uses 64 for 224-px images).
    stride
        Step between patches; default ``int(0.8 * patch_size)`` as in CRAFT. Patches that would
        cross the border are not taken (like ``torch.nn.functional.unfold``).
    image_size
        Size the patches are resized to before ``g`` (an int side or ``(H, W)``); default
        ``(H, W)`` for square images and ``(min(H, W),) * 2`` otherwise. Was ``output_size``.

    Returns
    -------
    CropSet
        Lazy crops with provenance (``image_ids``, ``boxes``).
    """
    images = check_images(images, "images")
    n, _, height, width = images.shape
    patch_size = check_int(patch_size, "patch_size", minimum=1)
    if patch_size > min(height, width):
        raise ValueError(f"`patch_size` {patch_size} is larger than the images ({height}x{width}); "
                         f"use at most {min(height, width)}.")
    stride = max(1, int(0.8 * patch_size)) if stride is None else check_int(stride, "stride", minimum=1)
    out = _pair(image_size, "image_size")
    if out is None:
        out = (height, width) if height == width else (min(height, width),) * 2
    ys = np.arange(0, height - patch_size + 1, stride)
    xs = np.arange(0, width - patch_size + 1, stride)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    per_image = np.stack([gy.ravel(), gx.ravel(), gy.ravel() + patch_size, gx.ravel() + patch_size], 1)
    boxes = np.tile(per_image, (n, 1))
    image_ids = np.repeat(np.arange(n), per_image.shape[0])
    prov = Provenance("crop", image_ids, boxes, (height, width),
                      extra={"patch_size": patch_size, "stride": stride})
    return CropSet(images, prov, patch_size, stride, out)


@dataclass
class PositionSet:
    """Every spatial position of a batch of feature maps as a row (ICE)."""

    rows: torch.Tensor
    provenance: Provenance

    def __len__(self) -> int:
        return self.rows.shape[0]


def positions(activations: torch.Tensor, image_size: int | Sequence[int] | None = None) -> PositionSet:
    """Flatten feature maps ``(N, C, h, w)`` into rows ``(N·h·w, C)`` with their ``(image, y, x)``.

    ``image_size`` (``(H, W)`` of the source images) maps each cell to its pixel box; by default
    the boxes are in feature-map units.
    """
    if isinstance(activations, np.ndarray):
        activations = torch.from_numpy(activations)
    if not isinstance(activations, torch.Tensor) or activations.ndim != 4:
        shape = tuple(activations.shape) if hasattr(activations, "shape") else describe(activations)
        raise ValueError(f"`activations` must be feature maps of shape (N, C, h, w); got {shape}. "
                         f"Transformer tokens: use ActivationExtractor (tokens come back as maps).")
    if activations.shape[0] == 0:
        raise ValueError("`activations` is empty.")
    n, channels, h, w = activations.shape
    size = _pair(image_size, "image_size") or (h, w)
    rows = activations.permute(0, 2, 3, 1).reshape(-1, channels)
    image_ids = np.repeat(np.arange(n), h * w)
    cy, cx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cells = np.tile(np.stack([cy.ravel(), cx.ravel()], 1), (n, 1))
    y_edges = np.floor(np.arange(h + 1) * size[0] / h).astype(np.int64)
    x_edges = np.floor(np.arange(w + 1) * size[1] / w).astype(np.int64)
    boxes = np.stack([y_edges[cells[:, 0]], x_edges[cells[:, 1]],
                      y_edges[cells[:, 0] + 1], x_edges[cells[:, 1] + 1]], 1)
    prov = Provenance("position", image_ids, boxes, size, cells=cells, grid=(h, w))
    return PositionSet(rows, prov)


@dataclass
class SegmentSet:
    """Superpixel segments (ACE): each one cropped to its box, the rest filled with grey."""

    source: torch.Tensor
    provenance: Provenance
    image_size: tuple[int, int]
    fill: float

    def __len__(self) -> int:
        return len(self.provenance)

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """Segment patches ``(len(rows), C, *image_size)``: box crop, grey outside the mask.

        Resizing uses ``torchvision.ops.roi_align`` (bilinear, batched) on the image and on the
        mask, then blends with the fill value, instead of ACE's per-patch PIL bicubic resize.
        """
        from torchvision.ops import roi_align

        prov = self.provenance
        ids = prov.image_ids[rows]
        masks = torch.from_numpy(prov.masks(rows)).unsqueeze(1).to(self.source.dtype)
        boxes = torch.as_tensor(prov.boxes[rows], dtype=self.source.dtype)
        # roi_align boxes are (batch_index, x0, y0, x1, y1) in continuous pixel coordinates.
        rois_img = torch.cat([torch.as_tensor(ids, dtype=self.source.dtype)[:, None],
                              boxes[:, [1, 0, 3, 2]]], 1)
        rois_mask = torch.cat([torch.arange(len(rows), dtype=self.source.dtype)[:, None],
                               boxes[:, [1, 0, 3, 2]]], 1)
        pixels = roi_align(self.source, rois_img, self.image_size, 1.0, 2, aligned=True)
        weight = roi_align(masks, rois_mask, self.image_size, 1.0, 2, aligned=True).clamp(0, 1)
        return pixels * weight + self.fill * (1.0 - weight)

    def iter_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self))))

    def all_finite(self) -> bool:
        """Whether every patch is finite: finite source pixels and fill value (a patch blends
        them with mask weights in [0, 1])."""
        return math.isfinite(float(self.fill)) and all_finite(self.source)

    @property
    def images(self) -> torch.Tensor:
        """All segment patches ``(M, C, *image_size)``."""
        return self.batch(np.arange(len(self)))

    @property
    def output_size(self) -> tuple[int, int]:
        """Deprecated name of :attr:`image_size`."""
        warn_deprecated(f"{type(self).__name__}.output_size", "image_size")
        return self.image_size


def segment_counts(n_segments: int | Sequence[int]) -> list[int]:
    """SLIC's segment counts, one per resolution: an int (one resolution) or a non-empty
    sequence of ints, each at least 2; else an error naming `n_segments`."""
    if isinstance(n_segments, torch.Tensor):
        n_segments = n_segments.tolist()
    if isinstance(n_segments, (str, bytes)) or not isinstance(
            n_segments, (numbers.Integral, Sequence, np.ndarray)):
        raise TypeError(f"`n_segments` must be an int or a sequence of ints (segments per "
                        f"resolution, e.g. (15, 50, 80)); got {describe(n_segments)}.")
    counts = [check_int(s, "n_segments", minimum=2) for s in np.atleast_1d(
        np.asarray(n_segments, dtype=object))]
    if not counts:
        raise ValueError("`n_segments` must give at least one resolution (e.g. (15, 50, 80)); "
                         "got an empty sequence.")
    return counts


def check_fill(fill: float) -> float:
    """The grey outside ACE's segments: a pixel value in [0, 1] (the images' range)."""
    return check_float(fill, "fill", minimum=0.0, maximum=1.0)


def _dedupe(masks: np.ndarray, min_area: int, max_jaccard: float) -> list[int]:
    """Greedy ACE duplicate removal: keep a mask if big enough and not a near-copy of a kept one."""
    flat = masks.reshape(masks.shape[0], -1).astype(np.float32)
    areas = flat.sum(1)
    inter = flat @ flat.T
    kept: list[int] = []
    for i in range(flat.shape[0]):
        if areas[i] <= min_area:
            continue
        if kept:
            union = areas[i] + areas[kept] - inter[i, kept]
            if np.any(inter[i, kept] / np.maximum(union, 1) > max_jaccard):
                continue
        kept.append(i)
    return kept


def slic_labels(pixels: np.ndarray, n_segments: int, compactness: float = 20.0,
                sigma: float = 1.0) -> np.ndarray:
    """SLIC superpixel labels ``(H, W)``, numbered from 0, of one ``(H, W, C)`` image in [0, 1]
    (Lab colour space for three channels; one channel is read as grey levels)."""
    from skimage.segmentation import slic

    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.shape[-1] == 1:
        return slic(pixels[..., 0], n_segments=n_segments, compactness=compactness, sigma=sigma,
                    start_label=0, channel_axis=None)
    return slic(pixels, n_segments=n_segments, compactness=compactness, sigma=sigma,
                start_label=0, channel_axis=-1)


@renamed_arguments(output_size="image_size")
def segments(images: torch.Tensor, n_segments: Sequence[int] = (15, 50, 80),
             compactness: float | Sequence[float] = 20.0, sigma: float = 1.0,
             image_size: int | Sequence[int] | None = None, min_area: float = 0.001,
             max_jaccard: float = 0.5, fill: float = ACE_GREY, progress: bool = True) -> SegmentSet:
    """Multi-resolution SLIC superpixels (ACE).

    Parameters
    ----------
    images
        ``(N, 3, H, W)`` RGB images in [0, 1] (SLIC works in Lab colour space).
    n_segments, compactness, sigma
        SLIC settings per resolution (ACE defaults: 15, 50, 80 segments, compactness 20, σ 1).
    image_size
        Size of the segment patches fed to ``g``; default the image size. Was ``output_size``.
    min_area
        Segments with at most this fraction of the image area are dropped (ACE: 0.1 %).
    max_jaccard
        A segment overlapping an already kept one with Jaccard above this is dropped (ACE: 0.5).
    fill
        Pixel value in [0, 1] outside the segment (ACE's grey, 117/255).
    """
    images = check_images(images, "images", channels=3, pixels=True)  # SLIC works on colours
    n_segments = segment_counts(n_segments)
    fill = check_fill(fill)
    if isinstance(compactness, (int, float)):
        compactness = [float(compactness)] * len(n_segments)
    if len(compactness) != len(n_segments):
        raise ValueError(f"`compactness` must be a number or one value per resolution "
                         f"({len(n_segments)}); got {list(compactness)}.")
    compactness = [check_float(c, "compactness", minimum=0.0, strict_minimum=True)
                   for c in compactness]
    sigma = check_float(sigma, "sigma", minimum=0.0)
    check_float(min_area, "min_area", minimum=0.0, maximum=1.0)
    check_float(max_jaccard, "max_jaccard", minimum=0.0, maximum=1.0)
    n, _, height, width = images.shape
    out = _pair(image_size, "image_size") or (height, width)
    label_maps = np.zeros((n, len(n_segments), height, width), dtype=np.int16)
    ids, boxes, refs = [], [], []
    pixels = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)
    for i in tqdm(range(n), disable=not progress, desc="SLIC segments", leave=False):
        candidates, cand_refs = [], []
        for r, (count, comp) in enumerate(zip(n_segments, compactness)):
            labels = slic_labels(pixels[i], count, comp, sigma)
            label_maps[i, r] = labels
            for label in range(int(labels.max()) + 1):
                candidates.append(labels == label)
                cand_refs.append((r, label))
        stack = np.stack(candidates)
        for j in _dedupe(stack, min_area * height * width, max_jaccard):
            rows_any, cols_any = np.any(stack[j], 1), np.any(stack[j], 0)
            y0, y1 = np.flatnonzero(rows_any)[[0, -1]]
            x0, x1 = np.flatnonzero(cols_any)[[0, -1]]
            ids.append(i)
            boxes.append((y0, x0, y1 + 1, x1 + 1))
            refs.append(cand_refs[j])
    prov = Provenance("segment", np.asarray(ids), np.asarray(boxes).reshape(-1, 4), (height, width),
                      label_maps=label_maps, segment_refs=np.asarray(refs).reshape(-1, 2),
                      extra={"n_segments": list(n_segments), "compactness": list(compactness),
                             "fill": fill})
    return SegmentSet(images, prov, out, float(fill))
