"""Images too small for a model: find the smallest size it accepts and say so.

A convolutional network fails on tiny inputs deep inside torch ("Output size is too small",
"Kernel size can't be greater than actual input size"). When a forward pass fails that way,
:func:`too_small_error` probes the model with blank single images of growing square sizes
(doubling, then bisection: about twenty passes of one image, on the error path only) and returns
an error that names the argument, the images' size and the smallest size that runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._layers import enclosing_modules

_SIZE_MESSAGES = ("output size is too small", "kernel size can't be greater",
                  "input size per channel", "padding size should be less",
                  "expected input with shape", "doesn't match model", "input image size",
                  "divisible by patch size")
_LIMIT = 4096


class ImageSizeError(ValueError):
    """Images of a size the model does not take: too small for it, or not the one size it takes
    (a ``ValueError``; the message names the argument, the size, and the smallest size that runs
    when there is one)."""


def is_size_error(err: BaseException) -> bool:
    """Whether ``err`` is torch's complaint about an input too small for a layer."""
    text = str(err).lower()
    return isinstance(err, (RuntimeError, ValueError, AssertionError)) and any(
        message in text for message in _SIZE_MESSAGES)


def _runs(run: Callable[[torch.Tensor], object], template: torch.Tensor, side: int) -> bool:
    blank = torch.zeros((1, template.shape[1], side, side), dtype=template.dtype,
                        device=template.device)
    try:
        with torch.no_grad():
            run(blank)
    except Exception as err:  # noqa: BLE001 - any failure at this size counts as "does not run"
        if is_size_error(err):
            return False
        raise
    return True


def minimum_side(run: Callable[[torch.Tensor], object], template: torch.Tensor) -> int | None:
    """The smallest square side (up to 4096) at which ``run`` accepts one blank image shaped
    like ``template`` (N, C, H, W); None when no size up to the limit runs."""
    low = max(int(min(template.shape[-2:])), 1)  # the shorter side is known to be too small
    high = low
    try:
        while True:
            high = min(2 * high, _LIMIT)
            if _runs(run, template, high):
                break
            if high >= _LIMIT:
                return None
            low = high
        while high - low > 1:
            middle = (low + high) // 2
            if _runs(run, template, middle):
                high = middle
            else:
                low = middle
    except Exception:  # noqa: BLE001 - another failure while probing: no size to report
        return None
    return high


def too_small_error(err: BaseException, run: Callable[[torch.Tensor], object],
                    images: torch.Tensor, name: str, what: str) -> ImageSizeError:
    """An :class:`ImageSizeError` naming ``name``, the images' size and the smallest size ``what``
    accepts (or that no larger size runs)."""
    height, width = (int(s) for s in images.shape[-2:])
    cause = f"{type(err).__name__}: {str(err).rstrip('.')}"
    patch = re.search(r"divisible by patch size \((\d+)", str(err))
    if patch:  # timm's patch embedding: not a minimum, a multiple (probing would mislead)
        step = int(patch.group(1))
        sizes = sorted({max(step, side // step * step) for side in (height, width)}
                       | {-(-side // step) * step for side in (height, width)})
        return ImageSizeError(
            f"`{name}` of {height}x{width} pixels do not fit {what}: {cause}. Its patch "
            f"embedding takes image sides that are multiples of {step} pixels: crop or resize "
            f"the images to such a size (e.g. {' or '.join(f'{s}x{s}' for s in sizes[:2])}), or "
            f"build the timm model with dynamic_img_pad=True.")
    side = minimum_side(run, images)
    if side is None:  # no larger size runs: not "too small", the model takes some other size
        return ImageSizeError(
            f"`{name}` of {height}x{width} pixels do not fit {what}: {cause}. No square size "
            f"from {min(height, width)} to {_LIMIT} pixels runs either: the model may take one "
            f"fixed input size (a transformer with a fixed position embedding); resize the "
            f"images to the size it was built for.")
    return ImageSizeError(f"`{name}` of {height}x{width} pixels are too small for {what}: {cause}. "
                      f"It runs on images of at least {side}x{side} pixels; resize the images "
                      f"(CRAFT crops and ACE segments are resized to the image size, so "
                      f"`patch_size` must be at most the image side and does not change this "
                      f"minimum).")


def model_patch_grid(model: nn.Module, layer: str | None = None) -> tuple[int, int] | None:
    """The fixed patch grid ``(rows, cols)`` of the transformer that holds ``layer``, when the
    model says it: timm's ``patch_embed.grid_size`` (not with ``dynamic_img_size``, whose grid
    follows the images), open_clip's ``grid_size``, torchvision's ``image_size // patch_size``.
    Read from the deepest module around ``layer`` (the whole model without it) that says; None
    when none does."""
    found = _fixed_patching(model, layer)
    return None if found is None else found[0]


def model_input_size(model: nn.Module, layer: str | None = None) -> tuple[int, int] | None:
    """The one input size ``(height, width)`` of a transformer with a fixed patch grid
    (:func:`model_patch_grid`), when the model says it; None otherwise."""
    found = _fixed_patching(model, layer)
    return None if found is None else found[1]


def _fixed_patching(model: nn.Module, layer: str | None) -> tuple[tuple[int, int], Any] | None:
    around = list(model.modules()) if layer is None else enclosing_modules(model, layer)
    for module in around:
        for source in (module, getattr(module, "patch_embed", None)):
            found = _fixed_grid(source)
            if found is not None:
                return found
    return None


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return int(value[0]), int(value[1])
    return None


def _fixed_grid(module: Any) -> tuple[tuple[int, int], Any] | None:
    """``(grid, input size or None)`` of a module that lays patches on a fixed grid."""
    if not isinstance(module, nn.Module):
        return None
    size = _pair(getattr(module, "img_size", None)) or _pair(getattr(module, "image_size", None))
    grid = getattr(module, "grid_size", None)
    if isinstance(grid, (tuple, list)):  # timm's PatchEmbed, open_clip's VisionTransformer
        grid = _pair(tuple(grid))
        # timm's PatchEmbed takes other sizes when not strict (dynamic_img_size / _pad)
        if grid is None or not getattr(module, "strict_img_size", True) or getattr(
                module, "dynamic_img_pad", False):
            return None
        return grid, size
    patch = getattr(module, "patch_size", None)
    if (hasattr(module, "class_token") and size is not None and isinstance(patch, int)
            and patch > 0 and size[0] % patch == 0):  # torchvision's VisionTransformer
        return (size[0] // patch, size[1] // patch), size
    return None


def size_error(err: BaseException, run: Any, images: torch.Tensor, name: str, what: str,
               model: nn.Module) -> ImageSizeError:
    """The :class:`ImageSizeError` for ``images`` that ``model`` refused by their size
    (:func:`~conceptkit.extraction._sizes.too_small_error`), naming the one input size of a
    transformer with a fixed patch grid when the model says it. A non-square size is named
    outright: probing square sizes would only find that none runs."""
    size = model_input_size(model)
    have = (int(images.shape[-2]), int(images.shape[-1]))
    if size is not None and have != size and size[0] != size[1]:
        return ImageSizeError(
            f"`{name}` of {have[0]}x{have[1]} pixels do not fit {what}: {type(err).__name__}: "
            f"{str(err).rstrip('.')}. The model takes images of {size[0]}x{size[1]} pixels "
            f"(height x width) only, a transformer with a fixed non-square patch grid: resize "
            f"the images to {size[0]}x{size[1]} pixels, not to a square.")
    error = too_small_error(err, run, images, name, what)
    if size is not None and have != size:
        error = ImageSizeError(f"{error} The model was built for images of {size[0]}x{size[1]} "
                               f"pixels.")
    return error
