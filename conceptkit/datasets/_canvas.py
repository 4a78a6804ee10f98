"""Drawing helpers shared by the ground-truth worlds: boxes, blob outlines, finishing touches.

Every world draws its parts into square boxes that never overlap (a one-pixel gap), so a part's
mask is exactly the footprint it painted and every drawn part is fully visible.
"""

from __future__ import annotations

import numpy as np
import torch

from ._dataset import ConceptDataset
from ._generate import _NOISE_STD, SPLITS, _backgrounds, free_positions

__all__ = ["SPLITS", "backgrounds", "blob", "finish", "local_grid", "place_boxes", "split_rng"]

backgrounds = _backgrounds


def split_rng(seed: int, split: str, world_id: int) -> np.random.Generator:
    """The random stream of one ``(world, seed, split)``: splits and worlds never share images."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(world_id, SPLITS.index(split))))


def local_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)`` of a ``size`` box, relative to its centre."""
    axis = np.arange(size, dtype=np.float32) + 0.5 - size / 2.0
    return np.meshgrid(axis, axis, indexing="ij")


def blob(size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(size, size)`` irregular blob: a circle whose radius wobbles with the angle.

    ``r(θ) = R (1 + Σ_k a_k cos(k θ + φ_k))`` for ``k = 2, 3, 4`` with ``a_k ~ U(0, 0.12)``, scaled
    so the blob touches at most the box edge. All blobs share this outline distribution, so the
    outline says nothing about what is drawn inside it.
    """
    yy, xx = local_grid(size)
    amplitude = rng.uniform(0.0, 0.12, size=3)
    phase = rng.uniform(0.0, 2 * np.pi, size=3)
    theta = np.arctan2(yy, xx)
    wobble = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), amplitude, phase))
    radius = (size / 2.0) / (1.0 + amplitude.sum())
    return np.sqrt(xx**2 + yy**2) <= radius * wobble


def place_boxes(sides: list[int], image_size: int, rng: np.random.Generator,
                placed: list[tuple[int, int, int]] | None = None, min_side: int = 6,
                tries: int = 64) -> list[tuple[int, int, int]]:
    """Boxes ``(top, left, side)`` for parts of the given sides, apart from ``placed`` by 1 px.

    Each part draws ``tries`` candidate corners at once and takes the first free one; when none
    is free the part shrinks by 15 % (not below ``min_side``) and tries again. When even that
    fails, the whole layout starts over with every side 15 % smaller. Returns only the new boxes,
    in the order of ``sides``.
    """
    for _ in range(20):
        boxes = _try_boxes(sides, image_size, rng, list(placed or []), min_side, tries)
        if boxes is not None:
            return boxes
        sides = [max(min_side, int(side * 0.85)) for side in sides]
    raise RuntimeError("could not place the parts without overlap")  # pragma: no cover


def _try_boxes(sides: list[int], image_size: int, rng: np.random.Generator,
               boxes: list[tuple[int, int, int]], min_side: int, tries: int
               ) -> list[tuple[int, int, int]] | None:
    new = []
    for side in sides:
        for _ in range(8):
            tops = rng.integers(0, image_size - side + 1, size=tries)
            lefts = rng.integers(0, image_size - side + 1, size=tries)
            free = free_positions(tops, lefts, side, boxes)
            if free.any():
                j = int(np.argmax(free))
                boxes.append((int(tops[j]), int(lefts[j]), side))
                new.append(boxes[-1])
                break
            side = max(min_side, int(side * 0.85))
        else:
            return None
    return new


def finish(canvas: np.ndarray, labels: np.ndarray, presence: np.ndarray, masks: np.ndarray, *,
           rng: np.random.Generator, world: str, part_names: list[str], class_names: list[str],
           class_parts: list[list[int]], distractor_parts: list[int], split: str, seed: int
           ) -> ConceptDataset:
    """Add pixel noise, clip to ``[0, 1]`` and pack one world's arrays as a :class:`ConceptDataset`.

    Worlds without a shortcut cue record ``spurious_concept = spurious_class = -1`` and
    ``spurious = False``.
    """
    canvas += rng.standard_normal(size=canvas.shape, dtype=np.float32) * np.float32(_NOISE_STD)
    np.clip(canvas, 0.0, 1.0, out=canvas)
    images = torch.from_numpy(np.ascontiguousarray(canvas.transpose(0, 3, 1, 2), dtype=np.float32))
    return ConceptDataset(
        images=images,
        labels=torch.from_numpy(labels.astype(np.int64)),
        concepts=torch.from_numpy(presence.astype(np.float32)),
        masks=torch.from_numpy(masks),
        concept_names=list(part_names),
        class_names=list(class_names),
        class_concepts=[list(parts) for parts in class_parts],
        distractor_concepts=list(distractor_parts),
        spurious_concept=-1,
        spurious_class=-1,
        spurious=False,
        split=split,
        seed=seed,
        world=world,
    )
