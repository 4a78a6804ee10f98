"""What a model comes with: :class:`ModelBundle` (model, preprocessing, class names, layer)
and :class:`Normalize`. Imports nothing but torch, so the pipeline can take bundles without
reaching the model loaders (and the datasets they use)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._reprs import dataclass_repr

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelBundle:
    """A model ready to explain, as :func:`load` returns it.

    Attributes
    ----------
    model : nn.Module
        The classifier (or visual tower), in eval mode.
    name : str
        The name shown in reports.
    input_size : int
        The image side the model expects, in pixels.
    preprocess : callable or None
        Applied to image batches in [0, 1] before the model (normalisation).
    class_names : list of str
        Output names (empty when unknown).
    layer : str or None
        A sensible default layer to explain (None when unknown).
    """

    model: nn.Module
    name: str
    input_size: int
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None
    class_names: list[str] = field(default_factory=list)
    layer: str | None = None


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for image batches in [0, 1]."""

    def __init__(self, mean: Any, std: Any):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)


def from_pretrained(pretrained: Any) -> ModelBundle:
    """The bundle of :func:`conceptkit.datasets.efficientnet_lite0`'s object (model, mean/std,
    labels, input size), explained at ``bn2``, its last feature map before pooling."""
    return ModelBundle(pretrained.model, "EfficientNet-Lite0 (ImageNet)", int(pretrained.input_size),
                       Normalize(pretrained.mean, pretrained.std), list(pretrained.labels), "bn2")


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
ModelBundle.__repr__ = dataclass_repr  # type: ignore[method-assign]
