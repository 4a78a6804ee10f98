"""One concept colour palette for every figure and page.

Colours follow the concept's rank in the report (most important first), so that the top concept
is drawn in the same colour on every class page and in every figure of a page: tab10, then the
light half of tab20, then tab20b and tab20c (60 colours), then evenly spread hues.
"""

from __future__ import annotations

import colorsys

import matplotlib
import numpy as np
from matplotlib.colors import to_hex, to_rgb

from .._deprecation import renamed_arguments
from .._validation import check_int

_GOLDEN = 0.618033988749895


def _base_palette() -> list[tuple[float, float, float]]:
    colours: list[tuple[float, float, float]] = []
    colours += [tuple(c[:3]) for c in matplotlib.colormaps["tab10"].colors]
    colours += [tuple(c[:3]) for c in matplotlib.colormaps["tab20"].colors[1::2]]
    for name in ("tab20b", "tab20c"):
        colours += [tuple(c[:3]) for c in matplotlib.colormaps[name].colors]
    return [tuple(float(v) for v in c) for c in colours]


_PALETTE = _base_palette()


@renamed_arguments(n="n_concepts")
def concept_colors(n_concepts: int) -> list[tuple[float, float, float]]:
    """The RGB colours (floats in [0, 1]) of the first ``n_concepts`` concepts, in rank order.

    Colour ``i`` never depends on ``n_concepts``: ``concept_colors(3)`` is a prefix of
    ``concept_colors(12)``.
    """
    n = check_int(n_concepts, "n_concepts", minimum=0)
    colours = list(_PALETTE[:n])
    for i in range(len(_PALETTE), n):
        hue = ((i - len(_PALETTE)) * _GOLDEN) % 1.0
        colours.append(tuple(float(v) for v in colorsys.hsv_to_rgb(hue, 0.65, 0.85)))
    return colours


@renamed_arguments(n="n_concepts")
def concept_hex_colors(n_concepts: int) -> list[str]:
    """:func:`concept_colors` as ``"#rrggbb"`` strings (for HTML)."""
    return [to_hex(c) for c in concept_colors(n_concepts)]


def readable(color: tuple[float, float, float] | np.ndarray) -> tuple[float, float, float]:
    """``color`` darkened when too light to read as text on white (the light tab20 half)."""
    r, g, b = (float(v) for v in color)
    if 0.2126 * r + 0.7152 * g + 0.0722 * b <= 0.65:
        return (r, g, b)
    return (0.6 * r, 0.6 * g, 0.6 * b)


def resolve_colors(colors: list | None, k: int) -> np.ndarray:
    """The ``(k, 3)`` RGB colours to draw ``k`` concepts with: ``colors`` or the palette."""
    if colors is None:
        return np.array(concept_colors(k), dtype=np.float64).reshape(-1, 3)
    if isinstance(colors, str) or not hasattr(colors, "__len__"):
        raise TypeError(f"`colors` must be a list of matplotlib colours; got {colors!r}.")
    if len(colors) < k:
        raise ValueError(f"`colors` has {len(colors)} colours but {k} concepts are drawn.")
    rgb = []
    for i, colour in enumerate(list(colors)[:k]):
        try:
            rgb.append(to_rgb(colour))
        except (ValueError, TypeError) as err:
            raise ValueError(f"`colors[{i}]` is not a matplotlib colour: {colour!r}.") from err
    return np.array(rgb, dtype=np.float64).reshape(-1, 3)
