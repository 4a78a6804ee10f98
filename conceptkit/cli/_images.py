"""Images from a folder or a glob, for every command that reads image files."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_images(pattern: str, size: int) -> tuple[torch.Tensor, list[str]]:
    """Images from a directory or a glob, resized (shorter side) and centre-cropped to ``size``."""
    from PIL import Image

    path = Path(pattern)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(f for f in glob.glob(pattern) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"`--images` {pattern!r} matches no image file "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
    out = []
    for file in files:
        try:
            with Image.open(file) as img:
                img = img.convert("RGB")
                scale = size / min(img.size)
                img = img.resize((max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))),
                                 Image.BICUBIC)
                left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
                img = img.crop((left, top, left + size, top + size))
                out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
        except OSError as err:
            raise OSError(f"`--images`: cannot read {file!r}: {err}") from err
    return torch.stack(out), files
