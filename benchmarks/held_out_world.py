"""A held-out ground-truth world for issue 13: ``clutter``, a kind of world the defaults were not
chosen on (it is not in ``conceptkit.datasets.WORLDS`` and nothing in the library was tuned on it).

The four shipped worlds draw parts on a smooth muted gradient, never overlapping and fully
visible (shapes, textures, scales: joint presence of two parts; context: a spatial relation).
``clutter`` is a different kind: **figure-ground segregation under occlusion**. Its rules
(exact; ``make_clutter``):

* 64 px images. The background is busy: the worlds' muted gradient, then ``N_CLUTTER``
  (12-18) clutter elements of many colours drawn over it: axis-aligned bricks (each side 3-24 px),
  striped blobs (two random colours, 10-24 px) and speckled blobs (10-20 px). Clutter colours are
  random in HSV (saturation 0.3-1, value 0.35-1), so they include the parts' colours. No clutter
  element has a part's shape (blobs are striped or speckled, never a plain disk).
* Seven parts, each a plain shape in one colour (jitter +-0.06 per channel): four causal parts,
  orange ring, cyan cross, magenta triangle, lime disk; three distractors, orange triangle, cyan
  ring, magenta disk. Every distractor shares its **colour** with one causal part and its
  **shape** with another, so neither colour nor shape alone names a part: only their conjunction.
* Four classes. Class ``c`` is the joint presence of causal parts ``c`` and ``c + 1 mod 4`` (a
  cycle); exactly those two causal parts are drawn. Each distractor is drawn with probability
  ``DISTRACTOR_RATE`` (0.4) independently of the class.
* Parts are 14-22 px, drawn in random order on top of the clutter; each part after the first is,
  with probability ``OVERLAP_RATE`` (0.5), placed so that its box overlaps the box of an earlier
  part, else uniformly. Later parts occlude earlier ones. Then 0-2 thin (1 px) "twig" lines are
  drawn over everything. A layout is redrawn until every part keeps at least ``MIN_VISIBLE``
  (60 %) of its own footprint visible (and at least 40 px).
* A part's mask is its **visible** footprint: its shape minus the pixels of parts drawn after it
  and of the twigs. Pixel noise and clipping as in the other worlds (``_canvas.finish``).
* Random streams: ``_canvas.split_rng(seed, split, WORLD_ID)`` with ``WORLD_ID = 13``, so splits
  never share images and the stream is not one of a shipped world.

Models (``World`` built by hand in ``clutter_world()``, not registered): ``resnet`` with the
textures/scales worlds' ResNet settings (``width=16, n_blocks=1``, layer ``layer3``, AdamW 3e-3,
8 epochs of 500 fresh images per class, batch 64, flips) and ``cnn`` (the shapes world's reference
CNN architecture, ``width=16``, layer ``block4``, trained with the same world-training loop and
settings as the ResNet, not ``train_reference``'s). Both are trained by the library's
``_world_training.train_world_model``, which takes the ``World`` itself.

Scoring is ``benchmarks/_world_grid.run_grid`` called exactly as ``eval_ground_truth.py --worlds
... --methods ice --importances pixel_ablation --kinds auto --no-deletion`` calls it: 30 test
images per class, 10 concepts, fill ``median``, reliance floor 0, the row "library default: ...".
TCAV: ``benchmarks/eval_tcav.run`` with its defaults (40 class images, 40 examples, 10 runs).

Commands (one thread; on this 2-core machine: training 115-180 s wall for the ResNet, 107 s for
the CNN, bit-identical weights on a rerun; scoring 5 seeds ~75-85 s; TCAV 3 seeds ~2 min)::

    OMP_NUM_THREADS=1 python benchmarks/held_out_world.py --stats \
        --preview out/heldout/clutter.png
    OMP_NUM_THREADS=1 python benchmarks/held_out_world.py --train --arch resnet
    OMP_NUM_THREADS=1 python benchmarks/held_out_world.py --train --arch cnn
    OMP_NUM_THREADS=1 python benchmarks/held_out_world.py --arch resnet --reliance --eval \
        --seeds 0,1,2,3,4 --json benchmarks/results/issue13_held_out_world.json
    OMP_NUM_THREADS=1 python benchmarks/held_out_world.py --arch cnn --reliance --eval \
        --seeds 0,1,2,3,4 --json benchmarks/results/issue13_held_out_world_cnn.json
    OMP_NUM_THREADS=1 python benchmarks/held_out_world.py --reliance --tcav --tcav-seeds 0,1,2 \
        --json benchmarks/results/issue13_held_out_world_tcav.json
    OMP_NUM_THREADS=1 python benchmarks/held_out_world.py --arch cnn --tcav --tcav-seeds 0,1,2 \
        --json benchmarks/results/issue13_held_out_world_tcav_cnn.json

Results (``benchmarks/results/issue13_held_out_world*.json``; the training records are
``..._train_resnet.json`` and ``..._train_cnn.json``): held-out accuracy 0.980 (ResNet) and
0.983 (CNN). Both models treat class 1 (cyan cross + magenta triangle) as the class of images
with neither the orange ring nor the lime disk: with both causal parts painted out, images of any
class are called class 1 (87-99 %, 100 test images per class), so class 1's parts' reliance is
small (cross 0.13-0.18, triangle 0.03-0.12).
The library default, mean over 4 classes x seeds 0-4 (ResNet / CNN): top concept on the most
relied-on part 0.95 / 0.80 (tie-aware 0.95 / 0.95), its pointing game 0.91 / 0.82, Spearman
0.79 / 0.72 (ceiling 0.93 / 0.94). Bar not met. Every top concept off the most relied-on part is
in class 1; per class over seeds, class 1 misses every metric (PG 0.69 / 0.34, Spearman 0.61 /
0.29) and the ResNet's class 2 misses the Spearman (0.77); the other classes meet the bar. TCAV's default on the
ResNet: 5/6 relied-on causal pairs in each of seeds 0-2 (the cyan cross of class 0 is never
significant) and 1, 0, 1 false positives of 20 (the cyan ring in class 1); on the CNN 8/8 and
0/20 in each seed (bar met). TCAV's concept images
are ``eval_tcav``'s: the part pasted on a smooth gradient, not on this world's clutter.

Weights go to ``out/heldout/clutter_{arch}.safetensors`` under the repository (ignored by git;
``--weights`` to change): run ``--train`` first, ``--reliance``, ``--eval`` and ``--tcav`` read them.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from conceptkit.datasets import ConceptDataset
from conceptkit.datasets._canvas import backgrounds, blob, finish, split_rng
from conceptkit.datasets._parts import _shape_mask
from conceptkit.datasets._world import _RESNET, ModelSpec, World

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WORLD_NAME = "clutter"
WORLD_ID = 13
IMAGE_SIZE = 64
_ORANGE, _CYAN = (1.00, 0.55, 0.05), (0.05, 0.80, 0.85)
_MAGENTA, _LIME = (0.85, 0.10, 0.75), (0.55, 0.90, 0.10)
_PARTS: tuple[tuple[str, str, tuple[float, float, float]], ...] = (
    ("orange ring", "ring", _ORANGE),
    ("cyan cross", "cross", _CYAN),
    ("magenta triangle", "triangle", _MAGENTA),
    ("lime disk", "disk", _LIME),
    ("orange triangle", "triangle", _ORANGE),
    ("cyan ring", "ring", _CYAN),
    ("magenta disk", "disk", _MAGENTA),
)
PART_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _PARTS)
CLASS_PARTS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3), (3, 0))
CLASS_NAMES: tuple[str, ...] = tuple(f"{PART_NAMES[a]} + {PART_NAMES[b]}" for a, b in CLASS_PARTS)
DISTRACTOR_PARTS: tuple[int, ...] = (4, 5, 6)
DISTRACTOR_RATE = 0.4
OVERLAP_RATE = 0.5
MIN_VISIBLE = 0.6
MIN_VISIBLE_PX = 40
SIDE_RANGE = (14, 22)
N_CLUTTER = (12, 18)
N_TWIGS = (0, 2)
#: Where ``--train`` writes the weights and the other commands read them by default: the repo's
#: ``out/`` folder (ignored by git); ``--weights PATH`` for another file.
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "out" / "heldout"


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0))
    return np.asarray(rgb, dtype=np.float32)


def _clutter(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Paint 12-18 clutter elements (bricks, striped blobs, speckled blobs) into ``canvas``."""
    size = canvas.shape[0]
    for _ in range(int(rng.integers(N_CLUTTER[0], N_CLUTTER[1] + 1))):
        kind = rng.integers(3)
        if kind == 0:  # brick
            h, w = (int(v) for v in rng.integers(3, 25, size=2))
            top, left = int(rng.integers(-h // 2, size - h // 2)), int(rng.integers(-w // 2, size - w // 2))
            canvas[max(top, 0):top + h, max(left, 0):left + w] = _random_colour(rng)
            continue
        side = int(rng.integers(10, 25 if kind == 1 else 21))
        footprint = blob(side, rng)
        if kind == 1:  # striped blob
            yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
            angle, period = rng.uniform(0.0, np.pi), rng.uniform(3.0, 7.0)
            pattern = np.mod(xx * np.cos(angle) + yy * np.sin(angle), period) < period / 2.0
        else:  # speckled blob, 2 px cells
            cells = rng.random(((side + 1) // 2, (side + 1) // 2)) < 0.5
            pattern = np.kron(cells, np.ones((2, 2), dtype=bool))[:side, :side]
        a, b = _random_colour(rng), _random_colour(rng)
        top, left = (int(v) for v in rng.integers(-side // 3, size - 2 * side // 3, size=2))
        fill = np.where(pattern[..., None], a, b)
        # clip the blob's box to the image
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + side, size), min(left + side, size)
        sub = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        region = canvas[y0:y1, x0:x1]
        region[footprint[sub]] = fill[sub][footprint[sub]]


def _twig(size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(size, size)`` 1 px line between two random points on the border region."""
    (y0, x0), (y1, x1) = rng.uniform(0, size, size=(2, 2))
    n = int(np.ceil(max(abs(y1 - y0), abs(x1 - x0)))) * 2 + 2
    t = np.linspace(0.0, 1.0, n)
    ys = np.clip(np.round(y0 + t * (y1 - y0)).astype(int), 0, size - 1)
    xs = np.clip(np.round(x0 + t * (x1 - x0)).astype(int), 0, size - 1)
    out = np.zeros((size, size), dtype=bool)
    out[ys, xs] = True
    return out


def _layout(shown: list[int], size: int, rng: np.random.Generator):
    """Full footprints ``(len(shown), size, size)`` of the parts in drawing order, redrawn until
    every part keeps ``MIN_VISIBLE`` of its footprint visible under the later ones."""
    for _ in range(200):
        full = np.zeros((len(shown), size, size), dtype=bool)
        boxes = []
        for j, _k in enumerate(shown):
            side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
            if boxes and rng.random() < OVERLAP_RATE:
                ptop, pleft, pside = boxes[int(rng.integers(len(boxes)))]
                reach = 0.7 * (pside + side) / 2.0
                cy = ptop + pside / 2.0 + rng.uniform(-reach, reach)
                cx = pleft + pside / 2.0 + rng.uniform(-reach, reach)
                top = int(np.clip(round(cy - side / 2.0), 0, size - side))
                left = int(np.clip(round(cx - side / 2.0), 0, size - side))
            else:
                top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            boxes.append((top, left, side))
            full[j, top:top + side, left:left + side] = _shape_mask(_PARTS[_k][1], side, rng)
        covered = np.zeros((size, size), dtype=bool)
        ok = True
        for j in range(len(shown) - 1, -1, -1):
            visible = full[j] & ~covered
            if visible.sum() < max(MIN_VISIBLE_PX, MIN_VISIBLE * full[j].sum()):
                ok = False
                break
            covered |= full[j]
        if ok:
            return full
    raise RuntimeError("could not lay out the parts")  # pragma: no cover


def make_clutter(n_per_class: int, seed: int = 0, split: str = "train",
                 progress: bool = False, stats: dict | None = None) -> ConceptDataset:
    """Images of the ``clutter`` world (``N = 4 * n_per_class``, ordered by class, 64 px).

    ``stats``, a dict, receives per drawn part the fraction of its footprint that is hidden.
    """
    rng = split_rng(seed, split, WORLD_ID)
    n_classes, n_parts, size = len(CLASS_PARTS), len(_PARTS), IMAGE_SIZE
    n_images = n_classes * n_per_class
    labels = np.repeat(np.arange(n_classes), n_per_class)
    canvas = backgrounds(n_images, size, rng)
    masks = np.zeros((n_images, n_parts, size, size), dtype=bool)
    presence = np.zeros((n_images, n_parts), dtype=np.float32)
    for i in range(n_images):
        _clutter(canvas[i], rng)
        shown = list(CLASS_PARTS[labels[i]])
        shown += [k for k in DISTRACTOR_PARTS if rng.random() < DISTRACTOR_RATE]
        shown = [shown[j] for j in rng.permutation(len(shown))]
        full = _layout(shown, size, rng)
        for j, k in enumerate(shown):
            colour = np.clip(np.asarray(_PARTS[k][2]) + rng.uniform(-0.06, 0.06, size=3), 0.0, 1.0)
            canvas[i][full[j]] = colour
        twigs = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(N_TWIGS[0], N_TWIGS[1] + 1))):
            line = _twig(size, rng)
            canvas[i][line] = _random_colour(rng) * 0.5
            twigs |= line
        covered = twigs.copy()
        for j in range(len(shown) - 1, -1, -1):
            masks[i, shown[j]] = full[j] & ~covered
            if stats is not None:
                stats.setdefault("hidden", []).append(1.0 - masks[i, shown[j]].sum() / full[j].sum())
                stats.setdefault("image", []).append(i)
            covered |= full[j]
            presence[i, shown[j]] = 1.0
    return finish(canvas, labels, presence, masks, rng=rng, world=WORLD_NAME,
                  part_names=list(PART_NAMES), class_names=list(CLASS_NAMES),
                  class_parts=[list(p) for p in CLASS_PARTS],
                  distractor_parts=list(DISTRACTOR_PARTS), split=split, seed=seed)


# ----------------------------------------------------------------------------- the World

_SPECS = {
    "resnet": ModelSpec("resnet", dict(_RESNET.config), _RESNET.layer, dict(_RESNET.training)),
    # the shapes world's reference CNN architecture with this world's 4 classes, trained by the
    # world-training loop with the ResNet's settings (train_reference is for the shapes world)
    "cnn": ModelSpec("cnn", {"n_classes": 4, "width": 16}, "block4", dict(_RESNET.training)),
}


def clutter_world() -> World:
    """The ``clutter`` world as a :class:`conceptkit.datasets._world.World` (not registered)."""
    return World(
        name=WORLD_NAME, architecture="resnet", layer=_SPECS["resnet"].layer,
        class_names=list(CLASS_NAMES), part_names=list(PART_NAMES),
        class_parts=[list(p) for p in CLASS_PARTS], distractor_parts=list(DISTRACTOR_PARTS),
        description=__doc__.split("\n\n")[2], architectures=tuple(_SPECS),
        layers={a: s.layer for a, s in _SPECS.items()},
        train_commands={a: f"python benchmarks/held_out_world.py --train --arch {a}" for a in _SPECS},
        image_size=IMAGE_SIZE, _generate=make_clutter, _specs=dict(_SPECS))


def weights_path(arch: str) -> Path:
    return DEFAULT_DIR / f"clutter_{arch}.safetensors"


# ----------------------------------------------------------------------------- commands

def world_stats(n_per_class: int = 250, seed: int = 0) -> dict:
    """How much occlusion and clutter the test split holds."""
    hidden: dict = {}
    data = make_clutter(n_per_class, seed=seed, split="test", stats=hidden)
    frac, image = np.asarray(hidden["hidden"]), np.asarray(hidden["image"])
    occluded_images = np.unique(image[frac > 0.02])
    shown = data.concepts > 0
    visible = data.masks.flatten(2).sum(2).float()
    return {"n_images": len(data), "parts_per_image": float(shown.sum(1).float().mean()),
            "mean_visible_px": float(visible[shown].mean()),
            "min_visible_px": int(visible[shown].min()),
            "distractor_rate": [float(shown[:, k].float().mean()) for k in DISTRACTOR_PARTS],
            "parts_occluded_over_2pct": float(np.mean(frac > 0.02)),
            "images_with_an_occluded_part": float(len(occluded_images) / len(data)),
            "mean_hidden_fraction_of_occluded": float(frac[frac > 0.02].mean()),
            "max_hidden_fraction": float(frac.max())}


def preview(path: Path, n_per_class: int = 8) -> None:
    from PIL import Image

    data = make_clutter(n_per_class, seed=0, split="test")
    imgs = (data.images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    union = data.masks.any(1).numpy()
    rows = []
    for c in range(4):
        row = []
        for i in range(c * n_per_class, (c + 1) * n_per_class):
            overlay = imgs[i].copy()
            overlay[~union[i]] = (overlay[~union[i]] * 0.25).astype(np.uint8)
            row.append(np.concatenate([imgs[i], overlay], 0))
        rows.append(np.concatenate(row, 1))
    grid = np.concatenate(rows, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    print(f"saved {path}: per class, {n_per_class} test images over the same images with all "
          f"but the visible part masks darkened")


def train(arch: str, out: Path, epochs: int | None, seed: int) -> dict:
    from conceptkit.datasets import _world_training
    from conceptkit.datasets._world import WORLD_WEIGHTS_KIND, WORLD_WEIGHTS_VERSION
    from conceptkit.io import save_file

    model, info = _world_training.train_world_model(clutter_world(), arch, epochs=epochs,
                                                    seed=seed, progress=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, model.state_dict(), info, kind=WORLD_WEIGHTS_KIND, version=WORLD_WEIGHTS_VERSION)
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"clutter/{arch}: trained in {info['train_seconds']:.1f} s wall, "
          f"{info['train_cpu_seconds']:.1f} s CPU; held-out accuracy {info['test_accuracy']:.4f}")
    for record in info["history"]:
        print(f"  {record}")
    for class_name, row in info["reliance"].items():
        print(f"  reliance of {class_name!r}: "
              + ", ".join(f"{p} {v:+.3f}" for p, v in row.items() if v is not None))
    print(f"saved {out}")
    return info


def reliance_table(arch: str, weights: Path, n_per_class: int = 100, seed: int = 0) -> dict:
    """``conceptkit.evaluate.reliance`` (median fill) per class on test images of ``seed``."""
    from conceptkit.evaluate import reliance

    world = clutter_world()
    model = world.model(arch=arch, weights=weights)
    data = world.sample(n_per_class, seed=seed, split="test")
    out = {}
    for c in range(world.n_classes):
        rows = np.flatnonzero(data.labels.numpy() == c)
        r = reliance(model, data.images[rows], data.masks[rows], c, "median",
                     part_names=list(PART_NAMES), progress=False)
        out[CLASS_NAMES[c]] = {PART_NAMES[k]: (None if not np.isfinite(v) else round(float(v), 4))
                               for k, v in enumerate(r.expected)}
    return out


def evaluate(arch: str, weights: Path, seeds: list[int], n_per_class: int = 30,
             n_concepts: int = 10) -> dict:
    import _world_grid as grid

    world = clutter_world()
    at = grid.WorldAt(world, arch, str(weights))
    start = time.perf_counter()
    results = grid.run_grid([(at.name, at)], seeds, ["ice"], ["pixel_ablation"], n_per_class,
                            n_concepts, "test", "median", False, None, log=print,
                            reliance_floor=0.0, extra_kinds=[], kinds=["auto"])
    setting = {"worlds": f"clutter:{arch}@{weights}", "seeds": seeds, "n_per_class": n_per_class,
               "n_concepts": n_concepts, "split": "test", "fill": "median", "methods": ["ice"],
               "importances": ["pixel_ablation"], "classes": None, "deletion": False,
               "reliance_floor": 0.0, "extra_kinds": [], "kinds": ["auto"]}
    results["setting"] = setting
    grid.print_grid(results, setting)
    rows = [r for r in results["records"] if r["config"] == grid.DEFAULT_CONFIG]
    keys = ("top_on_most_relied", "top_on_most_relied_parts", "top_pointing", "top_pointing_parts",
            "spearman", "spearman_ceiling")
    short = ("top_on_most", "top_on_tied", "top_PG", "top_PG_tied", "spearman", "ceiling")
    print("\n# library default, per seed and class (top_on_tied / top_PG_tied: the tie-aware "
          "versions, against any of the most relied-on parts tied with the first):")
    print(f"{'seed':>4} {'cls':>3} {'most relied (drop) [tied]':<44} {'top part':<17} "
          + " ".join(f"{k:>11}" for k in short))
    for r in rows:
        drop = r["most_relied_drop"]
        most = f"{r['most_relied_part']} ({drop:.2f})" if drop is not None else str(r["most_relied_part"])
        tied = [p for p in r["most_relied_parts"] if p != r["most_relied_part"]]
        most += f" [{', '.join(tied)}]" if tied else ""
        print(f"{r['seed']:>4} {r['class_id']:>3} {most:<44} {str(r['top_part']):<17} "
              + " ".join(f"{float(r[k]):>11.3f}" if r[k] is not None else f"{'–':>11}"
                         for k in keys))

    def means(mine):
        return {k: grid._mean(r[k] for r in mine) for k in keys}

    def line(label, values):
        print(f"  {label:<10}: " + ", ".join(f"{k} {'–' if v is None else f'{v:.3f}'}"
                                            for k, v in zip(short, values.values())))

    per_seed = {seed: means([r for r in rows if r["seed"] == seed]) for seed in seeds}
    per_class = {c: means([r for r in rows if r["class_id"] == c]) for c in range(world.n_classes)}
    print("\n# means per seed (over classes):")
    for seed, values in per_seed.items():
        line(f"seed {seed}", values)
    print("# means per class (over seeds):")
    for c, values in per_class.items():
        line(f"class {c}", values)
    overall = means(rows)
    line("all", overall)
    if len(seeds) > 3:
        results["default_mean_seeds_0_2"] = means([r for r in rows if r["seed"] in seeds[:3]])
        line(f"seeds {','.join(map(str, seeds[:3]))}", results["default_mean_seeds_0_2"])
    results["default_per_class"] = per_class
    results["default_per_seed"] = per_seed
    results["default_mean"] = overall
    results["seconds_total"] = time.perf_counter() - start
    return results


def run_tcav(arch: str, weights: Path, seeds: list[int]) -> dict:
    """``eval_tcav.run`` with its defaults, once per seed (``{"seed S": result}``)."""
    import _world_grid as grid
    import eval_tcav

    at = grid.WorldAt(clutter_world(), arch, str(weights))
    out = {f"seed {seed}": eval_tcav.run([(at.name, at)], 40, 40, 10, seed) for seed in seeds}
    print("\n# TCAV counts per seed (hits among relied-on causal pairs, false positives among "
          "non-causal pairs):")
    for key, result in out.items():
        for label, value in result[at.name].items():
            if not label.startswith("_"):
                c = value["counts"]
                print(f"  {key} {label:<28} hits {c['hits']}/{c['causal']}, unused flagged "
                      f"{c['unused_flagged']}/{c['unused']}, false positives "
                      f"{c['false_positives']}/{c['non_causal']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preview", type=Path, default=None, help="save a PNG of test images")
    parser.add_argument("--stats", action="store_true", help="print the test split's statistics")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--reliance", action="store_true",
                        help="per-class reliance (evaluate.reliance, median fill, 100 test images "
                             "per class, seed 0)")
    parser.add_argument("--tcav", action="store_true")
    parser.add_argument("--arch", default="resnet", choices=tuple(_SPECS))
    parser.add_argument("--weights", type=Path, default=None,
                        help="the model file: --train writes it, --reliance/--eval/--tcav read it "
                             "(run --train first; default out/heldout/clutter_ARCH.safetensors "
                             "under the repository)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tcav-seeds", default="0,1,2", help="TCAV's seeds")
    parser.add_argument("--n-per-class", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    def integers(flag: str, value: str) -> list[int]:
        try:
            return [int(item) for item in value.split(",")]
        except ValueError:
            parser.error(f"{flag}: comma-separated integers expected; got {value!r}")

    seeds, tcav_seeds = integers("--seeds", args.seeds), integers("--tcav-seeds", args.tcav_seeds)
    if args.n_per_class < 1:
        parser.error(f"--n-per-class must be >= 1; got {args.n_per_class}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1; got {args.epochs}")
    weights = args.weights or weights_path(args.arch)
    if (args.reliance or args.eval or args.tcav) and not args.train and not weights.is_file():
        parser.error(f"no model file at {weights}: run --train --arch {args.arch} first (or pass "
                     f"--weights PATH)")
    torch.set_num_threads(1)
    out: dict = {}
    if args.preview:
        preview(args.preview)
    if args.stats:
        out["stats"] = world_stats()
        print(json.dumps(out["stats"], indent=1))
    if args.train:
        out["train"] = train(args.arch, weights, args.epochs, args.train_seed)
    if args.reliance:
        out["reliance"] = reliance_table(args.arch, weights)
        for name, row in out["reliance"].items():
            print(f"  {name}: " + ", ".join(f"{p} {v:+.3f}" for p, v in row.items() if v is not None))
    if args.eval:
        out["eval"] = evaluate(args.arch, weights, seeds, args.n_per_class)
    if args.tcav:
        out["tcav"] = run_tcav(args.arch, weights, tcav_seeds)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=float) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
