"""One row per concept: where each concept sits in each shown image, as a heatmap with a contour.

The blended overlay paints several concepts on one picture; this grid shows one concept at a
time, so that a reader can see each concept's place without untangling colours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from .._deprecation import renamed_arguments
from .._validation import check_float, check_int
from ._colors import readable, resolve_colors
from ._figures import _labels, _wrap_label, image_title, plain
from ._images import _check_pair, resize_maps, shrink


def heatmap_strength(maps: np.ndarray) -> np.ndarray:
    """Maps ``(N, k, H, W)`` scaled per concept to [0, 1] by the concept's maximum over the
    given images (negative values count as 0), so that rows compare images of one concept."""
    out = np.clip(maps.astype(np.float64), 0.0, None)
    top = out.max(axis=(0, 2, 3), keepdims=True)
    return np.divide(out, top, out=np.zeros_like(out), where=top > 0)


@renamed_arguments(n_concepts="n_top_concepts")
def plot_concept_heatmaps(images: Any, maps: Any, labels: list[str] | None = None,
                          colors: list | None = None, *, image_ids: list | None = None,
                          n_top_concepts: int = 5, percentile: float = 90.0, max_side: int = 160,
                          title: str | None = None) -> Figure:
    """A grid of concept heatmaps: one row per concept (the first ``n_top_concepts``), one column
    per image.

    Each panel shows the image in grey, the concept's map in the concept's colour (opacity
    proportional to the map divided by the concept's maximum over the shown images, so a row
    compares images) and a contour around the pixels above the concept's ``percentile``-th
    percentile over the shown images (the region the blended overlay paints).

    Parameters
    ----------
    images : array ``(N, 3, H, W)``
        Colours in [0, 1].
    maps : array ``(N, k, h, w)``
        Concept maps in report order (most important first); resized to the images.
    labels, colors : optional
        Concept labels and colours (default :func:`concept_colors`).
    image_ids : list, optional
        Column titles (ints: ``image 3``; strings: the file name).
    n_top_concepts : int
        Rows (the first concepts of ``maps``; ``n_concepts`` before, deprecated).
    percentile : float
        Contour level per concept, in [0, 100).
    max_side : int
        Images are shrunk to at most this many pixels per side first.
    """
    images, maps = _check_pair(images, maps)
    n_top_concepts = check_int(n_top_concepts, "n_top_concepts", minimum=1)
    percentile = check_float(percentile, "percentile", minimum=0.0)
    if percentile >= 100:
        raise ValueError(f"`percentile` must be below 100; got {percentile}.")
    max_side = check_int(max_side, "max_side", minimum=8)
    k = int(maps.shape[1])
    names = _labels(labels, k)
    m = min(n_top_concepts, k)
    rgb = resolve_colors(colors, m)
    n = images.shape[0]
    if image_ids is not None and len(image_ids) != n:
        raise ValueError(f"`image_ids` has {len(image_ids)} entries but `images` has {n}.")
    small = shrink(images, max_side)
    height, width = small.shape[2:]
    grey = small.mean(axis=1)  # (N, h, w)
    strength = heatmap_strength(resize_maps(maps[:, :m], (height, width)))
    panel = 1.45
    label_width = 1.5
    fig = Figure(figsize=(label_width + panel * n, panel * m * height / width + 0.45 +
                          (0.3 if title else 0.0)))
    grid = fig.add_gridspec(m, n, left=label_width / (label_width + panel * n), right=0.995,
                            top=1 - (0.3 + (0.3 if title else 0.0)) / fig.get_figheight(),
                            bottom=0.01, wspace=0.04, hspace=0.06)
    for c in range(m):
        colour = tuple(float(v) for v in rgb[c])
        cmap = LinearSegmentedColormap.from_list(f"concept{c}", [(*colour, 0.0), (*colour, 0.85)])
        values = strength[:, c]
        level = float(np.percentile(values, percentile))
        for i in range(n):
            ax = fig.add_subplot(grid[c, i])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(1.5)
            ax.imshow(0.35 + 0.5 * grey[i], cmap="gray", vmin=0.0, vmax=1.0,
                      interpolation="antialiased")
            ax.imshow(values[i], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="bilinear")
            if level > 0 and values[i].max() > level and values[i].min() < level:
                ax.contour(values[i], levels=[level], colors=[readable(rgb[c])], linewidths=1.3)
            if c == 0:
                ax.set_title(plain(image_title(image_ids[i] if image_ids is not None else i,
                                               width=18)), fontsize=7)
            if i == 0:
                ax.set_ylabel(plain(_wrap_label(names[c], width=18)), fontsize=8, rotation=0,
                              ha="right", va="center", color=readable(rgb[c]),
                              fontweight="bold", labelpad=6)
    if title:
        fig.suptitle(plain(title), fontsize=10)
    return fig
