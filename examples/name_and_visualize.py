"""Concepts in words and pictures on a real model, offline: EfficientNet-Lite0, class espresso.

CRAFT is fitted at ``bn2`` on augmented views of scikit-image's ``coffee`` photo, exactly as in
``examples/real_model.py``; then every concept is named with ``"classes"`` (the ImageNet classes
its direction pushes most through the rest of the network, espresso itself left out, with timm's
WordNet definitions) and the most important ones are drawn with MACO (phase-only optimisation
under the magnitude spectrum of the views themselves; nothing is downloaded).

Run from the repository root::

    python examples/name_and_visualize.py                     # names only, ~1-2 min
    python examples/name_and_visualize.py --figure docs/images/concept_visualisations.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_model import explain  # noqa: E402

from conceptkit.datasets import efficientnet_lite0  # noqa: E402
from conceptkit.report import concept_colors  # noqa: E402


def figure(result, visualisations: dict, path: Path, n_crops: int = 4, dpi: int = 100) -> Path:
    """One row per visualised concept: name and gain, top crops, MACO image, its masked view."""
    rows = list(visualisations)
    colors = concept_colors(result.n_concepts)
    fig = Figure(figsize=(2.0 * (n_crops + 2) + 2.4, 2.1 * len(rows) + 0.5))
    grid = fig.add_gridspec(len(rows), n_crops + 2, left=0.2, right=0.995, top=0.93,
                            bottom=0.01, wspace=0.05, hspace=0.12)
    rank = {int(c): r for r, c in enumerate(result.ranking)}
    for r, concept in enumerate(rows):
        crops, _ = result.top_examples(concept, n_crops, image_size=160)
        vis = visualisations[concept]
        pictures = [c.permute(1, 2, 0).numpy() for c in crops]
        pictures += [vis.image.permute(1, 2, 0).numpy(), vis.masked().permute(1, 2, 0).numpy()]
        for col, picture in enumerate(pictures):
            ax = fig.add_subplot(grid[r, col])
            ax.imshow(np.clip(picture, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color(colors[rank[concept]])
                side.set_linewidth(2.5)
            if r == 0:
                title = ("top crop" if col < n_crops else
                         "MACO" if col == n_crops else "MACO, transparency")
                ax.set_title(title, fontsize=9)
        entry = result.names[concept]
        fig.text(0.19, 1 - (r + 0.5) / len(rows) * 0.92 - 0.07,
                 f"concept {concept} (rank {rank[concept] + 1})\n\"{entry.label}\"\n"
                 f"gain {entry.score:.2f}\n" + "\n".join(n for n, _ in entry.runner_ups[:2]),
                 ha="right", va="center", fontsize=9, color=colors[rank[concept]],
                 fontweight="bold")
    fig.suptitle(f"EfficientNet-Lite0, class '{result.class_name}', layer {result.layer}: "
                 f"concepts named by the classes they push ('classes') and drawn with MACO",
                 fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-views", type=int, default=32)
    parser.add_argument("--n-concepts", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-visualized", type=int, default=3)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    bundle = efficientnet_lite0()
    result, _ = explain(bundle, "coffee", "espresso", args)
    names = result.name_concepts("classes", progress=not args.quiet)
    print(names)
    for c in result.ranking:
        entry = names[int(c)]
        print(f"   concept {int(c)} (importance {result.importances[c]:.3f}): {entry.label} — "
              f"{entry.description}")
    if args.figure is not None:
        visualisations = {}
        for c in result.ranking[:args.n_visualized]:
            tick = time.perf_counter()
            visualisations[int(c)] = result.visualize(int(c), steps=args.steps, seed=args.seed,
                                                      progress=not args.quiet)
            objective = visualisations[int(c)].objective
            print(f"   MACO concept {int(c)}: {args.steps} steps in "
                  f"{time.perf_counter() - tick:.0f} s, coefficient {objective[:8].mean():.3f} "
                  f"-> {objective[-8:].mean():.3f} (best crop "
                  f"{float(result.bank.codes[:, int(c)].max()):.3f})")
        print(f"   figure {figure(result, visualisations, args.figure)}")
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
