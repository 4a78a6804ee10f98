"""Channels-last feature maps: a layer whose 4-D output is ``(N, H, W, C)``, not ``(N, C, H, W)``.

Swin transformers (torchvision's ``features.*``, timm's ``layers.*``) and timm ViTs built with
``dynamic_img_size=True`` (``patch_embed``) hand on channels-last maps. Read as ``(N, C, h, w)``
their concepts would be factorized along a spatial axis, silently. Shapes alone cannot tell
(a 4 x 4 map of 4 channels reads both ways), so the layout is read from the model: the last
channel-bearing leaf module run before the layer's output (:func:`conceptkit._torchutils.
channel_leaf`) says how many channels there are and on which axis it put them. The maps are
channels-last only when that count sits on the last axis of the output and not on axis 1,
and — for a convolution or batch norm, which put channels first — when the output is exactly
that leaf's output moved channels-last. Ordinary CNN maps (a convolution or norm giving axis 1
the channels, ConvNeXt blocks whose linear layers are permuted back) are never flagged.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def is_channels_last(shape: tuple[int, ...], evidence: Any) -> bool:
    """Whether a 4-D output of ``shape`` holds channels-last maps, given what the last
    channel-bearing leaf said (``(axis, channels, leaf_shape)`` or None: no evidence, False)."""
    if evidence is None or len(shape) != 4:
        return False
    axis, channels, leaf_shape = evidence
    if shape[-1] != channels or shape[1] == channels:
        return False
    if axis == "last":
        return True
    # a convolution's (N, C, H, W) output moved channels-last (timm's patch_embed with NHWC)
    return len(leaf_shape) == 4 and tuple(shape[1:]) == (leaf_shape[2], leaf_shape[3],
                                                         leaf_shape[1])


def _permute_layers(model: nn.Module) -> list[str]:
    """Modules of ``model`` that move channels-last maps back to (N, C, H, W): torchvision's
    ``Permute([0, 3, 1, 2])`` (the ``permute`` layer of its Swin transformers)."""
    return [name for name, module in model.named_modules()
            if type(module).__name__ == "Permute" and list(getattr(module, "dims", [])) == [0, 3, 1, 2]]


def channels_last_error(model: nn.Module, layer: str, shape: tuple[int, ...]) -> ValueError:
    """The error for ``layer`` giving channels-last maps of ``shape``, naming what to do."""
    n, height, width, channels = shape
    permutes = _permute_layers(model)
    if permutes:
        fix = (f" The model moves its maps to (N, C, H, W) at {permutes[-1]!r}: explain there "
               f"(layer={permutes[-1]!r}), or at another layer that gives (N, C, H, W) maps or "
               f"transformer tokens (N, T, C).")
    else:
        fix = (" Explain at a layer that gives (N, C, H, W) maps or transformer tokens (N, T, C) "
               "instead (for a timm ViT built with dynamic_img_size=True: a block, "
               "e.g. 'blocks.5', not 'patch_embed').")
    return ValueError(
        f"`layer` {layer!r} gives channels-last maps (N, H, W, C) = {tuple(shape)}: its last "
        f"axis ({channels}) holds the channels, while conceptkit reads feature maps as "
        f"(N, C, H, W) and would find concepts along a spatial axis.{fix} "
        f"(ActivationExtractor and extract return the output as it is with tokens='raw'.)")
