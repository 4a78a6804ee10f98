"""The reference CNN trained on the concept dataset, and its shipped weights."""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._torchutils import leaves_global_rng
from .._validation import check_int, describe
from ..io import FormatError, file_state, loading

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "reference_cnn.safetensors"
WEIGHTS_KIND = "reference_cnn"
#: the format version :func:`train_reference_cnn`'s files are written with: 2 since every such
#: file carries a content digest (version 1, conceptkit 0.1.0 and the shipped file, may lack it)
WEIGHTS_VERSION = 2
#: the format versions this conceptkit reads, the newest last
WEIGHTS_VERSIONS = (1, 2)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=False)]


class ReferenceCNN(nn.Module):
    """A small CNN for the concept dataset: four conv blocks, global average pool, linear head.

    ``forward(x)`` is exactly ``fc(flatten(pool(block4(block3(block2(block1(x)))))))``: a pure
    sequence of the registered children, so the model can be cut between any two of them.
    ``block4`` ends in a ReLU, so its activations are non-negative (ready for NMF). For a 64 px
    input the feature maps are 32, 16, 8 and 8 pixels wide after ``block1`` .. ``block4``.

    Inputs are images in ``[0, 1]`` (no normalisation), shape ``(N, 3, H, W)``.

    Parameters
    ----------
    n_classes : int
        Number of output logits.
    width : int
        Channels of ``block1``; later blocks use ``2 * width`` and ``4 * width``.
    """

    def __init__(self, n_classes: int = 6, width: int = 16) -> None:
        super().__init__()
        n_classes = check_int(n_classes, "n_classes", minimum=2)
        width = check_int(width, "width", minimum=1)
        self.n_classes = n_classes
        self.width = width
        self.block1 = nn.Sequential(*_conv_bn_relu(3, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(*_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width),
                                    *_conv_bn_relu(4 * width, 4 * width), nn.MaxPool2d(2))
        self.block4 = nn.Sequential(*_conv_bn_relu(4 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.block4(self.block3(self.block2(self.block1(x)))))))


def file_key(path: Path) -> tuple[int, ...]:
    """What a weights cache is keyed on besides the path (:func:`conceptkit.io.file_state`), so
    that a cache never serves the model that was there before."""
    return file_state(path)


@lru_cache(maxsize=4)
def _read_weights(path: str, key: tuple[int, ...], name: str = "path"
                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    # Cached per (path, file_key): loading is cheap, but tests and notebooks call it often.
    from ._shipped import load_weights_file

    return load_weights_file(path, kind=WEIGHTS_KIND, versions=WEIGHTS_VERSIONS, name=name)


def _load(path: str | os.PathLike | None, name: str = "path"
          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike weights file, or None for the "
                        f"shipped weights; got {describe(path)}.")
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.exists():
        hint = (" Recreate them with `python -m conceptkit.datasets.train_reference`."
                if path == WEIGHTS_PATH else "")
        raise FileNotFoundError(f"reference CNN weights not found at {str(path)!r}.{hint}")
    tensors, meta = _read_weights(str(path), file_key(path), name)
    return {k: v.clone() for k, v in tensors.items()}, copy.deepcopy(meta)


def checked_architecture(path: str | os.PathLike, state: dict[str, torch.Tensor],
                         meta: dict[str, Any], name: str = "path") -> dict[str, Any]:
    """The record's ``architecture`` settings once they are known to make exactly the file's
    tensors: the model is built on the meta device first, so that a tampered record cannot make
    a loader allocate a model of any size; else a :class:`FormatError` naming the argument
    ``name`` and the file."""
    architecture = meta.get("architecture")
    try:
        if not isinstance(architecture, dict) or set(architecture) - {"n_classes", "width"}:
            raise ValueError(f"its record's architecture must be a dict of n_classes and width; "
                             f"got {architecture!r}")
        with torch.device("meta"):
            made = ReferenceCNN(**architecture).state_dict()
        if {k: tuple(v.shape) for k, v in made.items()} != {k: tuple(v.shape)
                                                             for k, v in state.items()}:
            raise ValueError("its tensors are not the ones its architecture makes")
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise FormatError(f"`{name}` {os.fspath(path)!r} is not a valid reference CNN weights file: "
                          f"{err}") from None
    return dict(architecture)


@leaves_global_rng
def reference_model(pretrained: bool = True, path: str | os.PathLike | None = None) -> ReferenceCNN:
    """The reference CNN, in eval mode, with the weights shipped in the package.

    Parameters
    ----------
    pretrained : bool
        Load the trained weights; with False the model is freshly initialised with the shipped
        architecture (the same initial weights on every call; torch's global generator is left
        as it was in both cases).
    path : path, optional
        Weights written by ``python -m conceptkit.datasets.train_reference --out PATH``; default
        the weights shipped with conceptkit.
    """
    if not isinstance(pretrained, bool):
        raise TypeError(f"`pretrained` must be True or False; got {pretrained!r}.")
    if not pretrained:
        if path is not None:
            raise ValueError("pass `path` with pretrained=True (a file is a trained model).")
        torch.manual_seed(0)  # the same initial weights on every call (on a forked generator)
        return ReferenceCNN().eval()
    state, meta = _load(path)
    architecture = checked_architecture(path or WEIGHTS_PATH, state, meta)
    with loading(path or WEIGHTS_PATH, "reference CNN weights file", also=(RuntimeError,)):
        model = ReferenceCNN(**architecture)
        model.load_state_dict(state, strict=True)
    return model.eval()


def reference_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """What the shipped weights record: architecture, dataset and training settings, accuracy.

    Keys include ``"architecture"``, ``"dataset"``, ``"training"``, ``"test_accuracy"`` (held out,
    spurious-free test split), ``"test_accuracy_with_spurious"`` (test split with the cue
    correlated), ``"spurious_cue_effect"`` and ``"distractor_control_effect"`` (see
    :func:`spurious_cue_effect`).
    """
    return _load(path)[1]


def reference_accuracy(path: str | os.PathLike | None = None) -> float:
    """Held-out accuracy of the shipped model on the spurious-free test split, as recorded."""
    return float(reference_info(path)["test_accuracy"])
