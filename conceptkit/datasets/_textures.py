"""The ``textures`` world: classes defined by textured patches, with no shape or colour cue.

The rules (exact, and the ones the tests check):

* Seven textures, each drawn as an irregular blob (:func:`._canvas.blob`) whose outline
  distribution is the same for every texture, in two colours drawn from the same distribution for
  every texture (a saturated light colour on a dark one). Only the pattern tells them apart.
* Four classes. Class ``c`` is defined by the joint presence of textures ``c`` and ``c + 1 mod 4``
  (a cycle over the four causal textures, so no single texture decides a class); exactly those
  two causal textures are drawn.
* The three other textures are distractors, each drawn with probability ``DISTRACTOR_RATE``
  independently of the class.
* Blob boxes have a side of 18-26 px at 64 px (down to 14 px when crowded); the blob inside
  spans about 11-26 px (its radius is half the side divided by ``1 + Σ a_k``). Parts never
  overlap and are fully visible: a part's mask is its blob footprint.
"""

from __future__ import annotations

import colorsys

import numpy as np
from tqdm.auto import tqdm

from ._canvas import backgrounds, blob, finish, local_grid, place_boxes, split_rng
from ._dataset import ConceptDataset

PART_NAMES: tuple[str, ...] = ("stripes", "checkerboard", "dots", "zigzag",
                               "concentric rings", "grid lines", "speckle")
CLASS_PARTS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3), (3, 0))
CLASS_NAMES: tuple[str, ...] = tuple(f"{PART_NAMES[a]} + {PART_NAMES[b]}" for a, b in CLASS_PARTS)
DISTRACTOR_PARTS: tuple[int, ...] = (4, 5, 6)
DISTRACTOR_RATE = 0.4
IMAGE_SIZE = 64
_SIDE = (18, 26)
WORLD_ID = 1


def _pattern(texture: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(size, size)`` pattern of one texture: True where the light colour shows."""
    yy, xx = local_grid(size)
    if texture == 0:  # stripes, period 4.5-6.5 px, in one of four orientations
        period = rng.uniform(4.5, 6.5)
        angle = rng.choice([0.0, 0.25, 0.5, 0.75]) * np.pi
        along = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0.0, period)
        return np.mod(along, period) < period / 2.0
    if texture == 1:  # checkerboard, cells 3-4 px
        cell = rng.uniform(3.0, 4.0)
        shift_y, shift_x = rng.uniform(0.0, 2 * cell, size=2)
        return (np.floor((yy + shift_y) / cell) + np.floor((xx + shift_x) / cell)) % 2 == 0
    if texture == 2:  # dots on a square grid, period 5-6.5 px
        period = rng.uniform(5.0, 6.5)
        dy = np.mod(yy + rng.uniform(0.0, period), period) - period / 2.0
        dx = np.mod(xx + rng.uniform(0.0, period), period) - period / 2.0
        return dy**2 + dx**2 <= (0.3 * period) ** 2
    if texture == 3:  # zigzag (chevron) stripes, horizontal or vertical
        across, along = (yy, xx) if rng.random() < 0.5 else (xx, yy)
        wavelength, amplitude = rng.uniform(7.0, 9.0), rng.uniform(2.0, 3.0)
        tri = np.abs(np.mod(along / wavelength + rng.uniform(0.0, 1.0), 1.0) - 0.5) * 4.0 - 1.0
        period = rng.uniform(5.0, 6.5)
        return np.mod(across + amplitude * tri + rng.uniform(0.0, period), period) < period / 2.0
    if texture == 4:  # concentric rings around a point near the centre
        period = rng.uniform(4.0, 5.5)
        cy, cx = rng.uniform(-2.0, 2.0, size=2)
        return np.mod(np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2), period) < period / 2.0
    if texture == 5:  # thin grid lines, period 5-7 px
        period = rng.uniform(5.0, 7.0)
        dy = np.mod(yy + rng.uniform(0.0, period), period)
        dx = np.mod(xx + rng.uniform(0.0, period), period)
        return (dy < 1.5) | (dx < 1.5)
    if texture == 6:  # speckle: random 2 x 2 px cells
        cells = rng.random(((size + 1) // 2, (size + 1) // 2)) < 0.5
        return np.kron(cells, np.ones((2, 2), dtype=bool))[:size, :size]
    raise KeyError(texture)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A saturated light colour and a dark one, the same distribution for every texture."""
    light = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0))
    dark = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.2))
    return np.asarray(light, dtype=np.float32), np.asarray(dark, dtype=np.float32)


def draw_texture(canvas: np.ndarray, texture: int, top: int, left: int, side: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Paint a blob of ``texture`` into its box of ``canvas`` ``(H, W, 3)``; return its footprint."""
    footprint = blob(side, rng)
    pattern = _pattern(texture, side, rng)
    light, dark = _colours(rng)
    box = canvas[top:top + side, left:left + side]
    box[footprint] = np.where(pattern[footprint][:, None], light, dark)
    return footprint


def make_textures(n_per_class: int, seed: int = 0, split: str = "train",
                  progress: bool = False) -> ConceptDataset:
    """Images of the ``textures`` world (``N = 4 * n_per_class``, ordered by class, 64 px)."""
    rng = split_rng(seed, split, WORLD_ID)
    n_classes, n_parts, size = len(CLASS_PARTS), len(PART_NAMES), IMAGE_SIZE
    n_images = n_classes * n_per_class
    labels = np.repeat(np.arange(n_classes), n_per_class)
    canvas = backgrounds(n_images, size, rng)
    masks = np.zeros((n_images, n_parts, size, size), dtype=bool)
    presence = np.zeros((n_images, n_parts), dtype=np.float32)
    for i in tqdm(range(n_images), desc=f"textures ({split})", disable=not progress):
        shown = list(CLASS_PARTS[labels[i]])
        shown += [k for k in DISTRACTOR_PARTS if rng.random() < DISTRACTOR_RATE]
        sides = sorted((int(rng.integers(_SIDE[0], _SIDE[1] + 1)) for _ in shown), reverse=True)
        shown = [shown[j] for j in rng.permutation(len(shown))]
        for k, (top, left, side) in zip(shown, place_boxes(sides, size, rng, min_side=14)):
            masks[i, k, top:top + side, left:left + side] = draw_texture(canvas[i], k, top, left, side, rng)
            presence[i, k] = 1.0
    return finish(canvas, labels, presence, masks, rng=rng, world="textures",
                  part_names=list(PART_NAMES), class_names=list(CLASS_NAMES),
                  class_parts=[list(p) for p in CLASS_PARTS],
                  distractor_parts=list(DISTRACTOR_PARTS), split=split, seed=seed)
