"""What naming works on: the concepts (an explanation, or a bank with its model) and a probe set.

:class:`ConceptSource` hides the difference between a ``ClassConcepts`` (it knows its model,
preprocessing and map kind) and a bare :class:`~conceptkit.concepts.ConceptBank` handed with a
model. :class:`Probe` holds the probe images with whatever annotations exist: part masks (for
``"dissect"``), per-image part presence and class labels (for the trust score).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_images, check_int, describe
from ..concepts import ConceptBank
from ..extraction import ActivationExtractor
from ..extraction._windows import refuse_cls_concepts

SUMMARIES = ("mean", "max")


@dataclass(frozen=True)
class Probe:
    """Probe images and their annotations (any of them may be missing).

    ``masks (N, G, H, W)`` bool and ``part_names`` (G) for dissection; ``presence (N, G)`` bool,
    whether each named part is in each image; ``labels (N,)`` int and ``class_names`` for class
    labels.
    """

    images: torch.Tensor
    masks: torch.Tensor | None = None
    part_names: tuple[str, ...] = ()
    presence: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    rows: np.ndarray | None = None  # set by subset(): the rows of the probe it was taken from

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, rows: np.ndarray) -> Probe:
        index = torch.as_tensor(rows, dtype=torch.long)
        return Probe(self.images[index], None if self.masks is None else self.masks[index],
                     self.part_names, None if self.presence is None else self.presence[rows],
                     None if self.labels is None else self.labels[rows], self.class_names,
                     np.asarray(rows))

    def targets(self) -> dict[str, np.ndarray]:
        """Every name the probe can check, with the images that show it: ``{name: (N,) bool}``.

        Part names come first; a class name that equals a part name does not replace it.
        """
        out: dict[str, np.ndarray] = {}
        if self.presence is not None:
            for g, name in enumerate(self.part_names):
                out[name] = self.presence[:, g].astype(bool)
        if self.labels is not None:
            for c, name in enumerate(self.class_names):
                out.setdefault(name, self.labels == c)
        return out


def _checked_masks(masks: Any, images: torch.Tensor, name: str) -> torch.Tensor:
    """``(N, G, H, W)`` masks of 0/1 (or bool) values at the images' N, H and W, as bool."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if not isinstance(masks, torch.Tensor) or masks.ndim != 4 \
            or masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[2:]:
        raise ValueError(f"`{name}` must be (N, G, H, W) with the images' N, H and W "
                         f"{tuple(images.shape[:1]) + tuple(images.shape[2:])}; got "
                         f"{describe(masks)}.")
    if masks.dtype != torch.bool:
        values = masks.float()
        # .bool() would read NaN and every soft value as "in the part": each part would cover
        # every pixel and every score would be 0
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError(f"`{name}` must hold 0/1 (or bool) values; got values such as "
                             f"{float(values[(values != 0) & (values != 1)][0])}. Threshold "
                             f"soft masks first (e.g. masks > 0.5).")
    return masks.bool()


def _checked_names(names: Any, n: int, name: str) -> tuple[str, ...]:
    """One non-empty, distinct string per channel: a name is how a concept gets its part."""
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) != n \
            or not all(isinstance(x, str) for x in names):
        raise ValueError(f"`{name}` must list one string per mask channel ({n}); got "
                         f"{describe(names)}.")
    if not all(x.strip() for x in names):
        raise ValueError(f"`{name}` has an empty name; every part needs one.")
    # "a" and "a " are one name to a reader: compared without the spaces around them
    stripped = [x.strip() for x in names]
    repeated = sorted({x for x in stripped if stripped.count(x) > 1})
    if repeated:
        raise ValueError(f"`{name}` names {repeated} more than once (spaces around a name "
                         f"aside): a concept named so could not say which part it found (and "
                         f"its trust would be another part's).")
    return tuple(names)


def as_probe(probe: Any, name: str = "probe", *, need_masks: bool = False) -> Probe:
    """Accept a ConceptDataset (duck-typed), a ``(images, masks, names)`` tuple or bare images."""
    if isinstance(probe, Probe):
        return probe
    if all(hasattr(probe, a) for a in ("images", "masks", "concept_names", "labels")):
        images = check_images(probe.images, f"{name}.images", channels=3, pixels=True)
        masks = _checked_masks(probe.masks, images, f"{name}.masks")
        names = _checked_names(list(map(str, probe.concept_names)), masks.shape[1],
                               f"{name}.concept_names")
        presence = masks.flatten(2).any(-1).numpy()
        if getattr(probe, "concepts", None) is not None:
            presence = torch.as_tensor(probe.concepts).numpy() >= 0.5
        labels = torch.as_tensor(probe.labels)
        if labels.shape != (images.shape[0],) or labels.is_floating_point():
            raise ValueError(f"`{name}.labels` must hold one integer class per image "
                             f"({images.shape[0]}); got {describe(labels)}.")
        class_names = tuple(map(str, getattr(probe, "class_names", ())))
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"`{name}.class_names` names a class more than once.")
        return Probe(images, masks, names, presence, labels.long().numpy(), class_names)
    if isinstance(probe, (tuple, list)) and len(probe) == 3:
        images = check_images(probe[0], f"{name}[0] (images)", channels=3, pixels=True)
        masks = _checked_masks(probe[1], images, f"{name}[1] (masks)")
        names = _checked_names(probe[2], masks.shape[1], f"{name}[2] (names)")
        return Probe(images, masks, names, masks.flatten(2).any(-1).numpy())
    if need_masks:
        raise TypeError(f"`{name}` must be a ConceptDataset (e.g. make_concept_dataset(...)) or a "
                        f"tuple (images (N, 3, H, W), masks (N, G, H, W), names [G]); got "
                        f"{describe(probe)}.")
    # colours in [0, 1] (CLIP and the maps read them as such): said of `probe`, not later
    return Probe(check_images(probe, name, channels=3, pixels=True))


class ConceptSource:
    """Concept maps and activations of images, for an explanation or a bank with its model."""

    def __init__(self, concepts: Any, model: nn.Module | None = None, *,
                 preprocess: Callable | None = None, batch_size: int = 64,
                 progress: bool = False) -> None:
        self.result = None
        if isinstance(concepts, ConceptBank):
            self.bank = concepts
            if model is not None and not isinstance(model, nn.Module):
                raise TypeError(f"`model` must be a torch.nn.Module; got {describe(model)}.")
            self.model = model
            self.preprocess = preprocess
        elif hasattr(concepts, "bank") and hasattr(concepts, "concept_maps"):
            self.result = concepts  # a ClassConcepts: it knows its model and map kind
            self.bank = concepts.bank
            explainer = getattr(concepts, "model_at_layer", None)
            if model is not None:
                raise ValueError("`model` is only for a bare ConceptBank; an explanation uses its "
                                 "own model (re-attach one with `attach(model)`).")
            self.model = None if explainer is None else explainer.model
            self.preprocess = None if explainer is None else explainer.preprocess
        else:
            raise TypeError(f"`concepts` must be a ClassConcepts or a ConceptBank (with `model`); "
                            f"got {describe(concepts)}.")
        if self.result is None:  # a bare bank: its layer's patch tokens would be encoded
            refuse_cls_concepts(self.bank, "naming a ConceptBank with its model")
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.progress = bool(progress)

    @property
    def n_concepts(self) -> int:
        return self.bank.n_concepts

    @property
    def class_id(self) -> int | None:
        return None if self.result is None else int(self.result.class_id)

    def require_model(self, what: str) -> nn.Module:
        if self.model is None:
            if self.result is not None:
                raise ValueError(f"{what} needs the model, and this explanation was loaded from "
                                 f"disk without it: call `attach(model)` first.")
            raise ValueError(f"{what} needs the model: pass `model=` with a ConceptBank.")
        return self.model

    def activations(self, images: torch.Tensor) -> torch.Tensor:
        """Feature maps ``(N, C, h, w)`` (or ``(N, C)``) of ``images`` at the bank's layer."""
        if self.result is not None and self.result.model_at_layer is not None:
            return self.result.model_at_layer.activations(images, progress=self.progress)
        model = self.require_model("computing activations of probe images")
        return ActivationExtractor(model, self.bank.layer, batch_size=self.batch_size,
                                   progress=self.progress, preprocess=self.preprocess)(images)

    def crop_codes(self, crop_set: Any) -> np.ndarray:
        """Concept codes ``(M, k)`` of crops: ``g`` on each resized crop, spatial mean, encode
        (exactly how CRAFT's own crops were coded)."""
        refuse_cls_concepts(self.bank, "coding crops")
        if self.result is not None and self.result.model_at_layer is not None:
            explainer = self.result.model_at_layer
            extractor = ActivationExtractor(explainer.model, self.bank.layer,
                                            batch_size=explainer.batch_size, device=explainer.device,
                                            progress=self.progress, reduce="mean",
                                            preprocess=explainer.preprocess)
        else:
            model = self.require_model("concept codes of probe crops")
            extractor = ActivationExtractor(model, self.bank.layer, batch_size=self.batch_size,
                                            progress=self.progress, reduce="mean",
                                            preprocess=self.preprocess)
        acts = extractor(crop_set)
        return torch.as_tensor(self.bank.encode(acts.detach().cpu().float())).double().numpy()

    def spatial(self, images: torch.Tensor) -> bool:
        """Whether the bank's layer gives feature maps ``(N, C, h, w)`` (so concepts have maps)."""
        if self.result is not None and self.result.activations is not None:
            return self.result.activations.ndim == 4
        return self.activations(images[:1]).ndim == 4

    def crop_map_means(self, images: torch.Tensor, crop_set: Any, kind: str = "coefficient",
                       batch_size: int = 64) -> np.ndarray:
        """Concept activations ``(M, k)`` of crops read from the whole images' maps: the mean of
        each concept's map (computed on the probe image, at the scale the concept was found)
        over the crop's box."""
        prov = crop_set.provenance
        ids = np.asarray(prov.image_ids)
        out = np.zeros((len(ids), self.n_concepts))
        for start in range(0, images.shape[0], batch_size):
            stop = min(start + batch_size, images.shape[0])
            maps = self.maps(images[start:stop], kind=kind).double()
            for row in np.flatnonzero((ids >= start) & (ids < stop)):
                y0, x0, y1, x1 = (int(v) for v in prov.boxes[row])
                out[row] = maps[ids[row] - start, :, y0:y1, x0:x1].mean((-2, -1)).numpy()
        return out

    def maps(self, images: torch.Tensor, kind: str = "coefficient") -> torch.Tensor:
        """Concept maps ``(N, k, H, W)`` at the images' size (``kind``: a map kind of
        ``ClassConcepts.concept_maps``; ``"auto"``: the explanation's default; a bare bank has
        coefficient maps)."""
        if kind == "provenance":  # the result's message ("pass images=None") is not for naming
            raise ValueError("`kind`='provenance' maps exist only for the explanation's own fitted "
                             "images (its crops' codes painted back), not for probe images; "
                             "name with a kind computed from any image: kind='coefficient' (the "
                             "default), 'auto', 'dominant', 'gradient', 'pixel' or "
                             "'scale_matched'.")
        if self.result is not None:
            self.require_model("concept maps of probe images")
            return self.result.concept_maps(images, kind=kind).float()
        if kind not in ("auto", "coefficient"):
            raise ValueError(f"`kind` {kind!r} needs a ClassConcepts; a ConceptBank with its model "
                             f"gives coefficient maps only (kind='auto' or 'coefficient').")
        from ..maps import coefficient_maps

        acts = self.activations(images)
        if acts.ndim != 4:
            raise ValueError(f"concept maps need spatial activations (N, C, h, w) at layer "
                             f"{self.bank.layer!r}; got shape {tuple(acts.shape)}.")
        return coefficient_maps(acts, self.bank, tuple(images.shape[-2:])).float()

    def summaries(self, images: torch.Tensor, summary: str = "mean",
                  maps: torch.Tensor | None = None, kind: str = "coefficient") -> np.ndarray:
        """One activation per image and concept ``(N, k)``: the spatial mean or max of its map
        of ``kind`` (the image-level codes when the layer has no spatial axes)."""
        if maps is None:
            flat_layer = (self.result is not None and self.result.activations is not None
                          and self.result.activations.ndim == 2)
            if self.result is None:
                acts = self.activations(images)
                if acts.ndim == 2:
                    flat_layer = True
                else:
                    from ..maps import coefficient_maps

                    maps = coefficient_maps(acts, self.bank).float()
            if flat_layer:
                acts = self.activations(images)
                return torch.as_tensor(self.bank.encode(acts.detach().cpu().float())).double().numpy()
            if maps is None:
                maps = self.maps(images, kind)
        flat = maps.flatten(2)
        values = flat.mean(-1) if summary == "mean" else flat.amax(-1)
        return values.double().numpy()


@dataclass(frozen=True)
class CropProbe:
    """Square crops of probe images (CRAFT's decomposition), with what the probe knows of them.

    ``crops`` resizes to the model's input for the activations; ``raw`` keeps each crop at its own
    size for CLIP. A part counts as present in a crop when at least ``min_part_share`` of its
    pixels in that image lie inside the crop.
    """

    crops: Any                      # extraction.CropSet, resized to the image size
    raw: Any                        # the same crops at their own size
    targets: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.crops)


def crop_probe(probe: Probe, patch_size: int, stride: int | None = None,
               min_part_share: float = 0.5) -> CropProbe:
    """Cut the probe images into crops and carry their part presence and class labels."""
    from ..extraction import crops

    crop_set = crops(probe.images, patch_size, stride)
    raw = crops(probe.images, patch_size, crop_set.stride, image_size=patch_size)
    prov = crop_set.provenance
    ids = prov.image_ids
    targets: dict[str, np.ndarray] = {}
    if probe.masks is not None:
        masks = probe.masks
        total = masks.flatten(2).sum(-1).double()                               # (N, G)
        inside = torch.stack([masks[i, :, y0:y1, x0:x1].flatten(1).sum(-1)
                              for i, (y0, x0, y1, x1) in zip(ids, prov.boxes)]).double()
        share = (inside / total[torch.as_tensor(ids)].clamp_min(1)).numpy()
        for g, name in enumerate(probe.part_names):
            targets[name] = share[:, g] >= min_part_share
    if probe.labels is not None:
        for c, name in enumerate(probe.class_names):
            targets.setdefault(name, probe.labels[ids] == c)
    return CropProbe(crop_set, raw, targets)
