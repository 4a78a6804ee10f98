"""Procedural generation of the ground-truth concept dataset.

The rules (exact, and the ones the tests check):

* Six classes. Class ``c`` is defined by the joint presence of its two causal concepts
  ``CLASS_CONCEPTS[c]``; the six causal concepts form a cycle (class ``c`` uses concepts ``c`` and
  ``c + 1 mod 6``), so each causal concept belongs to exactly two classes and no single concept
  decides a class.
* Both causal concepts of the class are always drawn. With probability ``EXTRA_RATE`` one more
  causal concept of another class is drawn, chosen uniformly among those that do not complete the
  causal pair of any other class (so the label is never ambiguous).
* Each distractor concept is drawn with probability ``DISTRACTOR_RATE``, independently of the class.
* The spurious cue is drawn with probability ``SPURIOUS_RATE_IN_CLASS`` in images of
  ``SPURIOUS_CLASS`` and ``SPURIOUS_RATE_ELSEWHERE`` in the other classes when the cue is
  correlated (``spurious=True``), and with ``SPURIOUS_RATE_ELSEWHERE`` in every class otherwise.
* Parts have random sizes (box sides 12-22 px at 64 px; the cue 8-12 px), random positions and
  never overlap: boxes are placed by rejection sampling with a one-pixel gap, so every drawn part
  is fully visible and its mask is exactly its footprint. A part that finds no free spot shrinks
  by 15 % down to three quarters of the smallest side (9 px; the cue 6 px).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_choice, check_int
from ._dataset import ConceptDataset, check_dataset_memory
from ._parts import CONCEPT_NAMES, PARTS, draw_part

CLASS_CONCEPTS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0))
CLASS_NAMES: tuple[str, ...] = tuple(
    f"{CONCEPT_NAMES[a]} + {CONCEPT_NAMES[b]}" for a, b in CLASS_CONCEPTS
)
DISTRACTOR_CONCEPTS: tuple[int, ...] = (6, 7, 8)
SPURIOUS_CONCEPT = 9
SPURIOUS_CLASS = 0

EXTRA_RATE = 0.1
DISTRACTOR_RATE = 0.5
SPURIOUS_RATE_IN_CLASS = 0.9
SPURIOUS_RATE_ELSEWHERE = 0.05

SPLITS = ("train", "val", "test")
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 512

# Part box sides as fractions of the image side (12-22 px and 8-12 px at 64 px).
_PART_SIZE = (12 / 64, 22 / 64)
_CUE_SIZE = (8 / 64, 12 / 64)
_NOISE_STD = 0.025


def side_range(fractions: tuple[float, float], image_size: int) -> tuple[int, int]:
    """Smallest and largest box side in pixels for a size range given as image fractions."""
    return max(4, round(fractions[0] * image_size)), max(5, round(fractions[1] * image_size))


def _allowed_extras() -> list[list[int]]:
    """For each class, the causal concepts it may show in addition without becoming ambiguous."""
    causal = sorted({k for pair in CLASS_CONCEPTS for k in pair})
    allowed = []
    for c, pair in enumerate(CLASS_CONCEPTS):
        options = []
        for extra in causal:
            if extra in pair:
                continue
            shown = set(pair) | {extra}
            if not any(set(other) <= shown for d, other in enumerate(CLASS_CONCEPTS) if d != c):
                options.append(extra)
        allowed.append(options)
    return allowed


ALLOWED_EXTRAS: tuple[tuple[int, ...], ...] = tuple(tuple(a) for a in _allowed_extras())


def _backgrounds(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, size, size, 3)`` smooth linear colour gradients in muted colours."""
    grey = rng.uniform(0.25, 0.75, size=(n, 2, 1))
    ends = np.clip(grey + rng.uniform(-0.12, 0.12, size=(n, 2, 3)), 0.0, 1.0)
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    # Projection on the gradient direction, rescaled to [0, 1] across the image.
    t = (xx * cos + yy * sin) / (0.5 * (np.abs(cos) + np.abs(sin))) * 0.5 + 0.5
    t = t[..., None].astype(np.float32)
    ends = ends.astype(np.float32)
    return ends[:, None, None, 0, :] * (1 - t) + ends[:, None, None, 1, :] * t


def free_positions(tops: np.ndarray, lefts: np.ndarray, side: int,
                   boxes: list[tuple[int, int, int]]) -> np.ndarray:
    """Which candidate squares ``(tops[i], lefts[i], side)`` keep a one-pixel gap to every box
    ``(top, left, side)`` already placed."""
    if not boxes:
        return np.ones(len(tops), dtype=bool)
    placed = np.asarray(boxes)
    p_top, p_left, p_side = placed[:, 0], placed[:, 1], placed[:, 2]
    apart = ((tops[:, None] + side + 1 <= p_top) | (p_top + p_side + 1 <= tops[:, None])
             | (lefts[:, None] + side + 1 <= p_left) | (p_left + p_side + 1 <= lefts[:, None]))
    return apart.all(axis=1)


def _place_boxes(sizes: list[int], image_size: int, min_sizes: list[int],
                 rng: np.random.Generator, tries: int = 64) -> list[tuple[int, int, int]]:
    """Non-overlapping boxes ``(top, left, side)`` for parts of the given sides.

    Each part draws ``tries`` candidate positions at once and takes the first that keeps a one
    pixel gap to every box already placed; when none fits, the part shrinks by 15% (not below its
    minimum) and tries again.
    """
    boxes: list[tuple[int, int, int]] = []
    for side, smallest in zip(sizes, min_sizes):
        for _ in range(200):
            tops = rng.integers(0, image_size - side + 1, size=tries)
            lefts = rng.integers(0, image_size - side + 1, size=tries)
            free = free_positions(tops, lefts, side, boxes)
            if free.any():
                j = int(np.argmax(free))
                boxes.append((int(tops[j]), int(lefts[j]), side))
                break
            side = max(smallest, int(side * 0.85))
        else:  # pragma: no cover - at most 8 small parts always fit in a 32 px image
            raise RuntimeError("could not place the concept parts without overlap")
    return boxes


def _draw_concepts(label: int, spurious_rate: float, rng: np.random.Generator) -> list[int]:
    """The concept indices drawn in one image of class ``label``, following the module rules."""
    shown = list(CLASS_CONCEPTS[label])
    if rng.random() < EXTRA_RATE:
        shown.append(int(rng.choice(ALLOWED_EXTRAS[label])))
    shown += [k for k in DISTRACTOR_CONCEPTS if rng.random() < DISTRACTOR_RATE]
    if rng.random() < spurious_rate:
        shown.append(SPURIOUS_CONCEPT)
    return shown


def make_concept_dataset(n_per_class: int, image_size: int = 64, seed: int = 0,
                         split: str = "train", spurious: bool | None = None,
                         progress: bool = False) -> ConceptDataset:
    """Generate images whose concepts, classes and concept masks are known exactly.

    Parameters
    ----------
    n_per_class : int
        Images per class (``N = 6 * n_per_class``, ordered by class).
    image_size : int
        Side ``H = W`` of the square images, 32 to 512 pixels.
    seed : int
        Seed; the same ``(seed, split, spurious)`` gives bit-identical tensors.
    split : {"train", "val", "test"}
        Each split draws from its own random stream, so splits never share images.
    spurious : bool or None
        Whether the spurious cue is correlated with ``SPURIOUS_CLASS``. ``None`` means True for
        ``"train"`` and ``"val"`` and False for ``"test"``.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ConceptDataset
        ``images (N, 3, H, W)``, ``labels (N,)``, ``concepts (N, 10)``, ``masks (N, 10, H, W)``.
    """
    n_per_class = check_int(n_per_class, "n_per_class", minimum=1)
    image_size = check_int(image_size, "image_size", minimum=MIN_IMAGE_SIZE, maximum=MAX_IMAGE_SIZE)
    seed = check_int(seed, "seed", minimum=0)
    split = check_choice(split, "split", SPLITS)
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True or False; got {progress!r}.")
    check_dataset_memory(n_per_class, len(CLASS_CONCEPTS), len(PARTS), image_size)
    if spurious is None:
        spurious = split != "test"
    elif not isinstance(spurious, (bool, np.bool_)):
        raise TypeError(f"`spurious` must be True, False or None; got {spurious!r}.")
    spurious = bool(spurious)

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))
    n_classes, n_concepts = len(CLASS_CONCEPTS), len(PARTS)
    n_images = n_classes * n_per_class
    labels = np.repeat(np.arange(n_classes), n_per_class)
    canvas = _backgrounds(n_images, image_size, rng)
    masks = np.zeros((n_images, n_concepts, image_size, image_size), dtype=bool)
    presence = np.zeros((n_images, n_concepts), dtype=np.float32)
    scale = image_size / 64.0

    part_range, cue_range = side_range(_PART_SIZE, image_size), side_range(_CUE_SIZE, image_size)
    for i in tqdm(range(n_images), desc=f"concept dataset ({split})", disable=not progress):
        label = int(labels[i])
        cue_rate = SPURIOUS_RATE_IN_CLASS if (spurious and label == SPURIOUS_CLASS) else SPURIOUS_RATE_ELSEWHERE
        shown = _draw_concepts(label, cue_rate, rng)
        ranges = [cue_range if k == SPURIOUS_CONCEPT else part_range for k in shown]
        sides = [int(rng.integers(low, high + 1)) for low, high in ranges]
        # Largest parts first: rejection sampling packs them more easily.
        order = np.argsort(sides, kind="stable")[::-1]
        shown = [shown[j] for j in order]
        boxes = _place_boxes([sides[j] for j in order], image_size,
                             [max(4, int(0.75 * ranges[j][0])) for j in order], rng)
        for k, (top, left, side) in zip(shown, boxes):
            footprint = draw_part(canvas[i], PARTS[k], top, left, side, scale, rng)
            masks[i, k, top:top + side, left:left + side] = footprint
            presence[i, k] = 1.0

    canvas += rng.standard_normal(size=canvas.shape, dtype=np.float32) * np.float32(_NOISE_STD)
    np.clip(canvas, 0.0, 1.0, out=canvas)
    images = torch.from_numpy(np.ascontiguousarray(canvas.transpose(0, 3, 1, 2), dtype=np.float32))
    return ConceptDataset(
        images=images,
        labels=torch.from_numpy(labels.astype(np.int64)),
        concepts=torch.from_numpy(presence),
        masks=torch.from_numpy(masks),
        concept_names=list(CONCEPT_NAMES),
        class_names=list(CLASS_NAMES),
        class_concepts=[list(pair) for pair in CLASS_CONCEPTS],
        distractor_concepts=list(DISTRACTOR_CONCEPTS),
        spurious_concept=SPURIOUS_CONCEPT,
        spurious_class=SPURIOUS_CLASS,
        spurious=spurious,
        split=split,
        seed=seed,
    )
