"""How a class's concepts relate: the strategic cluster graph and concept co-occurrence.

The strategic cluster graph (Holistic CRAFT / Lens) embeds every image's vector of per-concept
importances in 2-D and colours it by the concept that matters most for that image, so that images
the model classifies "for the same reason" gather. Co-occurrence compares concepts through the
codes of the fitted rows: Pearson correlation, or the Jaccard index of top-quantile presence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .._validation import check_choice, check_float, check_int, describe, to_numpy
from ._colors import readable, resolve_colors
from ._figures import LEGEND_CHARS, TICK_CHARS, _labels, plain, shorten

EMBEDDINGS = ("auto", "pca", "tsne")
COOCCURRENCE_MEASURES = ("correlation", "jaccard")
# "auto" embedding: t-SNE needs enough points for a neighbourhood (below, PCA is the honest
# picture) and costs ~4 s per 1000 points at 500 iterations on 2 CPU cores (above, PCA keeps a
# report fast; ask for "tsne" explicitly).
TSNE_MIN_POINTS = 50
TSNE_MAX_POINTS = 1000
TSNE_ITERATIONS = 500
_UNCOLOURED = (0.75, 0.75, 0.75)


def _matrix(value: Any, name: str, shape_text: str) -> np.ndarray:
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        raise TypeError(f"`{name}` must be a numpy array or torch.Tensor of shape {shape_text}; "
                        f"got {describe(value)}.")
    array = np.asarray(to_numpy(value), dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"`{name}` must be a non-empty 2-D array {shape_text}; "
                         f"got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    return array


def concept_cooccurrence(codes: Any, measure: str = "correlation",
                         quantile: float = 0.9) -> np.ndarray:
    """Concept-by-concept co-occurrence ``(k, k)`` from codes ``(n_rows, k)``.

    ``"correlation"``: Pearson correlation between code columns. ``"jaccard"``: a concept is
    *present* in a row when its code exceeds the concept's ``quantile``-th quantile over the rows
    (so at most the top ``1 - quantile`` share of rows); the entry is the Jaccard index
    ``|A ∩ B| / |A ∪ B|`` of the two presence sets. Undefined entries (a constant column, two
    empty sets) are NaN.
    """
    codes = _matrix(codes, "codes", "(n_rows, k)")
    check_choice(measure, "measure", COOCCURRENCE_MEASURES)
    quantile = check_float(quantile, "quantile", minimum=0.0, maximum=1.0)
    if measure == "correlation":
        centred = codes - codes.mean(axis=0)
        norms = np.sqrt((centred**2).sum(axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            result = (centred.T @ centred) / np.outer(norms, norms)
        result[(norms == 0)[:, None] | (norms == 0)[None, :]] = np.nan
        return np.clip(result, -1.0, 1.0)
    present = (codes > np.quantile(codes, quantile, axis=0)).astype(np.float64)
    both = present.T @ present
    counts = present.sum(axis=0)
    union = counts[:, None] + counts[None, :] - both
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, both / np.where(union > 0, union, 1), np.nan)


def strategic_embedding(per_image_importance: Any, method: str = "auto",
                        seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D embedding ``(n, 2)`` of per-image importance vectors ``(n, k)``.

    ``"pca"`` projects on the first two principal components; ``"tsne"`` runs scikit-learn's
    t-SNE (PCA initialisation, perplexity ``min(30, (n - 1) / 3)``, 500 iterations,
    ``random_state=seed``);
    ``"auto"`` picks t-SNE for 50 to 1000 images (:data:`TSNE_MIN_POINTS`,
    :data:`TSNE_MAX_POINTS`) and PCA otherwise. Returns the coordinates and the method used.
    """
    values = _matrix(per_image_importance, "per_image_importance", "(n, k)")
    check_choice(method, "method", EMBEDDINGS)
    seed = check_int(seed, "seed", minimum=0)
    n, k = values.shape
    if method == "auto":
        method = "tsne" if TSNE_MIN_POINTS <= n <= TSNE_MAX_POINTS else "pca"
    coords = np.zeros((n, 2))
    if n == 1:
        return coords, method
    if method == "tsne":
        if n < 5:
            raise ValueError(f"`method`='tsne' needs at least 5 images; `per_image_importance` has "
                             f"{n}. Use method='pca'.")
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca",
                    max_iter=TSNE_ITERATIONS, random_state=seed)
        # Barnes-Hut's OpenMP threads spin-wait: on a busy machine they made a 120-point
        # embedding 20-70x slower than one thread (measured), for no gain at these sizes.
        with threadpool_limits(1, user_api="openmp"):
            return tsne.fit_transform(values).astype(np.float64), method
    from sklearn.decomposition import PCA

    d = min(2, n, k)
    if np.ptp(values, axis=0).max() == 0:  # every image identical: one point, no direction
        return coords, method
    coords[:, :d] = PCA(n_components=d, svd_solver="full").fit_transform(values)
    return coords, method


def top_concepts(per_image_importance: Any) -> np.ndarray:
    """Index of the most important concept of every image ``(n,)`` (first one on ties)."""
    return _matrix(per_image_importance, "per_image_importance", "(n, k)").argmax(axis=1)


def plot_strategic_clusters(per_image_importance: Any, labels: list[str] | None = None,
                            colors: list | None = None, *, method: str = "auto", seed: int = 0,
                            min_count: int = 1, coords: Any = None,
                            title: str | None = "Strategic cluster graph") -> Figure:
    """Scatter of the per-image importance embedding, coloured by each image's top concept.

    Parameters
    ----------
    per_image_importance : array ``(n, k)``
        Per-image importances, concepts in report order.
    labels, colors : optional
        Concept labels and colours (default :func:`concept_colors`).
    method, seed : see :func:`strategic_embedding`.
    min_count : int
        A concept gets its colour only when it is the top concept of at least this many images
        (Lens uses 10); other points are grey.
    coords : array ``(n, 2)``, optional
        A precomputed embedding (skips :func:`strategic_embedding`).
    """
    values = _matrix(per_image_importance, "per_image_importance", "(n, k)")
    n, k = values.shape
    names = _labels(labels, k)
    rgb = resolve_colors(colors, k)
    min_count = check_int(min_count, "min_count", minimum=1)
    if coords is None:
        coords, used = strategic_embedding(values, method, seed)
    else:
        coords = _matrix(coords, "coords", "(n, 2)")
        if coords.shape != (n, 2):
            raise ValueError(f"`coords` must have shape ({n}, 2); got {coords.shape}.")
        used = method
    winners = values.argmax(axis=1)
    counts = np.bincount(winners, minlength=k)
    coloured = counts >= min_count
    point_colours = np.array([rgb[c] if coloured[c] else _UNCOLOURED for c in winners])
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(coords[:, 0], coords[:, 1], c=point_colours, s=28, edgecolors="black",
               linewidths=0.4)
    handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor=rgb[c],
                      markeredgecolor="black", markersize=7,
                      label=f"{plain(shorten(names[c], LEGEND_CHARS))} ({counts[c]})")
               for c in range(k) if coloured[c] and counts[c] > 0]
    if (~coloured & (counts > 0)).any():
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor=_UNCOLOURED,
                              markeredgecolor="black", markersize=7,
                              label=f"other ({int(counts[~coloured].sum())})"))
    ax.legend(handles=handles, title="top concept (images)", fontsize=7, title_fontsize=7,
              loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{'t-SNE' if used == 'tsne' else 'PCA'} 1", fontsize=8)
    ax.set_ylabel(f"{'t-SNE' if used == 'tsne' else 'PCA'} 2", fontsize=8)
    if title:
        ax.set_title(plain(f"{title} ({n} images)"), fontsize=10)
    return fig


def plot_cooccurrence(codes: Any, labels: list[str] | None = None, colors: list | None = None, *,
                      measure: str = "correlation", quantile: float = 0.9,
                      annotate: bool | None = None,
                      title: str | None = "Concept co-occurrence") -> Figure:
    """Heatmap of :func:`concept_cooccurrence` with concept labels in their colours.

    Cells show their value when ``annotate`` (default: ``k <= 12``); undefined cells are grey.
    """
    matrix = concept_cooccurrence(codes, measure, quantile)
    k = matrix.shape[0]
    names = _labels(labels, k)
    rgb = resolve_colors(colors, k)
    annotate = k <= 12 if annotate is None else bool(annotate)
    side = max(3.6, 0.42 * k + 2.4)
    fig = Figure(figsize=(side + 0.8, side), layout="constrained")
    ax = fig.add_subplot()
    if measure == "correlation":
        cmap, low, high, bar = "RdBu_r", -1.0, 1.0, "Pearson correlation of codes"
    else:
        cmap, low, high, bar = "viridis", 0.0, 1.0, f"Jaccard of top {1 - quantile:.0%} presence"
    from matplotlib import colormaps

    palette = colormaps[cmap].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=palette, vmin=low, vmax=high)
    fig.colorbar(image, ax=ax, shrink=0.8).set_label(bar, fontsize=8)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels([plain(shorten(n, TICK_CHARS)) for n in names], rotation=45, ha="right",
                       fontsize=7)
    ax.set_yticklabels([plain(shorten(n, TICK_CHARS)) for n in names], fontsize=7)
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for c, tick in enumerate(ticks):
            tick.set_color(readable(rgb[c]))
    if annotate:
        for i in range(k):
            for j in range(k):
                value = matrix[i, j]
                text = "–" if np.isnan(value) else f"{value:.2f}"
                if measure == "correlation":
                    dark = abs(value) > 0.6  # saturated red or blue
                else:
                    dark = value < 0.45  # the purple end of viridis
                ax.text(j, i, text, ha="center", va="center", fontsize=6,
                        color="white" if dark else "black")
    if title:
        ax.set_title(plain(title), fontsize=10)
    return fig
