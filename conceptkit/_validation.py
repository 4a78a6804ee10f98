"""Boundary checks shared by every public entry point.

Each check names the argument it looked at and what it received, so that users never have to
read a traceback from inside torch, scikit-learn or scipy to learn what they passed wrongly.
"""

from __future__ import annotations

import contextlib
import difflib
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages: type, shape and dtype."""
    if isinstance(value, torch.Tensor):
        return f"torch.Tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"numpy array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_int(value: Any, name: str, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer; got {describe(value)}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}; got {value}.")
    return value


def check_float(value: Any, name: str, *, minimum: float | None = None,
                maximum: float | None = None, strict_minimum: bool = False) -> float:
    """Return ``value`` as a finite float within bounds, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number; got {describe(value)}.")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value}.")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"`{name}` must be > {minimum}; got {value}.")
        if not strict_minimum and value < minimum:
            raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}; got {value}.")
    return value


def check_choice(value: Any, name: str, options: Iterable[str]) -> str:
    """Check that ``value`` is one of ``options``; suggest the closest on a typo."""
    options = list(options)
    if value in options:
        return value
    hint = ""
    if isinstance(value, str):
        same_letters = [o for o in options if isinstance(o, str) and o.lower() == value.lower()]
        close = same_letters or difflib.get_close_matches(value, options, n=1)  # "ICE": 'ice'
        if close:
            hint = f" Did you mean {close[0]!r}?"
    raise ValueError(f"`{name}` must be one of {options}; got {value!r}.{hint}")


def close_names(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """Candidates that look like ``name`` (for 'unknown name' errors)."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if not close:
        close = [c for c in candidates if name and (name in c or c in name)][:n]
    return close


def did_you_mean(unknown: Sequence[str], accepted: Sequence[str]) -> str:
    """`` (did you mean `a`, `b`?)`` for the ``accepted`` names closest to each ``unknown``
    one, or "" when none is close (for 'unknown option' errors)."""
    close = [m for name in unknown for m in difflib.get_close_matches(name, list(accepted), n=1)]
    return f" (did you mean {', '.join(f'`{m}`' for m in close)}?)" if close else ""


def all_finite(x: np.ndarray | torch.Tensor) -> bool:
    """Whether every value is finite. For tensors: a finite sum proves it (~20x faster on CPU than
    ``isfinite(x).all()``, which first writes a boolean tensor as large as ``x``: 0.3 s of the
    reference CNN's class pipeline); when the sum is not finite (a NaN, an Inf, or an overflow of
    finite values) the smallest and largest values decide (``aminmax`` propagates NaN)."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point() or x.numel() == 0:
            return True
        x = x.detach()
        if bool(torch.isfinite(x.sum())):
            return True
        low, high = torch.aminmax(x)
        return bool(torch.isfinite(low) & torch.isfinite(high))
    if not np.issubdtype(x.dtype, np.floating):
        return True
    return bool(np.isfinite(x).all())


#: Pixel colours may overshoot [0, 1] by this much (float error of resizing) and still count as
#: pixels; more is a mistake (0-255 values, normalised tensors) and is refused.
PIXEL_TOLERANCE = 1e-3


def check_pixel_range(images: torch.Tensor, name: str = "images") -> None:
    """Refuse images whose values are not colours in [0, 1] (up to :data:`PIXEL_TOLERANCE`).

    The one rule for every image that a concept explanation cuts crops, positions or segments
    from and shows in figures (CRAFT, ICE, ACE, the pipeline): raw pixels in [0, 1], with any
    normalisation given separately as ``preprocess``. The error says what the values look like.
    """
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if low >= -PIXEL_TOLERANCE and high <= 1 + PIXEL_TOLERANCE:
        return
    if low >= 0 and high <= 255:
        guess = "they look like 0-255 values: divide by 255 (images.float() / 255)"
    elif low < 0:
        guess = ("they look normalised (mean/std): pass the raw images in [0, 1] and give the "
                 "normalisation as `preprocess=` (a conceptkit.models bundle carries it)")
    else:
        guess = "rescale them to [0, 1]"
    raise ValueError(f"`{name}` must hold pixel colours in [0, 1]; got values in "
                     f"[{low:.4g}, {high:.4g}]: {guess}. Crops, positions and segments are cut "
                     f"from these raw pixels and the report shows them.")

def check_not_meta(x: Any, name: str) -> None:
    """Refuse a tensor on the ``meta`` device (shapes without values) with an error naming it."""
    if isinstance(x, torch.Tensor) and x.device.type == "meta":
        raise ValueError(f"`{name}` is on the 'meta' device, which holds shapes but no data; pass "
                         f"a tensor with values (on the CPU or a GPU), e.g. computed by a model "
                         f"whose weights are loaded.")


def check_images(images: Any, name: str = "images", *, channels: int | None = None,
                 min_size: int = 1, pixels: bool = False) -> torch.Tensor:
    """Validate a batch of images ``(N, C, H, W)`` and return it as a float tensor.

    A single image ``(C, H, W)`` is rejected rather than silently batched: the caller has to say
    what they mean. Integer images are rejected too, because their range is ambiguous. With
    ``pixels=True`` the values must be colours in [0, 1] (:func:`check_pixel_range`).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        how = ""
        if isinstance(images, (list, tuple)) and images and hasattr(images[0], "getbands"):
            how = (" Convert a list of PIL images of one size with torch.stack([torchvision."
                   "transforms.functional.to_tensor(im.convert('RGB')) for im in images]).")
        elif isinstance(images, str) or hasattr(images, "__fspath__"):  # a path
            how = (" A path is not read: load the image files first, e.g. torch.stack([torchvision."
                   "transforms.functional.to_tensor(PIL.Image.open(p).convert('RGB').resize((S, S)))"
                   " for p in paths]), or give the folder to the command line (conceptkit explain "
                   "--images DIR).")
        raise TypeError(
            f"`{name}` must be a torch.Tensor or numpy array of shape (N, C, H, W); "
            f"got {describe(images)}.{how}"
        )
    if images.device.type == "meta":
        raise ValueError(f"`{name}` is on the 'meta' device, which holds shapes but no data; pass "
                         f"images with values (on the CPU or a GPU).")
    if images.ndim != 4:
        extra = " (a single image? add a batch axis with images[None])" if images.ndim == 3 else ""
        raise ValueError(
            f"`{name}` must have 4 dimensions (N, C, H, W); got shape {tuple(images.shape)}{extra}."
        )
    if images.shape[0] == 0:
        raise ValueError(f"`{name}` is empty: got shape {tuple(images.shape)}; need at least one image.")
    if not images.is_floating_point():
        raise TypeError(
            f"`{name}` must be floating point (e.g. float32 in [0, 1] or normalised); "
            f"got dtype {images.dtype}. Convert with images.float() / 255."
        )
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"`{name}` must have {channels} channels in axis 1 (N, C, H, W); "
            f"got shape {tuple(images.shape)}."
        )
    if min(images.shape[2], images.shape[3]) < min_size:
        raise ValueError(
            f"`{name}` must be at least {min_size}x{min_size} pixels; got {tuple(images.shape[2:])}."
        )
    if not all_finite(images):
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    if pixels:
        check_pixel_range(images, name)
    return images


def check_image_ids(ids: Any, n: int, name: str = "image_ids") -> np.ndarray:
    """One unique id per image: integers or strings (e.g. file names).

    ``None`` gives the positions ``0 .. n-1``. Returns an int64 array, or a str array for string
    ids; a mix of both, duplicates, empty strings or a wrong count raise naming ``name``.
    """
    if ids is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise TypeError(f"`{name}` must be a list of ints or of strings (one per image); "
                        f"got {describe(ids)}.")
    values = list(np.asarray(ids, dtype=object).ravel()) if isinstance(ids, np.ndarray) else list(ids)
    if len(values) != n:
        raise ValueError(f"`{name}` has {len(values)} entries but there are {n} images; give one "
                         f"id per image.")
    if all(isinstance(v, str) for v in values):
        if any(not v.strip() for v in values):
            raise ValueError(f"`{name}` holds an empty string; every image needs a name.")
        out = np.asarray(values, dtype=str)
    elif all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        out = np.asarray(values, dtype=np.int64)
    else:
        kinds = sorted({type(v).__name__ for v in values})
        raise TypeError(f"`{name}` must be all ints or all strings (e.g. file names); got "
                        f"{', '.join(kinds)}.")
    unique, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        twice = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in unique[counts > 1][:3])
        raise ValueError(f"`{name}` must be unique; {twice} appear(s) more than once.")
    return out


def id_list(ids: Any) -> list:
    """Image ids as plain ints or strs (JSON, tables, figure titles)."""
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(ids).ravel()]


def check_matrix(x: Any, name: str, *, min_rows: int = 1, nonnegative: bool = False,
                 columns: int | None = None, hint_negative: str = "") -> np.ndarray | torch.Tensor:
    """Validate a 2-D float matrix ``(n, C)`` (numpy or torch) and return it unchanged in type."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x, dtype=np.float64)
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise TypeError(f"`{name}` must be a numpy array or torch.Tensor of shape (n, C); "
                        f"got {describe(x)}.")
    check_not_meta(x, name)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (n_samples, n_features); got shape {tuple(x.shape)}.")
    if x.shape[0] < min_rows:
        raise ValueError(f"`{name}` needs at least {min_rows} rows; got shape {tuple(x.shape)}.")
    if x.shape[1] == 0:
        raise ValueError(f"`{name}` has no columns: shape {tuple(x.shape)}.")
    if columns is not None and x.shape[1] != columns:
        raise ValueError(f"`{name}` must have {columns} columns; got shape {tuple(x.shape)}.")
    is_float = x.is_floating_point() if isinstance(x, torch.Tensor) else np.issubdtype(x.dtype, np.floating)
    if not is_float:
        if isinstance(x, torch.Tensor):
            x = x.float()
        else:
            x = x.astype(np.float64)
    if not all_finite(x):
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    if nonnegative:
        low = float(x.min())
        if low < 0:
            raise ValueError(
                f"`{name}` has negative values (min {low:.4g}) but this method needs non-negative "
                f"input.{(' ' + hint_negative) if hint_negative else ''}"
            )
    return x


def to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A numpy view/copy of ``x`` on the CPU; bfloat16, which numpy lacks, becomes float32
    (exactly: every bfloat16 value is a float32 value)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from an int seed, a Generator, or None (fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None:
        check_int(seed, "seed", minimum=0)
    return np.random.default_rng(seed)


#: Seeds are what numpy and scikit-learn take: integers in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """None (fresh randomness) or an integer seed in [0, :data:`MAX_SEED`], checked when given
    rather than inside scikit-learn after the work before it."""
    return None if seed is None else check_int(seed, name, minimum=0, maximum=MAX_SEED)


def resolve_seed(seed: int | None, name: str = "seed") -> int:
    """An int seed: ``seed`` itself (checked), or one drawn from fresh entropy for ``None``.

    For code that needs an int (torch generators, scikit-learn's ``random_state``) but must not
    fall back on a global random state when the user asked for fresh randomness.
    """
    if seed is None:
        return int(np.random.default_rng().integers(2**31 - 1))
    return check_int(seed, name, minimum=0, maximum=MAX_SEED)


def resolve_device(device: Any, name: str = "device") -> torch.device:
    """Turn ``None`` / str / torch.device into a torch.device, with a clear error."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`{name}` must be a torch device such as 'cpu' or 'cuda:0'; got {device!r}.") from err
    if dev.type == "meta":  # moving a model there and back would lose its weights
        raise ValueError(f"`{name}` is 'meta', which holds shapes but no values: nothing can run "
                         f"there. Use 'cpu' or a GPU such as 'cuda:0'.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`{name}` is {device!r} but CUDA is not available on this machine.")
    return dev


@contextlib.contextmanager
def held_warnings(category: type[Warning],
                  select: Callable[[warnings.WarningMessage], bool] | None = None
                  ) -> Iterator[list[warnings.WarningMessage]]:
    """Hold back the warnings of ``category`` (those ``select`` accepts, if given) raised in the
    block: the yielded list holds them when the block ends, for the caller to say in its own
    words. Every other warning is shown as it was, after the block."""
    held: list[warnings.WarningMessage] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        yield held
    for item in caught:
        if issubclass(item.category, category) and (select is None or select(item)):
            held.append(item)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


#: How far from 1 the rows of a model's output may sum for :func:`are_probabilities` to take
#: them for probabilities (float32 softmax rows sum to 1 within ~1e-7).
PROBABILITY_SUM_TOLERANCE = 1e-4


def are_probabilities(out: torch.Tensor) -> bool:
    """Whether a model's output ``(B, n_classes)``, ``n_classes >= 2``, looks like probabilities:
    every row non-negative and summing to 1. Taking its softmax again would flatten every class
    score towards ``1 / n_classes`` and every drop with it, without any error."""
    if out.ndim != 2 or out.shape[1] < 2 or out.shape[0] == 0 or not out.is_floating_point():
        return False
    out = out.detach().double()
    return bool((out.sum(dim=1) - 1).abs().max() <= PROBABILITY_SUM_TOLERANCE and (out >= 0).all())


#: The error for a model (or head) that returns probabilities where its class probability is
#: read as the softmax of its output (``what``: who returns them; ``n``: how many classes).
PROBABILITIES_GIVEN = ("{what} returns probabilities (every row of its {n} outputs is >= 0 and "
                       "sums to 1), but the class probability is read as the softmax of its "
                       "output, which would apply a softmax twice and flatten every drop: pass "
                       "the model without its final softmax (its logits).")
