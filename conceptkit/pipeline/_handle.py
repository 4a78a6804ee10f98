"""A model seen at one layer: what an explanation needs to run the model again.

:class:`ModelAtLayer` holds the model, the layer, the preprocessing and the batching settings,
splits the model into ``g``/``h`` once, and remembers whether the layer outputs transformer tokens
(so that ``h`` can be fed feature maps). The explainer builds one and hands it to the results it
returns; a loaded explanation gets one from :meth:`~conceptkit.ClassConcepts.attach`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..extraction import ActivationExtractor, TokenHead, get_layer, split_model


class ModelAtLayer:
    """``model`` cut at ``layer``, with the settings used to run it.

    Parameters
    ----------
    model, layer
        The classifier and the dotted name of the layer explained.
    preprocess
        Callable applied to image batches (in [0, 1]) before the model.
    batch_size, device, progress
        Batching of ``g``, where to run (None: the model's device), progress bars.
    """

    def __init__(self, model: nn.Module, layer: str, *, preprocess: Callable | None = None,
                 batch_size: int = 64, device: Any = None, progress: bool = True):
        self.model = model
        self.layer, _ = get_layer(model, layer)
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.token_layout: str | None = None  # "NTC"/"TNC" once the layer gave transformer tokens
        self._h: nn.Module | None = None

    @property
    def h(self) -> nn.Module:
        """The part of the model after the layer (activations → logits), split once."""
        if self._h is None:
            _, self._h = split_model(self.model, self.layer)
        return self._h

    @property
    def maps_head(self) -> nn.Module:
        """``h`` taking feature maps: for transformer layers a :class:`TokenHead` that puts each
        input's CLS/register tokens (its ``context``) back in front of the patch tokens."""
        return TokenHead(self.h, self.token_layout) if self.token_layout else self.h

    def activations(self, images: torch.Tensor, with_context: bool = False, *,
                    progress: bool | None = None) -> Any:
        """Feature maps ``(N, C, h, w)`` of ``images`` at the layer (one pass of ``g``).

        Transformer tokens come back as maps of the patch tokens; with ``with_context=True`` the
        dropped CLS/register tokens ``(N, P, C)`` (or None) are returned too.
        """
        extractor = ActivationExtractor(
            self.model, self.layer, batch_size=self.batch_size, device=self.device,
            progress=self.progress if progress is None else progress, preprocess=self.preprocess)
        maps = extractor(images)
        if extractor.prefix_ is not None:
            self.token_layout = extractor.token_layout_
        return (maps, extractor.prefix_) if with_context else maps

    def __repr__(self) -> str:
        return f"ModelAtLayer(model={type(self.model).__name__}, layer={self.layer!r})"
