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

import torch

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
