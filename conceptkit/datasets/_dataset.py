"""The :class:`ConceptDataset` container: images with their ground-truth concepts."""

from __future__ import annotations

import copy
import numbers
import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .._validation import check_choice, check_int, describe


def copied_fields(dataset: ConceptDataset) -> dict[str, Any]:
    """The fields of ``dataset`` with its lists copied (names, class concepts, distractors), so
    that a dataset derived from it shares no list with it; tensors are left as they are."""
    return {f.name: copy.deepcopy(value) if isinstance(value, list) else value
            for f in fields(dataset) for value in (getattr(dataset, f.name),)}


@dataclass(frozen=True, eq=False, repr=False)
class ConceptDataset(torch.utils.data.Dataset):
    """Images whose concepts are known exactly, from :func:`make_concept_dataset` or a world.

    Indexing gives ``(image, label)`` pairs, so the dataset plugs into a ``DataLoader``.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 3, H, W)`` float32 in ``[0, 1]``.
    labels : torch.Tensor
        ``(N,)`` int64 class indices.
    concepts : torch.Tensor
        ``(N, n_concepts)`` float32, 1 where a concept part is drawn in the image, else 0.
    masks : torch.Tensor
        ``(N, n_concepts, H, W)`` bool, the visible pixels of each concept part.
    concept_names, class_names : list of str
        Short human-readable names (the concept names work as text prompts).
    class_concepts : list of list of int
        The causal concepts of each class: the class is defined by their joint presence (in the
        ``context`` world, by a spatial relation between them).
    distractor_concepts : list of int
        Concepts drawn independently of the class.
    spurious_concept, spurious_class : int
        The shortcut cue and the class it is correlated with when ``spurious`` is True; ``-1``
        in a world without a cue.
    spurious : bool
        Whether the cue is correlated with ``spurious_class`` in this dataset (always False in a
        world without a cue).
    split : str
        ``"train"``, ``"val"`` or ``"test"``.
    seed : int
        The seed the dataset was generated from.
    world : str
        The world that drew the images (``"shapes"`` for :func:`make_concept_dataset`; see
        :func:`conceptkit.datasets.load_world`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    concepts: torch.Tensor
    masks: torch.Tensor
    concept_names: list[str]
    class_names: list[str]
    class_concepts: list[list[int]]
    distractor_concepts: list[int]
    spurious_concept: int
    spurious_class: int
    spurious: bool
    split: str
    seed: int
    world: str = "shapes"

    def __post_init__(self) -> None:
        _check_fields(self)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        size = tuple(self.images.shape[2:])
        world = "" if self.world == "shapes" else f"world={self.world!r}, "
        return (f"ConceptDataset({world}split={self.split!r}, seed={self.seed}, n_images={len(self)}, "
                f"image_size={size}, n_classes={len(self.class_names)}, "
                f"n_concepts={len(self.concept_names)}, spurious={self.spurious})")

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def n_concepts(self) -> int:
        """Number of concepts."""
        return len(self.concept_names)

    def subset(self, indices: Any) -> ConceptDataset:
        """A new dataset holding only the images at ``indices`` (ints, a bool mask or a slice,
        negative steps included)."""
        if isinstance(indices, slice):
            try:  # a range takes every slice a list does, negative steps included
                index = torch.tensor(range(len(self))[indices], dtype=torch.long)
            except (TypeError, ValueError) as err:  # a step of 0, bounds that are not ints
                raise ValueError(f"`indices` as a slice must have int (or None) bounds and a "
                                 f"non-zero step; got {indices!r} ({err}).") from None
        else:
            array = np.asarray(indices)
            if array.ndim == 1 and array.size == 0:  # [] is float64 to numpy: no images
                array = array.astype(np.int64)
            index = torch.as_tensor(array)
            if index.dtype == torch.bool:
                if index.shape != (len(self),):
                    raise ValueError(f"`indices` as a boolean mask must have shape ({len(self)},); "
                                     f"got {tuple(index.shape)}.")
                index = index.nonzero().flatten()
            elif index.ndim != 1 or index.is_floating_point() or index.is_complex():
                raise TypeError(f"`indices` must be a 1-D sequence of ints, a boolean mask or a "
                                f"slice; got {describe(indices)}.")
            index = index.long()
            if index.numel() and (index.min() < -len(self) or index.max() >= len(self)):
                raise ValueError(f"`indices` must lie in [-{len(self)}, {len(self) - 1}]; got "
                                 f"values from {int(index.min())} to {int(index.max())}.")
        values = copied_fields(self)  # its own lists: editing them leaves this dataset as it is
        for name in ("images", "labels", "concepts", "masks"):
            values[name] = values[name][index]  # indexing with a tensor copies
        return ConceptDataset(**values)

    def class_indices(self, class_id: int) -> torch.Tensor:
        """Indices ``(n,)`` of the images of class ``class_id``."""
        class_id = check_int(class_id, "class_id", minimum=0, maximum=self.n_classes - 1)
        return (self.labels == class_id).nonzero().flatten()

    def summary(self) -> str:
        """A multi-line, human-readable description: classes, concept rates, the spurious cue."""
        has_cue = self.spurious_concept >= 0
        names = self.concept_names
        rule = ("by the joint presence of their causal concepts" if self.world != "context"
                else "by a relation between their causal concepts")
        lines = [repr(self), "", f"Classes (defined {rule}):"]
        for c, class_name in enumerate(self.class_names):
            causal = ", ".join(f"{k}:{names[k]}" for k in self.class_concepts[c])
            lines.append(f"  {c}: {class_name:<40s} n={int((self.labels == c).sum()):<5d} causal = {causal}")
        lines.append("")
        lines.append("Concept frequency per class (fraction of images showing the concept):")
        width = max(len(n) for n in names)
        lines.append("  " + " " * (width + 12) + " ".join(f"{c:>5d}" for c in range(self.n_classes)))
        rates = self.concept_rates()
        for k, name in enumerate(names):
            role = ("spurious" if has_cue and k == self.spurious_concept
                    else "distractor" if k in self.distractor_concepts else "causal")
            row = " ".join(f"{float(r):5.2f}" for r in rates[:, k])
            lines.append(f"  {name:<{width}s} {role:10s} {row}")
        if not has_cue:
            return "\n".join(lines)
        cue = rates[:, self.spurious_concept]
        others = [float(cue[c]) for c in range(self.n_classes) if c != self.spurious_class]
        lines.append("")
        lines.append(
            f"Spurious cue '{names[self.spurious_concept]}' (correlated: {self.spurious}): "
            f"{float(cue[self.spurious_class]):.2f} of class {self.spurious_class} "
            f"({self.class_names[self.spurious_class]}), "
            f"{(sum(others) / max(len(others), 1)):.2f} of the other classes."
        )
        return "\n".join(lines)

    def concept_rates(self) -> torch.Tensor:
        """``(n_classes, n_concepts)``: the fraction of each class's images showing each concept."""
        rates = torch.zeros(self.n_classes, self.n_concepts)
        for c in range(self.n_classes):
            rows = self.concepts[self.labels == c]
            if len(rows):
                rates[c] = rows.mean(0)
        return rates


SPLITS = ("train", "val", "test")


def _check_fields(data: ConceptDataset) -> None:
    """Refuse a :class:`ConceptDataset` whose parts do not fit together, naming the field."""
    tensors = {"images": torch.is_floating_point, "labels": _is_integer,
               "concepts": torch.is_floating_point, "masks": lambda t: t.dtype == torch.bool}
    kinds = {"images": "float", "labels": "integer", "concepts": "float", "masks": "bool"}
    for name, is_kind in tensors.items():
        value = getattr(data, name)
        if not isinstance(value, torch.Tensor) or not is_kind(value):
            raise TypeError(f"`{name}` must be a {kinds[name]} torch.Tensor; got "
                            f"{describe(value)}.")
    for name in ("concept_names", "class_names"):
        names = getattr(data, name)
        if (not isinstance(names, (list, tuple)) or not names
                or not all(isinstance(n, str) for n in names)):
            raise TypeError(f"`{name}` must be a non-empty list of str; got {describe(names)}.")
    n_classes, n_concepts = len(data.class_names), len(data.concept_names)
    images, labels = data.images, data.labels
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must have shape (N, 3, H, W); got {tuple(images.shape)}.")
    n, size = images.shape[0], tuple(images.shape[2:])
    expected = {"labels": (n,), "concepts": (n, n_concepts), "masks": (n, n_concepts, *size)}
    for name, shape in expected.items():
        if tuple(getattr(data, name).shape) != shape:
            raise ValueError(f"`{name}` must have shape {shape} (from `images` {tuple(images.shape)} "
                             f"and {n_concepts} concept names); got "
                             f"{tuple(getattr(data, name).shape)}.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"`labels` must lie in [0, {n_classes - 1}] ({n_classes} class names); "
                         f"got values from {int(labels.min())} to {int(labels.max())}.")

    def concept_index(value: Any, name: str, allow_none: bool = False) -> int:
        if allow_none and isinstance(value, numbers.Integral) and value == -1:
            return -1
        return check_int(value, name, minimum=0, maximum=n_concepts - 1)

    if not isinstance(data.class_concepts, (list, tuple)) or len(data.class_concepts) != n_classes:
        raise ValueError(f"`class_concepts` must be a list of {n_classes} lists of concept "
                         f"indices (one per class name); got {describe(data.class_concepts)}.")
    for parts in data.class_concepts:
        if not isinstance(parts, (list, tuple)):
            raise TypeError(f"`class_concepts` must hold lists of concept indices; got "
                            f"{describe(parts)}.")
        for k in parts:
            concept_index(k, "class_concepts")
    if not isinstance(data.distractor_concepts, (list, tuple)):
        raise TypeError(f"`distractor_concepts` must be a list of concept indices; got "
                        f"{describe(data.distractor_concepts)}.")
    for k in data.distractor_concepts:
        concept_index(k, "distractor_concepts")
    concept_index(data.spurious_concept, "spurious_concept", allow_none=True)
    if not (isinstance(data.spurious_class, numbers.Integral) and data.spurious_class == -1):
        check_int(data.spurious_class, "spurious_class", minimum=0, maximum=n_classes - 1)
    if not isinstance(data.spurious, (bool, np.bool_)):
        raise TypeError(f"`spurious` must be True or False; got {data.spurious!r}.")
    if (data.spurious_concept == -1) != (data.spurious_class == -1):
        raise ValueError(f"`spurious_concept` and `spurious_class` must both be -1 (no cue) or "
                         f"both name a concept and a class; got {data.spurious_concept} and "
                         f"{data.spurious_class}.")
    if data.spurious and data.spurious_concept == -1:
        raise ValueError("`spurious` must be False in a dataset without a cue "
                         "(`spurious_concept` -1).")
    check_choice(data.split, "split", SPLITS)
    check_int(data.seed, "seed", minimum=0)
    if not isinstance(data.world, str) or not data.world:
        raise TypeError(f"`world` must be the name of the world that drew the images; got "
                        f"{describe(data.world)}.")


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def check_dataset_memory(n_per_class: int, n_classes: int, n_parts: int, image_size: int) -> None:
    """Refuse, naming ``n_per_class``, a dataset that would not fit in this machine's memory.

    Drawing ``N`` images of side ``S`` holds a float32 canvas ``(N, S, S, 3)``, the noise added
    to it, the images ``(N, 3, S, S)`` and the boolean masks ``(N, P, S, S)`` at once: about
    ``N * S * S * (36 + P)`` bytes. More than the machine's physical memory fails deep in numpy
    (or gets the process killed), so it is refused before anything is drawn.
    """
    needed = n_per_class * n_classes * image_size * image_size * (36 + n_parts)
    total = _physical_memory()
    if total is not None and needed > total:
        raise ValueError(f"`n_per_class` {n_per_class} would draw {n_per_class * n_classes} "
                         f"images needing about {_size(needed)} of memory; this machine has "
                         f"{_size(total)}. Draw fewer images per class (in several calls with "
                         f"different seeds).")


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return None


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"  # pragma: no cover


def check_concept_dataset(dataset: Any, name: str = "dataset") -> ConceptDataset:
    """Return ``dataset`` if it is a :class:`ConceptDataset`, else raise naming ``name``."""
    if not isinstance(dataset, ConceptDataset):
        raise TypeError(f"`{name}` must be a ConceptDataset from make_concept_dataset; got "
                        f"{describe(dataset)}.")
    return dataset
