"""The ``context`` world: classes defined by a spatial relation between two parts.

The rules (exact, and the ones the tests check):

* Every image shows the red disk and one partner, the blue square or the green triangle.
* Four classes: the disk **above** the square, the disk **below** the square, the disk above the
  triangle, the disk below the triangle. "Above" means every pixel of the disk lies at least
  ``GAP`` rows higher than every pixel of the partner. The disk and the partner are causal parts
  of their classes; neither alone decides a class (the disk is in all of them, and each partner
  appears in two classes that differ only by the relation).
* The two boxes are placed as an upper and a lower box (their rows never overlap), left-right at
  random; which one holds the disk is the class. Over the whole world each part is as often in
  the upper box as in the lower one, but in a bounded image the height of one part alone still
  tells the relation for most images (about 85 % with a middle-row threshold); the others need
  the relation itself.
* The yellow ring and the purple cross are distractors, each drawn with probability
  ``DISTRACTOR_RATE`` independently of the class, anywhere free.
* Parts are 10-16 px wide at 64 px, never overlap, and are fully visible.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ._canvas import backgrounds, finish, place_boxes, split_rng
from ._dataset import ConceptDataset
from ._parts import _shape_mask

_PARTS: tuple[tuple[str, str, tuple[float, float, float]], ...] = (
    ("red disk", "disk", (0.90, 0.10, 0.10)),
    ("blue square", "square", (0.10, 0.25, 0.90)),
    ("green triangle", "triangle", (0.10, 0.72, 0.20)),
    ("yellow ring", "ring", (0.95, 0.85, 0.10)),
    ("purple cross", "cross", (0.45, 0.10, 0.70)),
)
PART_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _PARTS)
DISK = 0
# (partner, disk above the partner?) of each class.
CLASS_RELATIONS: tuple[tuple[int, bool], ...] = ((1, True), (1, False), (2, True), (2, False))
CLASS_PARTS: tuple[tuple[int, int], ...] = tuple((DISK, partner) for partner, _ in CLASS_RELATIONS)
CLASS_NAMES: tuple[str, ...] = tuple(
    f"{PART_NAMES[DISK]} {'above' if above else 'below'} {PART_NAMES[partner]}"
    for partner, above in CLASS_RELATIONS)
DISTRACTOR_PARTS: tuple[int, ...] = (3, 4)
DISTRACTOR_RATE = 0.5
IMAGE_SIZE = 64
SIDE_RANGE = (10, 16)
GAP = 3
WORLD_ID = 3


def _draw(canvas: np.ndarray, part: int, top: int, left: int, side: int,
          rng: np.random.Generator) -> np.ndarray:
    _, shape, colour = _PARTS[part]
    footprint = _shape_mask(shape, side, rng)
    jitter = rng.uniform(-0.06, 0.06, size=3)
    canvas[top:top + side, left:left + side][footprint] = np.clip(np.asarray(colour) + jitter, 0.0, 1.0)
    return footprint


def relation_of(masks: np.ndarray) -> int:
    """The class that the rule gives for one image's masks ``(n_parts, H, W)``; -1 if none.

    The partner is the one of the square and the triangle that is drawn (exactly one must be);
    the disk is above it when the disk's lowest row is at least ``GAP`` rows above the partner's
    highest row, below it in the mirror case.
    """
    drawn = [k for k in (1, 2) if masks[k].any()]
    if len(drawn) != 1 or not masks[DISK].any():
        return -1
    partner = drawn[0]
    disk_rows = np.flatnonzero(masks[DISK].any(axis=1))
    partner_rows = np.flatnonzero(masks[partner].any(axis=1))
    if disk_rows.max() + GAP <= partner_rows.min():
        above = True
    elif partner_rows.max() + GAP <= disk_rows.min():
        above = False
    else:
        return -1
    return CLASS_RELATIONS.index((partner, above))


def make_context(n_per_class: int, seed: int = 0, split: str = "train",
                 progress: bool = False) -> ConceptDataset:
    """Images of the ``context`` world (``N = 4 * n_per_class``, ordered by class, 64 px)."""
    rng = split_rng(seed, split, WORLD_ID)
    n_classes, n_parts, size = len(CLASS_RELATIONS), len(_PARTS), IMAGE_SIZE
    n_images = n_classes * n_per_class
    labels = np.repeat(np.arange(n_classes), n_per_class)
    canvas = backgrounds(n_images, size, rng)
    masks = np.zeros((n_images, n_parts, size, size), dtype=bool)
    presence = np.zeros((n_images, n_parts), dtype=np.float32)
    for i in tqdm(range(n_images), desc=f"context ({split})", disable=not progress):
        partner, above = CLASS_RELATIONS[labels[i]]
        upper_side, lower_side = (int(s) for s in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2))
        upper_top = int(rng.integers(0, size - upper_side - lower_side - GAP + 1))
        lower_top = int(rng.integers(upper_top + upper_side + GAP, size - lower_side + 1))
        upper_left = int(rng.integers(0, size - upper_side + 1))
        lower_left = int(rng.integers(0, size - lower_side + 1))
        upper, lower = (DISK, partner) if above else (partner, DISK)
        boxes = [(upper_top, upper_left, upper_side), (lower_top, lower_left, lower_side)]
        parts = [upper, lower]
        extra = [k for k in DISTRACTOR_PARTS if rng.random() < DISTRACTOR_RATE]
        sides = [int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1)) for _ in extra]
        boxes += place_boxes(sides, size, rng, placed=boxes, min_side=8)
        for k, (top, left, side) in zip(parts + extra, boxes):
            masks[i, k, top:top + side, left:left + side] = _draw(canvas[i], k, top, left, side, rng)
            presence[i, k] = 1.0
    return finish(canvas, labels, presence, masks, rng=rng, world="context",
                  part_names=list(PART_NAMES), class_names=list(CLASS_NAMES),
                  class_parts=[list(p) for p in CLASS_PARTS],
                  distractor_parts=list(DISTRACTOR_PARTS), split=split, seed=seed)
