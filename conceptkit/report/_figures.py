"""Figures of one class: importance chart, exemplar grid, concept overlays.

Every function builds a standalone :class:`matplotlib.figure.Figure` (not registered with pyplot,
so nothing accumulates over many classes) and returns it; notebooks display it, and
:func:`save_figure` writes it and closes it.
"""

from __future__ import annotations

import io
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .._deprecation import renamed_arguments
from .._validation import check_int, describe, to_numpy
from ._colors import readable, resolve_colors
from ._images import concept_overlay, fit_within, shrink, to_hwc

DEFAULT_DPI = 90
# Labels longer than this are cut in ticks and legends (the page's table shows them in full).
TICK_CHARS = 28
LEGEND_CHARS = 40


def _close(fig: Figure) -> None:
    # A figure made through pyplot stays registered until closed; ours never are. Importing
    # pyplot only to close would pick a GUI backend, so only do it when pyplot is already in use.
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close(fig)


def figure_png(fig: Figure, dpi: int = DEFAULT_DPI, close: bool = True) -> bytes:
    """The figure as PNG bytes (closed afterwards unless ``close=False``)."""
    if not isinstance(fig, Figure):
        raise TypeError(f"`fig` must be a matplotlib Figure; got {describe(fig)}.")
    dpi = check_int(dpi, "dpi", minimum=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    if close:
        _close(fig)
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, e.g. ``.png``, ``.pdf``) and close it."""
    if not isinstance(fig, Figure):
        raise TypeError(f"`fig` must be a matplotlib Figure; got {describe(fig)}.")
    dpi = check_int(dpi, "dpi", minimum=10)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"`path` {str(path)!r} is a directory; give a file name such as "
                                f"'{path / 'figure.png'}'.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    _close(fig)
    return path


def _vector(value: Any, name: str, k: int | None = None, allow_nan: bool = False) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        value = np.asarray([np.nan if v is None else v for v in value], dtype=np.float64)
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        raise TypeError(f"`{name}` must be a 1-D array of numbers; got {describe(value)}.")
    array = np.asarray(to_numpy(value), dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D array (k,); got shape {array.shape}.")
    if k is not None and array.size != k:
        raise ValueError(f"`{name}` has {array.size} entries but there are {k} concepts.")
    bad = np.isinf(array) if allow_nan else ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"`{name}` contains {'Inf' if allow_nan else 'NaN or Inf'} values.")
    return array


def _labels(labels: Any, k: int) -> list[str]:
    """One label per concept; a label given more than once gets its position (``"wing [2]"``,
    as the CBM report does), so that a legend tells its concepts apart."""
    if labels is None:
        return [f"concept {i}" for i in range(k)]
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise TypeError(f"`labels` must be a list of str; got {describe(labels)}.")
    if len(labels) != k:
        raise ValueError(f"`labels` has {len(labels)} entries but there are {k} concepts.")
    return distinct_labels([str(label) for label in labels])


def distinct_labels(labels: list[str], indices: list[int] | None = None) -> list[str]:
    """``labels`` with every repeated one followed by its index (``indices[i]``, default its
    position): ``["wing", "tail", "wing"]`` -> ``["wing [0]", "tail", "wing [2]"]``."""
    indices = list(range(len(labels))) if indices is None else list(indices)
    return [f"{label} [{j}]" if labels.count(label) > 1 else label
            for j, label in zip(indices, labels)]


def plot_importances(importances: Any, labels: list[str] | None = None, ci_low: Any = None,
                     ci_high: Any = None, colors: list | None = None,
                     title: str | None = "Concept importance") -> Figure:
    """Bar chart of concept importances with confidence-interval error bars.

    Parameters
    ----------
    importances : array ``(k,)``
        One importance per concept, in the order to draw (most important first).
    labels : list of str, optional
        Bar labels.
    ci_low, ci_high : array ``(k,)``, optional
        Interval ends; NaN where unknown (no error bar drawn). The bar spans exactly
        ``[ci_low, ci_high]`` even when the interval does not contain the estimate.
    colors : list of matplotlib colours, optional
        Bar colours; default :func:`concept_colors`.
    """
    values = _vector(importances, "importances")
    k = values.size
    names = _labels(labels, k)
    rgb = resolve_colors(colors, k)
    fig = Figure(figsize=(max(4.0, 0.55 * k + 1.8), 3.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(k)
    ax.bar(x, values, color=rgb, edgecolor="black", linewidth=0.5, label="importance")
    if (ci_low is None) != (ci_high is None):
        raise ValueError("give both `ci_low` and `ci_high`, or neither.")
    if ci_low is not None:
        low = _vector(ci_low, "ci_low", k, allow_nan=True)
        high = _vector(ci_high, "ci_high", k, allow_nan=True)
        known = np.isfinite(low) & np.isfinite(high)
        if (low[known] > high[known]).any():
            raise ValueError("`ci_low` is above `ci_high` for some concepts.")
        if known.any():
            # Centre + half-width draws exactly [low, high], whatever the estimate is.
            middle = (low[known] + high[known]) / 2
            half = (high[known] - low[known]) / 2
            ax.errorbar(x[known], middle, yerr=half, fmt="none", ecolor="black", elinewidth=1.2,
                        capsize=4, label="confidence interval")
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([plain(shorten(n, TICK_CHARS)) for n in names], rotation=35 if k > 3 else 0, ha="right" if k > 3 else "center",
                       fontsize=8)
    ax.set_ylabel("importance")
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(plain(title), fontsize=10)
    return fig


def image_title(image_id: int | str, width: int = 28) -> str:
    """How a figure names an image: ``image 3`` for a position or row, the file name for a string
    id (shortened in the middle, so that names differing only at the end stay apart)."""
    return shorten_middle(image_id, width) if isinstance(image_id, str) else f"image {image_id}"


def shorten(label: str, width: int) -> str:
    """``label`` cut to ``width`` characters with an ellipsis (tick labels, legends)."""
    return label if len(label) <= width else label[: width - 1].rstrip() + "…"


def shorten_middle(label: str, width: int) -> str:
    """``label`` cut to ``width`` characters by an ellipsis in the middle, keeping its start and
    its end: file names of one camera or run differ at the end (``IMG_2024…142233.jpg``)."""
    if len(label) <= width:
        return label
    head = max(1, (width - 1) // 2)
    tail = max(1, width - 1 - head)
    return label[:head] + "…" + label[-tail:]


def plain(text: Any) -> str:
    """``text`` as matplotlib draws it literally: every ``$`` escaped, so that a label or file
    name with dollar signs ("tail $2 vs $3", "a$\\foo$.png") is not parsed as mathtext (which
    drops the dollars or aborts the figure). Apply it last, after shortening or wrapping."""
    return str(text).replace("$", r"\$")


def _wrap_label(label: str, width: int = 24, lines: int = 3) -> str:
    """A row label folded to fit left of the grid (at most ``lines`` lines, then an ellipsis)."""
    folded = textwrap.wrap(label, width) or [""]
    if len(folded) > lines:
        folded = folded[:lines]
        folded[-1] = folded[-1][: width - 1] + "…"
    return "\n".join(folded)


def _exemplar_strip(block: np.ndarray, ncols: int, cell: int, colour: np.ndarray) -> np.ndarray:
    """One row of the grid as pixels ``(cell + 2b, width, 3)``: exemplars framed in ``colour``."""
    border, gap = max(2, cell // 24), max(3, cell // 16)
    frame = cell + 2 * border
    strip = np.ones((frame, ncols * frame + (ncols - 1) * gap, 3))
    for j in range(min(block.shape[0], ncols)):
        picture = to_hwc(fit_within(block[j], cell))
        x0 = j * (frame + gap)
        strip[:, x0:x0 + frame] = colour
        strip[border:border + cell, x0 + border:x0 + border + cell] = 1.0
        h, w = picture.shape[:2]
        top, left = border + (cell - h) // 2, x0 + border + (cell - w) // 2
        strip[top:top + h, left:left + w] = picture
    return strip


@renamed_arguments(max_exemplars="n_exemplars")
def plot_exemplar_grid(exemplars: list, labels: list[str] | None = None, importances: Any = None,
                       colors: list | None = None, *, n_exemplars: int = 8,
                       max_side: int = 96, title: str | None = None) -> Figure:
    """Top exemplars of every concept: one row per concept, a coloured frame per concept.

    Each row is one axes showing one strip image (drawing a strip rather than an axes per
    exemplar keeps a 10 x 10 grid fast); the row's label and importance sit to its left.

    Parameters
    ----------
    exemplars : list of arrays ``(n_ex, 3, h, w)``
        One array per concept (rows, most important first), colours in [0, 1]; rows may differ in
        ``n_ex`` (``0`` allowed).
    labels : list of str, optional
        Row labels.
    importances : array ``(k,)``, optional
        Shown under each label.
    colors : list of matplotlib colours, optional
        Frame colour per concept; default :func:`concept_colors`.
    n_exemplars : int
        Columns: the first ``n_exemplars`` exemplars of each row are shown.
    max_side : int
        Exemplars are resized to fit a square cell of at most this many pixels (smaller when
        every exemplar is smaller).
    """
    if not isinstance(exemplars, (list, tuple)) or not exemplars:
        raise TypeError(f"`exemplars` must be a non-empty list of (n_ex, 3, h, w) arrays; "
                        f"got {describe(exemplars)}.")
    rows = []
    for i, block in enumerate(exemplars):
        array = np.asarray(to_numpy(block), dtype=np.float32) if isinstance(
            block, (np.ndarray, torch.Tensor)) else None
        if array is None or array.ndim != 4 or array.shape[1] != 3 or (
                array.shape[0] and min(array.shape[2:]) < 1):
            raise ValueError(f"`exemplars[{i}]` must be an array of shape (n_ex, 3, h, w); "
                             f"got {describe(block)}.")
        if not np.isfinite(array).all():
            raise ValueError(f"`exemplars[{i}]` contains NaN or Inf values.")
        rows.append(array)
    k = len(rows)
    names = _labels(labels, k)
    values = None if importances is None else _vector(importances, "importances", k)
    rgb = resolve_colors(colors, k)
    max_exemplars = check_int(n_exemplars, "n_exemplars", minimum=1)
    max_side = check_int(max_side, "max_side", minimum=8)
    ncols = max(1, min(max_exemplars, max(r.shape[0] for r in rows)))
    sides = [max(r.shape[2:]) for r in rows if r.shape[0]]
    cell = min(max_side, max(sides)) if sides else max_side
    label_width, row_height, head = 1.9, 1.0, (0.4 if title else 0.1)
    width = label_width + 1.0 * ncols
    fig = Figure(figsize=(width, row_height * k + head))
    grid = fig.add_gridspec(k, 1, left=label_width / width, right=0.995,
                            top=1 - head / (row_height * k + head), bottom=0.005, hspace=0.08)
    for r, block in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        ax.axis("off")
        ax.imshow(_exemplar_strip(block, ncols, cell, rgb[r]), interpolation="antialiased",
                  aspect="equal")
        if block.shape[0] == 0:
            ax.text(0.02, 0.5, "no exemplars", ha="left", va="center", fontsize=8,
                    transform=ax.transAxes, color="0.4")
        box = ax.get_position()
        text = plain(_wrap_label(names[r])) + ("" if values is None else f"\n{values[r]:.4g}")
        fig.text(box.x0 - 0.01, box.y0 + box.height / 2, text, ha="right", va="center",
                 fontsize=8, color=readable(rgb[r]), fontweight="bold")
    if title:
        fig.suptitle(plain(title), fontsize=10)
    return fig


@renamed_arguments(n_concepts="n_top_concepts")
def plot_concept_overlays(images: Any, maps: Any, labels: list[str] | None = None,
                          colors: list | None = None, *, image_ids: list | None = None,
                          n_top_concepts: int = 5, percentile: float = 90.0, mode: str = "alpha",
                          max_alpha: float = 0.6, max_side: int = 224, ncols: int = 4,
                          title: str | None = None, outline: bool = True) -> Figure:
    """Concept attribution maps painted over their images, each region outlined in its
    concept's colour, with a colour legend.

    Images are downsampled to ``max_side`` first; see :func:`concept_overlay` for ``n_top_concepts``,
    ``percentile``, ``mode``, ``max_alpha`` and ``outline`` (False: CRAFT's plain blend).
    ``maps`` is ``(N, k, h, w)`` in concept order.
    """
    if not isinstance(images, (np.ndarray, torch.Tensor)) or images.ndim != 4:
        raise ValueError(f"`images` must be an array of shape (N, 3, H, W); got {describe(images)}.")
    if not isinstance(maps, (np.ndarray, torch.Tensor)) or maps.ndim != 4:
        raise ValueError(f"`maps` must be an array of shape (N, k, h, w); got {describe(maps)}.")
    max_side = check_int(max_side, "max_side", minimum=8)
    ncols = check_int(ncols, "ncols", minimum=1)
    k = int(maps.shape[1])
    names = _labels(labels, k)
    n_top_concepts = check_int(n_top_concepts, "n_top_concepts", minimum=1)
    m = min(n_top_concepts, k)
    rgb = resolve_colors(colors, m)
    small = shrink(np.asarray(to_numpy(images), dtype=np.float32), max_side)
    painted = concept_overlay(small, maps, list(rgb), n_top_concepts=m, percentile=percentile,
                              mode=mode, max_alpha=max_alpha, outline=outline)
    n = painted.shape[0]
    if image_ids is not None and len(image_ids) != n:
        raise ValueError(f"`image_ids` has {len(image_ids)} entries but `images` has {n}.")
    cols = min(ncols, n)
    nrows = -(-n // cols)
    height, width = painted.shape[1:3]
    panel = 2.4
    fig = Figure(figsize=(panel * cols, panel * nrows * height / width + 0.5 + 0.22 * -(-m // 3)),
                 layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(painted[i], interpolation="bilinear")
            ax.set_title(plain(image_title(image_ids[i] if image_ids is not None else i)),
                         fontsize=8)
    handles = [Patch(facecolor=rgb[c], edgecolor="black", linewidth=0.5,
                     label=plain(shorten(names[c], LEGEND_CHARS)))
               for c in range(m)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(m, 3), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(plain(title), fontsize=10)
    return fig
