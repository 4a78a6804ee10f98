"""Images from a folder or a glob, for every command that reads image files."""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import numpy as np
import torch

from .._deprecation import renamed_arguments

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@renamed_arguments(size="image_size")
def load_images(pattern: str, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Images from a directory or a glob, resized (shorter side) and centre-cropped to
    ``image_size``."""
    from PIL import Image

    path = Path(pattern)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(f for f in glob.glob(pattern) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"`--images` {pattern!r} matches no image file "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
    size = image_size
    out = []
    for file in files:
        try:
            with warnings.catch_warnings():
                # an image above PIL's pixel limit is a decompression-bomb warning (an error
                # above twice the limit): either way it is refused, naming the file
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = _read(file, size)
        except (OSError, ValueError, SyntaxError, EOFError, ZeroDivisionError,
                Image.DecompressionBombError,
                Image.DecompressionBombWarning) as err:
            raise OSError(f"`--images`: cannot read {file!r}: {type(err).__name__}: {err}") from err
        out.append(img)
    return torch.stack(out), files


def _read(file: str, size: int) -> torch.Tensor:
    """One image file, resized (shorter side) and centre-cropped to ``size``, in [0, 1]."""
    from PIL import Image

    with Image.open(file) as img:
        img = img.convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))),
                         Image.BICUBIC)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
