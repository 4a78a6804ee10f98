"""Real photos that ship with scikit-image and scikit-learn, and augmented views of one photo."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .._deprecation import renamed_arguments
from .._validation import check_float, check_images, check_int, close_names, make_rng


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


# Every entry loads from files inside the installed packages; none needs a download.
_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "motorcycle": _motorcycle,
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "china": _sklearn(0),
    "flower": _sklearn(1),
}
PHOTO_NAMES: tuple[str, ...] = tuple(_PHOTOS)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` → float ``(3, H, W)`` in [0, 1]."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array[:, :, :3].transpose(2, 0, 1))).float() / 255.0


def _square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased bilinear), then centre-crop a square."""
    image = TF.resize(image, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(image, [size, size]).clamp(0.0, 1.0)


@renamed_arguments(size="image_size")
def sample_photos(image_size: int | None = None,
                  names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Photos bundled with scikit-image and scikit-learn, loaded offline.

    Parameters
    ----------
    image_size : int, optional
        If given, each photo's shorter side is resized to ``image_size`` and the centre square
        kept, so every photo is ``(3, image_size, image_size)``; otherwise photos keep their own
        size.
    names : sequence of str, optional
        Which photos (default all of ``PHOTO_NAMES``: chelsea, coffee, astronaut, rocket,
        motorcycle, brick, grass, gravel, china, flower). Grayscale textures come back as RGB.

    Returns
    -------
    dict
        Name → float tensor ``(3, H, W)`` in [0, 1].
    """
    size = None if image_size is None else check_int(image_size, "image_size", minimum=8)
    if names is None:
        names = PHOTO_NAMES
    elif isinstance(names, str):
        raise TypeError(f"`names` must be a sequence of photo names such as ['coffee']; got the "
                        f"string {names!r}.")
    photos = {}
    for name in names:
        if name not in _PHOTOS:
            close = close_names(str(name), PHOTO_NAMES)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"`names` contains unknown photo {name!r}; available: "
                             f"{list(PHOTO_NAMES)}.{hint}")
        image = _to_tensor(_PHOTOS[name]())
        photos[name] = image if size is None else _square(image, size)
    return photos


@renamed_arguments(size="image_size")
def photo_views(photo: torch.Tensor, n_views: int, image_size: int = 224, seed: int = 0,
                scale: tuple[float, float] = (0.25, 1.0), jitter: float = 0.1) -> torch.Tensor:
    """Random augmented views of one photo: the image set for explaining a model on a photo.

    Each view is a random resized crop (area fraction in ``scale``, aspect ratio 3/4 to 4/3),
    flipped left-right with probability 1/2, with brightness, contrast and saturation each scaled
    by a random factor in ``[1 - jitter, 1 + jitter]``.

    Parameters
    ----------
    photo : torch.Tensor
        ``(3, H, W)`` float in [0, 1].
    n_views : int
        Number of views.
    image_size : int
        Side of the square views.
    seed : int
        Seed: the same seed gives identical views.

    Returns
    -------
    torch.Tensor
        ``(n_views, 3, image_size, image_size)`` float in [0, 1].
    """
    if not isinstance(photo, (torch.Tensor, np.ndarray)) or photo.ndim != 3:
        shape = tuple(photo.shape) if hasattr(photo, "shape") else type(photo).__name__
        raise ValueError(f"`photo` must be one image (3, H, W); got {shape}.")
    photo = check_images(photo[None], "photo", channels=3, min_size=2)[0]
    n_views = check_int(n_views, "n_views", minimum=1)
    size = check_int(image_size, "image_size", minimum=8)
    jitter = check_float(jitter, "jitter", minimum=0.0, maximum=1.0)
    if (not isinstance(scale, (tuple, list)) or len(scale) != 2
            or not 0 < float(scale[0]) <= float(scale[1]) <= 1):
        raise ValueError(f"`scale` must be a pair (low, high) with 0 < low <= high <= 1; got {scale!r}.")
    rng = make_rng(seed)
    height, width = photo.shape[1:]
    views = []
    for _ in range(n_views):
        top, left, crop_h, crop_w = _random_crop_box(height, width, scale, rng)
        view = TF.resized_crop(photo, top, left, crop_h, crop_w, [size, size],
                               interpolation=InterpolationMode.BILINEAR, antialias=True)
        if rng.random() < 0.5:
            view = view.flip(-1)
        brightness, contrast, saturation = rng.uniform(1 - jitter, 1 + jitter, size=3)
        view = TF.adjust_brightness(view.clamp(0.0, 1.0), float(brightness))
        view = TF.adjust_contrast(view, float(contrast))
        view = TF.adjust_saturation(view, float(saturation))
        views.append(view.clamp(0.0, 1.0))
    return torch.stack(views)


def _random_crop_box(height: int, width: int, scale: tuple[float, float],
                     rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A crop ``(top, left, h, w)`` covering a random area fraction with aspect in [3/4, 4/3]."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_w = int(round(np.sqrt(target * aspect)))
        crop_h = int(round(np.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            return int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1)), crop_h, crop_w
    # Fall back to the largest centred square, as torchvision's RandomResizedCrop does.
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side
