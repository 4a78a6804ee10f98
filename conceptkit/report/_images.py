"""Pixels for display: resizing, concept overlays (CRAFT style) and PNG encoding."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._deprecation import renamed_arguments
from .._validation import check_choice, check_float, check_int, describe, to_numpy
from ._colors import resolve_colors

OVERLAY_MODES = ("alpha", "argmax")


def fit_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(height, width)`` scaled down (never up) so that the longer side is ``max_side``."""
    if max_side is None or max(height, width) <= max_side:
        return int(height), int(width)
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(images: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downsample ``(N, C, H, W)`` pictures (antialiased) so that no side exceeds ``max_side``."""
    size = fit_size(images.shape[2], images.shape[3], max_side)
    if size == tuple(images.shape[2:]):
        return images
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.numpy()


def fit_within(image: np.ndarray, side: int) -> np.ndarray:
    """Resize a ``(3, h, w)`` picture, keeping its aspect, so that its longer side is ``side``."""
    h, w = image.shape[1:]
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32))
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False,
                        antialias=scale < 1)
    return out[0].numpy()


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(N, k, h, w)`` maps to ``size`` with bilinear interpolation (CRAFT's resize)."""
    from ..maps import upsample

    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    if maps.shape[2] > size[0] or maps.shape[3] > size[1]:
        # Shrinking: antialias, which conceptkit.maps.upsample (made for enlarging) does not do.
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
        return out.numpy()
    return upsample(tensor, size).numpy()


#: How pictures of models that do not read 3 channels are shown (said in the report's notes).
DISPLAY_CHANNELS = {1: "shown in grey (the one channel repeated as RGB)",
                    4: "shown as RGB from their first 3 channels (the 4th, e.g. alpha, dropped)"}


def display_rgb(pictures: Any, name: str = "images") -> Any:
    """``(N, C, H, W)`` pictures as ``(N, 3, H, W)`` for display only: 1 channel repeated as
    grey, 4 channels (RGBA, RGB + another band) cut to their first 3, 3 channels as they are.
    Numpy arrays and tensors keep their type; any other channel count is refused."""
    channels = int(pictures.shape[1]) if getattr(pictures, "ndim", 0) == 4 else None
    if channels == 3 or channels is None:
        return pictures  # not a picture batch: the report's own checks name what is wrong
    if channels == 1:
        if isinstance(pictures, torch.Tensor):
            return pictures.expand(-1, 3, -1, -1).contiguous()
        return np.repeat(pictures, 3, axis=1)
    if channels == 4:
        return pictures[:, :3]
    raise ValueError(f"`{name}` has {channels} channels (shape {tuple(pictures.shape)}); a report "
                     f"shows 1 (grey), 3 (RGB) or 4 (RGB + alpha) channels. Give the pictures as "
                     f"RGB for display (e.g. pick 3 channels).")


def to_hwc(image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` floats in [0, 1] to ``(H, W, 3)`` for ``imshow``."""
    return np.clip(np.transpose(image, (1, 2, 0)), 0.0, 1.0)


def png_bytes(image_hwc: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` float image in [0, 1] as PNG."""
    from PIL import Image

    pixels = np.round(np.clip(image_hwc, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="png")
    return buffer.getvalue()


def _check_pair(images: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, value, text in (("images", images, "(N, 3, H, W)"), ("maps", maps, "(N, k, h, w)")):
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise TypeError(f"`{name}` must be a numpy array or torch.Tensor of shape {text}; "
                            f"got {describe(value)}.")
        array = np.asarray(to_numpy(value), dtype=np.float32)
        if array.ndim != 4 or array.shape[0] == 0 or min(array.shape[1:]) < 1:
            raise ValueError(f"`{name}` must have shape {text}; got shape {array.shape}.")
        if not np.isfinite(array).all():
            raise ValueError(f"`{name}` contains NaN or Inf values.")
        arrays.append(array)
    images, maps = arrays
    if images.shape[1] != 3:
        raise ValueError(f"`images` must be RGB (N, 3, H, W); got shape {images.shape}.")
    if images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError(f"`images` must hold colours in [0, 1]; got values in "
                         f"[{images.min():.4g}, {images.max():.4g}].")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"`maps` has {maps.shape[0]} images in axis 0 but `images` has "
                         f"{images.shape[0]}.")
    return np.clip(images, 0.0, 1.0), maps


@renamed_arguments(n_concepts="n_top_concepts")
def concept_overlay(images: Any, maps: Any, colors: list | None = None, *, n_top_concepts: int = 5,
                    percentile: float = 90.0, mode: str = "alpha",
                    max_alpha: float = 0.6, outline: bool = False) -> np.ndarray:
    """Paint the first ``n_top_concepts`` concept maps onto their images, one colour per concept.

    CRAFT's display: each concept's map is resized to the image, zeroed below its
    ``percentile``-th percentile over all given images, normalised by its maximum over all given
    images, and blended in the concept's colour with opacity ``max_alpha * value / max``.

    Parameters
    ----------
    images : array ``(N, 3, H, W)``
        Colours in [0, 1].
    maps : array ``(N, k, h, w)``
        Concept maps in the concept order of ``colors`` (most important first).
    colors : list of matplotlib colours, optional
        One per concept; default :func:`concept_colors`.
    n_top_concepts : int
        How many concepts (the first ones) to paint (``n_concepts`` before, deprecated).
    percentile : float
        Per-concept threshold in [0, 100).
    mode : {"alpha", "argmax"}
        ``"alpha"`` stacks the concepts (most important on top); ``"argmax"`` paints each pixel
        only with the concept whose normalised value is highest there.
    max_alpha : float
        Opacity at a concept's maximum.
    outline : bool
        Also draw the edge of each concept's painted region in its colour, opaque (a concept
        coloured like the object under it is then still seen; the most important on top).

    Returns
    -------
    array ``(N, H, W, 3)``
        Blended colours in [0, 1].
    """
    images, maps = _check_pair(images, maps)
    n_top_concepts = check_int(n_top_concepts, "n_top_concepts", minimum=1)
    percentile = check_float(percentile, "percentile", minimum=0.0)
    if percentile >= 100:
        raise ValueError(f"`percentile` must be below 100; got {percentile}.")
    check_choice(mode, "mode", OVERLAY_MODES)
    max_alpha = check_float(max_alpha, "max_alpha", minimum=0.0, maximum=1.0)
    m = min(n_top_concepts, maps.shape[1])
    rgb = resolve_colors(colors, m)
    maps = resize_maps(maps[:, :m], tuple(images.shape[2:]))
    strength = np.zeros(maps.shape, dtype=np.float64)
    for c in range(m):
        values = maps[:, c]
        top = float(values.max())
        if top <= 0:
            continue
        threshold = float(np.percentile(values, percentile))
        keep = (values >= threshold) & (values > 0)
        strength[:, c] = np.where(keep, np.clip(values / top, 0.0, 1.0), 0.0)
    out = np.transpose(images, (0, 2, 3, 1)).astype(np.float64)
    if not isinstance(outline, bool):
        raise TypeError(f"`outline` must be True or False; got {outline!r}.")
    if mode == "argmax":
        winner = strength.argmax(axis=1)
        best = np.take_along_axis(strength, winner[:, None], axis=1)[:, 0]
        alpha = (max_alpha * best)[..., None]
        out = (1 - alpha) * out + alpha * rgb[winner]
    else:
        for c in reversed(range(m)):  # least important first, so the most important ends on top
            alpha = (max_alpha * strength[:, c])[..., None]
            out = (1 - alpha) * out + alpha * rgb[c]
    if outline:
        from scipy.ndimage import binary_erosion

        for c in reversed(range(m)):
            region = strength[:, c] > 0
            edge = region & ~binary_erosion(region, structure=np.ones((1, 3, 3), bool),
                                            border_value=0)
            out[edge] = rgb[c]
    return np.clip(out, 0.0, 1.0)  # float rounding may step past 1 by an ulp
