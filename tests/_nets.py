"""Small CNNs shared by several test modules (pytest puts this folder on ``sys.path``)."""

import torch
from torch import nn


def two_block_cnn() -> nn.Sequential:
    """Conv blocks `block1` (16 ch, pooled) and `block2` (24 ch) -> GAP -> Linear(24, 4), eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("block1", nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
    model.add_module("block2", nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(24, 4))
    return model.eval()
