"""Counterfactual images: the same images with one more non-causal concept drawn in."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from .._validation import check_int, make_rng
from ._dataset import ConceptDataset, check_concept_dataset, copied_fields
from ._generate import _CUE_SIZE, _NOISE_STD, _PART_SIZE, side_range
from ._parts import PARTS, draw_part


def _free_corners(occupied: np.ndarray, side: int) -> np.ndarray:
    """Top-left corners ``(n, 2)`` of every ``side`` box keeping a 1 px gap to ``occupied``."""
    blocked = ndimage.binary_dilation(occupied, structure=np.ones((3, 3), dtype=bool))
    table = np.zeros((blocked.shape[0] + 1, blocked.shape[1] + 1), dtype=np.int32)
    table[1:, 1:] = blocked.cumsum(0).cumsum(1)
    inside = (table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side])
    return np.argwhere(inside == 0)


def add_concept(dataset: ConceptDataset, concept: int, seed: int = 0,
                progress: bool = False) -> ConceptDataset:
    """A copy of ``dataset`` with a distractor or the spurious cue drawn into every image lacking it.

    The part goes to a random free spot (a 1 px gap from every other part), with the same size
    range, colour jitter and pixel noise as in generated images, and is recorded in ``concepts``
    and ``masks``. An image with no free spot large enough keeps its pixels, so
    ``concepts[:, concept]`` tells which images show the concept afterwards. Causal concepts are
    refused: drawing one could complete the definition of another class and make labels wrong.

    Parameters
    ----------
    dataset : ConceptDataset
        Images from :func:`make_concept_dataset`.
    concept : int
        Index of a distractor concept or of the spurious cue.
    seed : int
        Seed for the part sizes and positions.
    progress : bool
        Show a progress bar.
    """
    dataset = check_concept_dataset(dataset)
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True or False; got {progress!r}.")
    if dataset.world != "shapes":
        raise ValueError(f"`dataset` must come from make_concept_dataset (the shapes world); got "
                         f"images of the {dataset.world!r} world, whose parts add_concept cannot draw.")
    allowed = [*dataset.distractor_concepts, dataset.spurious_concept]
    concept = check_int(concept, "concept", minimum=0, maximum=dataset.n_concepts - 1)
    if concept not in allowed:
        raise ValueError(f"`concept` must be a distractor or the spurious cue ({allowed}); got "
                         f"{concept} ({dataset.concept_names[concept]!r}), a causal concept.")
    rng = make_rng(seed)
    images = dataset.images.permute(0, 2, 3, 1).numpy().copy()
    masks = dataset.masks.numpy().copy()
    concepts = dataset.concepts.numpy().copy()
    image_size = images.shape[1]
    low, high = side_range(_CUE_SIZE if concept == dataset.spurious_concept else _PART_SIZE, image_size)
    occupied = masks.any(axis=1)
    missing = np.flatnonzero(concepts[:, concept] == 0)
    for i in tqdm(missing, desc=f"adding {dataset.concept_names[concept]!r}", disable=not progress):
        side = int(rng.integers(low, high + 1))
        corners = _free_corners(occupied[i], side)
        if len(corners) == 0:
            continue
        top, left = (int(v) for v in corners[rng.integers(len(corners))])
        footprint = draw_part(images[i], PARTS[concept], top, left, side, image_size / 64.0, rng)
        box = images[i, top:top + side, left:left + side]
        noise = rng.standard_normal(size=(int(footprint.sum()), 3), dtype=np.float32)
        box[footprint] = np.clip(box[footprint] + noise * np.float32(_NOISE_STD), 0.0, 1.0)
        masks[i, concept, top:top + side, left:left + side] = footprint
        concepts[i, concept] = 1.0
    # a new dataset sharing nothing with ``dataset``: its labels and lists are copies
    return dataclasses.replace(dataset, **{
        **copied_fields(dataset),
        "images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        "labels": dataset.labels.clone(),
        "masks": torch.from_numpy(masks),
        "concepts": torch.from_numpy(concepts),
    })
