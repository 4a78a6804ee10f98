"""Images from a folder or a glob, for every command that reads image files."""

from __future__ import annotations

import glob
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .._deprecation import renamed_arguments

#: The largest ``--size`` read: a 4096 px image is 200 MB as floats; models take 224-518 px.
MAX_IMAGE_SIZE = 4096
#: The most elongated image read (long side / short side): resizing the short side to ``--size``
#: makes the long side this many times ``--size`` (a 1,000,000 x 1 PNG of 3 KB would become a
#: 64,000,000 x 64 image, gigabytes of memory, before the centre crop keeps 64 x 64 of it).
MAX_ASPECT_RATIO = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@renamed_arguments(size="image_size")
def load_images(pattern: str, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Images from a directory or a glob, resized (shorter side) and centre-cropped to
    ``image_size``."""
    from PIL import Image

    path = Path(pattern)
    if path.is_dir():
        candidates = [str(p) for p in path.iterdir()]
    else:  # `**` matches folders at any depth, as in a shell with globstar
        candidates = glob.glob(pattern, recursive=True)
    # a folder named like an image (`sub.png/`) is not an image file
    files = sorted(f for f in candidates
                   if Path(f).suffix.lower() in IMAGE_SUFFIXES and Path(f).is_file())
    if not files:
        raise FileNotFoundError(f"`--images` {pattern!r} matches no image file "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
    size = image_size
    if size > MAX_IMAGE_SIZE:
        raise ValueError(f"`--size` is {size} pixels; at most {MAX_IMAGE_SIZE} is read (every "
                         f"image becomes a 3 x {size} x {size} float tensor). Models take "
                         f"224-518 px images; leave `--size` out to use the model's own.")
    out = []
    for file in files:
        try:
            with warnings.catch_warnings():
                # an image above PIL's pixel limit is a decompression-bomb warning (an error
                # above twice the limit): either way it is refused, naming the file
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = _read(file, size)
        except (OSError, ValueError, SyntaxError, EOFError, ZeroDivisionError, MemoryError,
                Image.DecompressionBombError,
                Image.DecompressionBombWarning) as err:
            raise OSError(f"`--images`: cannot read {file!r}: {type(err).__name__}: {err}") from err
        out.append(img)
    return torch.stack(out), files


def file_ids(files: list[str]) -> list[str]:
    """Short unique names of image files: the file name, or the path when two names collide
    (a glob over several folders)."""
    names = [Path(f).name for f in files]
    return names if len(set(names)) == len(names) else [str(Path(f)) for f in files]

def _read(file: str, size: int) -> torch.Tensor:
    """One image file, resized (shorter side) and centre-cropped to ``size``, in [0, 1]."""
    from PIL import Image, ImageOps

    with Image.open(file) as img:
        width, height = img.size
        if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            # checked before any pixel is decoded or resized (see MAX_ASPECT_RATIO)
            raise ValueError(f"the image is {width} x {height} pixels, more than "
                             f"{MAX_ASPECT_RATIO} times longer than it is wide: resizing its "
                             f"shorter side to {size} px would make it "
                             f"{max(width, height) * size // max(min(width, height), 1)} px long. "
                             f"Crop it, or leave it out of `--images`")
        stated = _full_scale(img)  # (from the file's tags, which a transposed copy lacks)
        img = ImageOps.exif_transpose(img)  # a camera's "rotate on display" tag, as viewers do
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            # 16-bit or float greyscale: convert("RGB") clips every value above 255 to white
            values = np.asarray(img, dtype=np.float64)
            top = float(values.max()) if values.size else 0.0
            ranges = (1.0, 255.0, 65535.0) if img.mode == "F" else (255.0, 65535.0)
            peak = 65535.0 if img.mode.startswith("I;16") else stated
            if peak is None:  # no bit depth said: the smallest usual range holding the values
                peak = next((r for r in ranges if top <= r), top)
                if img.mode == "I":
                    print(f"warning: `--images`: {file!r} holds integers (PIL mode 'I') of no "
                          f"stated bit depth; its values are scaled to [0, 1] by {peak:g} (the "
                          f"smallest of 255 and 65535 that holds its largest value, {top:g}, "
                          f"else that value).", file=sys.stderr)
            elif img.mode == "I" and 0 < top and round(top / peak * 255.0) == 0:  # the stated depth: all black
                print(f"warning: `--images`: {file!r} reads as black: its largest value, "
                      f"{top:g}, is below one grey level of its full scale, {peak:.0f} (its bit "
                      f"depth). Rescale the image to its bit depth's range, or save it as an "
                      f"8- or 16-bit image.", file=sys.stderr)
            img = Image.fromarray(np.clip(np.round(values / peak * 255.0), 0, 255)
                                  .astype(np.uint8), mode="L")
        img = img.convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))),
                         Image.BICUBIC)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


#: TIFF tags: bits per sample, and the sample format (1 unsigned, 2 signed integers).
_BITS_PER_SAMPLE, _SAMPLE_FORMAT = 258, 339


def _full_scale(img) -> float | None:
    """The value of white of a 32-bit integer ("I" mode) image, from the bit depth its file
    states: a TIFF's BitsPerSample (2^bits - 1, or 2^(bits-1) - 1 for signed integers), a PNG's
    16 bits (the only PNG that PIL reads as "I"). None when the file does not say (a float
    image, or another format)."""
    if img.mode != "I":
        return None
    if img.format == "PNG":
        return 65535.0
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None
    bits, kind = tags.get(_BITS_PER_SAMPLE), tags.get(_SAMPLE_FORMAT, 1)
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    kind = kind[0] if isinstance(kind, tuple) and kind else kind
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        return None
    return float(2 ** (bits - 1) - 1 if kind == 2 else 2 ** bits - 1)
