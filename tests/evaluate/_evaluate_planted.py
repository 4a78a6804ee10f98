"""A world whose answers are known by construction, for the tests of conceptkit.evaluate.

Images: a grey background (0.2) with up to three pure-colour squares (red, green, blue), each in
its own quarter of the image, each present with probability 0.75. The model is a hand-built
conv net whose logit of class ``c`` is ``Σ_ch W[c, ch] · mean over pixels of x_ch + b_c``, so
painting a region ``R`` of an image with the fill ``f`` lowers the logit by exactly
``Σ_ch W[c, ch] · Σ_{px ∈ R} (x − f)_ch(px) / (H · W)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SIDE = 24
BACKGROUND = 0.2
COLOURS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
PART_NAMES = ("red square", "green square", "blue square")
#: Class 0 relies on red (3), green (1), not on blue; class 1 on blue (2) and green (1).
WEIGHTS = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
BIAS = np.array([0.1, -0.1])


def planted_images(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``images (n, 3, 24, 24)`` and ``masks (n, 3, 24, 24)``; every part shown in images 0..5
    (>= 3 of the even and of the odd ones) and absent from image 6."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 3, SIDE, SIDE), BACKGROUND)
    masks = np.zeros((n, 3, SIDE, SIDE), dtype=bool)
    present = rng.random((n, 3)) < 0.75
    present[:6] = True
    present[6, :] = False
    cells = ((0, 0), (0, 12), (12, 0))  # red top-left, green top-right, blue bottom-left
    for i in range(n):
        for p in range(3):
            if not present[i, p]:
                continue
            size = int(rng.integers(4, 8))
            top = cells[p][0] + int(rng.integers(0, 12 - size))
            left = cells[p][1] + int(rng.integers(0, 12 - size))
            masks[i, p, top:top + size, left:left + size] = True
            images[i, :, masks[i, p]] = np.asarray(COLOURS[p])
    return torch.tensor(images, dtype=torch.float32), torch.from_numpy(masks)


def planted_maps(masks: torch.Tensor) -> torch.Tensor:
    """Maps ``(n, 4, 24, 24)`` of four concepts: 0, 1, 2 sit on the red, green and blue squares,
    3 on the empty bottom-right quarter (background)."""
    m = masks.float()
    background = torch.zeros_like(m[:, 0])
    background[:, 14:, 14:] = 1.0
    return torch.stack([m[:, 0], m[:, 1], m[:, 2], background], 1)


class ColourMeanNet(nn.Module):
    """Logits ``W · (mean colour of the image) + b`` as a small conv net."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 3, kernel_size=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor(WEIGHTS, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor(BIAS, dtype=torch.float32))

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def closed_logits(images: np.ndarray) -> np.ndarray:
    """``(N, 2)`` logits of ColourMeanNet, computed in float64 numpy."""
    return images.mean(axis=(2, 3)) @ WEIGHTS.T + BIAS


def painted(images: np.ndarray, regions: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``images`` with ``regions (N, H, W)`` replaced by ``fill`` (broadcast to the images)."""
    fill = np.broadcast_to(fill, images.shape)
    return np.where(regions[:, None], fill, images)


def softmax_prob(logits: np.ndarray, class_id: int) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    return np.exp(z[:, class_id]) / np.exp(z).sum(1)


class PlantedExplanation:
    """An explanation whose maps and importances are planted; records how maps were asked for."""

    def __init__(self, maps, importances, class_id: int = 0, images=None):
        self.maps = torch.as_tensor(maps, dtype=torch.float32)
        self.importances = np.asarray(importances, dtype=np.float64)
        self.class_id = class_id
        self.images = images
        self.calls: list = []

    def concept_maps(self, images=None, kind: str = "auto"):
        self.calls.append(("fitted" if images is None else "new", kind))
        return self.maps.clone()
