"""Small architectures trained on the ground-truth worlds: a residual network and a ViT.

Both take images in ``[0, 1]`` (no normalisation), shape ``(N, 3, 64, 64)``. The reference CNN of
the shapes world lives in :mod:`._reference`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._deprecation import current_names, renamed_arguments
from .._validation import check_int

ARCHITECTURES = ("cnn", "resnet", "vit")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip connection: ``relu(f(x) + shortcut(x))``.

    The shortcut is the identity, or a strided 1x1 convolution with batch norm when the block
    changes the width or the resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small residual network: a stem, three stages of :class:`BasicBlock`, pool, linear head.

    ``forward(x)`` is ``fc(flatten(pool(layer3(layer2(layer1(stem(x)))))))``, so the model can be
    cut between stages (the skip connections stay inside a stage). For a 64 px input the stages
    output 32, 16 and 8 px maps of ``width``, ``2 * width`` and ``4 * width`` channels; every
    stage ends in a ReLU, so its activations are non-negative.

    Parameters
    ----------
    n_classes : int
        Number of output logits.
    width : int
        Channels of the stem and ``layer1``.
    n_blocks : int
        Residual blocks per stage.
    """

    def __init__(self, n_classes: int = 4, width: int = 16, n_blocks: int = 1) -> None:
        super().__init__()
        n_classes = check_int(n_classes, "n_classes", minimum=2)
        width = check_int(width, "width", minimum=1)
        n_blocks = check_int(n_blocks, "n_blocks", minimum=1)
        self.n_classes, self.width, self.n_blocks = n_classes, width, n_blocks
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())

        def stage(in_channels: int, out_channels: int) -> nn.Sequential:
            blocks = [BasicBlock(in_channels, out_channels, stride=2)]
            blocks += [BasicBlock(out_channels, out_channels) for _ in range(n_blocks - 1)]
            return nn.Sequential(*blocks)

        self.layer1 = stage(width, width)
        self.layer2 = stage(width, 2 * width)
        self.layer3 = stage(2 * width, 4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x)))))))


#: Old names of :func:`small_vit`'s arguments, as records of saved world models (the shipped
#: ViT weights included) and the world training specs still spell them: read silently.
VIT_RENAMED = {"num_heads": "n_heads"}


@renamed_arguments(**VIT_RENAMED)
def small_vit(n_classes: int = 4, embed_dim: int = 96, depth: int = 6, n_heads: int = 4,
              patch_size: int = 8, mlp_ratio: float = 2.0, image_size: int = 64) -> nn.Module:
    """A small timm ``VisionTransformer`` with a CLS token and a CLS-pooled head.

    ``n_heads`` attention heads per block (``num_heads`` before 0.2, deprecated).

    ``image_size / patch_size`` squared patch tokens plus the CLS token go through ``depth``
    blocks (``blocks.0`` .. ``blocks.{depth-1}``); the head reads the CLS token only
    (``global_pool="token"``), so the patch tokens after the last block never reach the output.
    """
    from timm.models.vision_transformer import VisionTransformer

    from .._validation import check_float, check_int

    for name, value in (("n_classes", n_classes), ("embed_dim", embed_dim), ("depth", depth),
                        ("n_heads", n_heads), ("patch_size", patch_size),
                        ("image_size", image_size)):
        check_int(value, name, minimum=1)
    check_float(mlp_ratio, "mlp_ratio", minimum=0.0, strict_minimum=True)
    if embed_dim % n_heads:
        raise ValueError(f"`embed_dim` ({embed_dim}) must be a multiple of `n_heads` "
                         f"({n_heads}).")
    if image_size % patch_size:
        raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` "
                         f"({patch_size}).")
    return VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=3,
                             num_classes=n_classes, embed_dim=embed_dim, depth=depth,
                             num_heads=n_heads, mlp_ratio=mlp_ratio, class_token=True,
                             global_pool="token")


def build_model(architecture: str, config: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of ``architecture`` (``"cnn"``, ``"resnet"`` or ``"vit"``)."""
    if architecture == "resnet":
        return SmallResNet(**config)
    if architecture == "vit":
        # a record or spec written with the old key (the shipped ViT records) builds the same
        # model, without a warning; an error then names the key as the record spells it
        old_keys = {new: old for old, new in VIT_RENAMED.items() if old in config}
        try:
            return small_vit(**current_names(config, VIT_RENAMED))
        except (ValueError, TypeError) as err:
            message = str(err)
            for new, old in old_keys.items():
                message = message.replace(f"`{new}`", f"`{old}`")
            if message == str(err):
                raise
            raise type(err)(message) from err
    if architecture == "cnn":
        from ._reference import ReferenceCNN

        return ReferenceCNN(**config)
    raise ValueError(f"`architecture` must be one of {ARCHITECTURES}; got {architecture!r}.")


def n_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
