"""The ``scales`` world: coloured shapes whose size varies more than threefold between images.

The rules (exact, and the ones the tests check):

* Seven parts, each a shape in a colour. Every distractor shares its colour with a causal part
  (a red square beside the red disk, ...), so colour alone does not name a part: its shape does.
* Four classes. Class ``c`` is defined by the joint presence of causal parts ``c`` and
  ``c + 1 mod 4`` (a cycle, so no single part decides a class); exactly those two are drawn.
* Each distractor is drawn with probability ``DISTRACTOR_RATE``, independently of the class.
* Every part's box side is drawn log-uniformly between 9 and 30 px (a ratio of 3.3) independently
  of the other parts, so the same part appears tiny in one image and large in the next. Parts
  never overlap (a layout that does not fit shrinks a little), so each mask is the full footprint.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ._canvas import backgrounds, finish, place_boxes, split_rng
from ._dataset import ConceptDataset
from ._parts import _shape_mask

_PARTS: tuple[tuple[str, str, tuple[float, float, float]], ...] = (
    ("red disk", "disk", (0.90, 0.10, 0.10)),
    ("blue triangle", "triangle", (0.10, 0.25, 0.90)),
    ("green ring", "ring", (0.10, 0.72, 0.20)),
    ("yellow cross", "cross", (0.95, 0.85, 0.10)),
    ("red square", "square", (0.90, 0.10, 0.10)),
    ("blue bar", "bar", (0.10, 0.25, 0.90)),
    ("yellow diamond", "diamond", (0.95, 0.85, 0.10)),
)
PART_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _PARTS)
CLASS_PARTS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3), (3, 0))
CLASS_NAMES: tuple[str, ...] = tuple(f"{PART_NAMES[a]} + {PART_NAMES[b]}" for a, b in CLASS_PARTS)
DISTRACTOR_PARTS: tuple[int, ...] = (4, 5, 6)
DISTRACTOR_RATE = 0.4
IMAGE_SIZE = 64
SIDE_RANGE = (9, 30)
WORLD_ID = 2


def draw_shape(canvas: np.ndarray, part: int, top: int, left: int, side: int,
               rng: np.random.Generator) -> np.ndarray:
    """Paint ``part`` into its box of ``canvas`` ``(H, W, 3)`` in place; return its footprint."""
    _, shape, colour = _PARTS[part]
    footprint = _shape_mask(shape, side, rng)
    jitter = rng.uniform(-0.06, 0.06, size=3)
    canvas[top:top + side, left:left + side][footprint] = np.clip(np.asarray(colour) + jitter, 0.0, 1.0)
    return footprint


def make_scales(n_per_class: int, seed: int = 0, split: str = "train",
                progress: bool = False) -> ConceptDataset:
    """Images of the ``scales`` world (``N = 4 * n_per_class``, ordered by class, 64 px)."""
    rng = split_rng(seed, split, WORLD_ID)
    n_classes, n_parts, size = len(CLASS_PARTS), len(_PARTS), IMAGE_SIZE
    n_images = n_classes * n_per_class
    labels = np.repeat(np.arange(n_classes), n_per_class)
    canvas = backgrounds(n_images, size, rng)
    masks = np.zeros((n_images, n_parts, size, size), dtype=bool)
    presence = np.zeros((n_images, n_parts), dtype=np.float32)
    low, high = np.log(SIDE_RANGE[0]), np.log(SIDE_RANGE[1] + 1)
    for i in tqdm(range(n_images), desc=f"scales ({split})", disable=not progress):
        shown = list(CLASS_PARTS[labels[i]])
        shown += [k for k in DISTRACTOR_PARTS if rng.random() < DISTRACTOR_RATE]
        sides = [int(np.exp(rng.uniform(low, high))) for _ in shown]
        # Largest parts first: rejection sampling packs them more easily.
        order = np.argsort(sides, kind="stable")[::-1]
        shown, sides = [shown[j] for j in order], [sides[j] for j in order]
        for k, (top, left, side) in zip(shown, place_boxes(sides, size, rng, min_side=SIDE_RANGE[0])):
            masks[i, k, top:top + side, left:left + side] = draw_shape(canvas[i], k, top, left, side, rng)
            presence[i, k] = 1.0
    return finish(canvas, labels, presence, masks, rng=rng, world="scales",
                  part_names=list(PART_NAMES), class_names=list(CLASS_NAMES),
                  class_parts=[list(p) for p in CLASS_PARTS],
                  distractor_parts=list(DISTRACTOR_PARTS), split=split, seed=seed)
