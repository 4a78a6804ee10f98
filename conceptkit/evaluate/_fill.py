"""What painted-out pixels are replaced with (the *fill*), and painting itself.

A part is removed from an image by replacing its pixels with the fill image's pixels:
``x' = x ⊙ (1 − m) + f(x) ⊙ m``. The fills:

- ``"median"`` — each image's own per-channel median colour (on images with a plain or
  textured background, the background colour: the part disappears into the background);
- ``"blur"`` — the image blurred with a Gaussian of standard deviation ``blur_sigma`` pixels
  (default: the image's longer side / 10; the kernel reaches ``ceil(3 sigma)`` pixels, at most
  the shorter side − 1, which the reflection at the borders needs): the part's texture goes and
  its colour is smeared into its surroundings, but its outline stays (only the part's pixels
  are replaced, next to the sharp background), so the model can still see its silhouette and
  blur measures less reliance than the median;
- ``"mean"`` — the mean colour of all the images evaluated (one colour per channel);
- ``"zero"`` — zeros (black in [0, 1] pixel space);
- a callable ``fill(images) -> (B, 3, H, W)`` tensor, called on batches of images in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from .._torchutils import gaussian_blur, median_colour
from .._validation import check_float, describe

FILLS = ("median", "blur", "mean", "zero")


class Fill:
    """A checked fill: call it on a batch ``(B, C, H, W)`` to get the replacement pixels."""

    def __init__(self, fill: Any, images: torch.Tensor, blur_sigma: float | None = None):
        if callable(fill):
            self.name = getattr(fill, "__name__", type(fill).__name__)
            self._user = fill
        elif isinstance(fill, str) and fill in FILLS:
            self.name = fill
            self._user = None
        else:
            raise ValueError(f"`fill` must be one of {list(FILLS)} or a callable "
                             f"fill(images) -> images; got {describe(fill)}.")
        if blur_sigma is not None and self.name != "blur":
            raise ValueError(f"`blur_sigma` is the width of the \"blur\" fill, but `fill` is "
                             f"{self.name!r}: pass fill=\"blur\" or leave `blur_sigma` out.")
        if self.name == "blur" and min(images.shape[-2:]) < 2:
            raise ValueError(f"`fill`=\"blur\" needs images of at least 2 x 2 pixels (the blur "
                             f"reflects at the borders); these are "
                             f"{images.shape[-2]} x {images.shape[-1]}: use fill=\"median\", "
                             f"\"mean\", \"zero\" or a callable.")
        side = max(images.shape[-2:])
        if blur_sigma is None:
            blur_sigma = side / 10.0
        self.blur_sigma = check_float(blur_sigma, "blur_sigma", minimum=0.0, strict_minimum=True)
        #: what was asked for, so that a later step (the deletion curves) can paint the same way
        self.setting = (fill, self.blur_sigma if self.name == "blur" else None)
        # The dataset mean is taken once over every image evaluated, not per batch.
        self._mean = images.float().mean(dim=(0, 2, 3)) if self.name == "mean" else None

    def describe(self) -> str:
        """The fill in words, as ``Reliance.fill`` records it (:meth:`parse` reads it back)."""
        if self.name != "blur":
            return self.name
        sigma = f"{self.blur_sigma:g}"
        if float(sigma) != self.blur_sigma:  # short where it reads back exactly, else every digit
            sigma = repr(self.blur_sigma)
        return f"blur (sigma {sigma} px)"

    @staticmethod
    def parse(described: Any) -> tuple | None:
        """``(fill, blur_sigma)`` from :meth:`describe`'s words; None for a callable's name."""
        if described in FILLS and described != "blur":
            return described, None
        match = re.fullmatch(r"blur \(sigma (\S+) px\)", str(described))
        return ("blur", float(match.group(1))) if match else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self._user is not None:
            out = self._user(images)
            if not isinstance(out, torch.Tensor) or out.shape != images.shape:
                raise ValueError(f"`fill` must return a tensor of the shape of its input "
                                 f"{tuple(images.shape)}; got {describe(out)}.")
            if not bool(torch.isfinite(out).all()):
                raise ValueError("`fill` returned NaN or Inf values.")
            return out.to(images)
        if self.name == "zero":
            return torch.zeros_like(images)
        if self.name == "mean":
            return self._mean.to(images)[None, :, None, None].expand_as(images)
        if self.name == "median":
            return median_colour(images).expand_as(images)  # lower middle value when even
        return gaussian_blur(images, self.blur_sigma)


def paint(images: torch.Tensor, regions: torch.Tensor, fill: Callable) -> torch.Tensor:
    """Images ``(B, C, H, W)`` with the pixels of ``regions`` ``(B, H, W)`` replaced by the fill."""
    regions = regions[:, None].to(images.device)
    return torch.where(regions, fill(images), images)
