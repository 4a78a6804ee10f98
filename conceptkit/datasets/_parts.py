"""The visual concept parts of the ground-truth dataset and how each one is drawn.

A part is drawn inside a square box of side ``s`` pixels. Drawing works on a local coordinate
grid of the box (pixel centres relative to the box centre), so each shape is one vectorised
inequality and each texture one vectorised formula; there is no per-pixel Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Part colours (RGB in [0, 1]). Chosen far apart in colour space and saturated, while the
# backgrounds stay muted (see ``_generate._backgrounds``), so every part stands out.
_RED = (0.90, 0.10, 0.10)
_BLUE = (0.10, 0.25, 0.90)
_GREEN = (0.10, 0.72, 0.20)
_YELLOW = (0.95, 0.85, 0.10)
_ORANGE = (1.00, 0.55, 0.05)
_CYAN = (0.10, 0.85, 0.90)
_PURPLE = (0.45, 0.10, 0.70)
_MAGENTA = (1.00, 0.00, 1.00)
_DARK = (0.05, 0.05, 0.05)
_LIGHT = (0.95, 0.95, 0.95)


@dataclass(frozen=True)
class ConceptPart:
    """One drawable concept: its human-readable name, its shape and its colour."""

    name: str
    shape: str
    colour: tuple[float, float, float]


# Index order is the concept index used everywhere (``ConceptDataset.concepts[:, k]``).
PARTS: tuple[ConceptPart, ...] = (
    ConceptPart("red disk", "disk", _RED),
    ConceptPart("blue square", "square", _BLUE),
    ConceptPart("green triangle", "triangle", _GREEN),
    ConceptPart("yellow ring", "ring", _YELLOW),
    ConceptPart("striped patch", "stripes", _LIGHT),
    ConceptPart("checkerboard patch", "checkerboard", _LIGHT),
    ConceptPart("orange bar", "bar", _ORANGE),
    ConceptPart("cyan diamond", "diamond", _CYAN),
    ConceptPart("purple cross", "cross", _PURPLE),
    ConceptPart("magenta square", "square", _MAGENTA),
)

CONCEPT_NAMES: tuple[str, ...] = tuple(part.name for part in PARTS)


def _local_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)`` of a ``size`` box, relative to its centre."""
    axis = np.arange(size, dtype=np.float32) + 0.5 - size / 2.0
    return np.meshgrid(axis, axis, indexing="ij")


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(size, size)`` footprint of a plain shape inside its box."""
    yy, xx = _local_grid(size)
    half = size / 2.0
    if shape in ("square", "stripes", "checkerboard"):
        return np.ones((size, size), dtype=bool)
    if shape == "disk":
        return xx**2 + yy**2 <= half**2
    if shape == "ring":
        radius2 = xx**2 + yy**2
        return (radius2 <= half**2) & (radius2 >= (0.55 * half) ** 2)
    if shape == "triangle":
        # Apex at the top; the half-width grows linearly from 0 at the top row to `half`.
        return np.abs(xx) <= (yy + half) / 2.0
    if shape == "diamond":
        return np.abs(xx) + np.abs(yy) <= half
    if shape == "bar":
        # A bar one third of the box thick, horizontal or vertical at random.
        across, along = (yy, xx) if rng.random() < 0.5 else (xx, yy)
        return (np.abs(across) <= size / 6.0) & (np.abs(along) <= half)
    if shape == "cross":
        arm = size / 6.0
        return ((np.abs(xx) <= arm) | (np.abs(yy) <= arm)) & (np.maximum(np.abs(xx), np.abs(yy)) <= half)
    raise KeyError(shape)


def _texture(shape: str, size: int, scale: float, rng: np.random.Generator) -> np.ndarray | None:
    """Boolean ``(size, size)`` pattern: True where a texture shows its light colour."""
    if shape not in ("stripes", "checkerboard"):
        return None
    yy, xx = _local_grid(size)
    if shape == "stripes":
        # Period 4-6 px at 64 px, in one of four orientations.
        period = rng.uniform(4.0, 6.0) * scale
        angle = rng.choice([0.0, 0.25, 0.5, 0.75]) * np.pi
        along = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0.0, period)
        return np.floor(along / (period / 2.0)).astype(np.int64) % 2 == 0
    cell = rng.uniform(2.5, 3.5) * scale
    shift_y, shift_x = rng.uniform(0.0, 2 * cell, size=2)
    rows = np.floor((yy + shift_y) / cell).astype(np.int64)
    cols = np.floor((xx + shift_x) / cell).astype(np.int64)
    return (rows + cols) % 2 == 0


def draw_part(canvas: np.ndarray, part: ConceptPart, top: int, left: int, size: int, scale: float,
              rng: np.random.Generator) -> np.ndarray:
    """Paint ``part`` into its box of ``canvas`` ``(H, W, 3)`` in place; return its footprint.

    ``scale`` is ``image_size / 64`` so that texture periods follow the image resolution. Each
    draw jitters the colour a little (``±0.06`` per channel) so that no two parts are identical.
    The returned mask is boolean ``(size, size)``, relative to the box.
    """
    footprint = _shape_mask(part.shape, size, rng)
    jitter = rng.uniform(-0.06, 0.06, size=3)
    box = canvas[top:top + size, left:left + size]
    pattern = _texture(part.shape, size, scale, rng)
    if pattern is None:
        box[footprint] = np.clip(np.asarray(part.colour) + jitter, 0.0, 1.0)
    else:
        light = np.clip(np.asarray(_LIGHT) + jitter, 0.0, 1.0)
        dark = np.clip(np.asarray(_DARK) + jitter, 0.0, 1.0)
        box[footprint] = np.where(pattern[footprint][:, None], light, dark)
    return footprint
