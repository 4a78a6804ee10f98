"""The :class:`ConceptDataset` container: images with their ground-truth concepts."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .._validation import check_int, describe


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
        """A new dataset holding only the images at ``indices`` (ints, a bool mask or a slice)."""
        if isinstance(indices, slice):
            index = torch.arange(len(self))[indices]
        else:
            index = torch.as_tensor(np.asarray(indices))
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
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("images", "labels", "concepts", "masks"):
            values[name] = values[name][index]
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


def check_concept_dataset(dataset: Any, name: str = "dataset") -> ConceptDataset:
    """Return ``dataset`` if it is a :class:`ConceptDataset`, else raise naming ``name``."""
    if not isinstance(dataset, ConceptDataset):
        raise TypeError(f"`{name}` must be a ConceptDataset from make_concept_dataset; got "
                        f"{describe(dataset)}.")
    return dataset
