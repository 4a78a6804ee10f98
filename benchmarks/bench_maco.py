"""MACO concept visualisation: CPU cost per step, and how far it drives a concept's coefficient.

For the reference CNN (``block4``, CRAFT with 10 concepts on 30 train images of each class of the
ground-truth dataset), the most important concept of every class is visualised; its coefficient on
32 random crops of the visualisation (the view it was optimised for) is compared with the best
coefficient among the class's own CRAFT crops. For EfficientNet-Lite0 (``bn2``, 224-px input,
376-px visualisation) only the cost of a step is measured, on a random concept direction bank.

Run: ``python benchmarks/bench_maco.py [--quick] [--steps 64]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import conceptkit  # noqa: E402
from conceptkit.datasets import make_concept_dataset, reference_model  # noqa: E402
from conceptkit.naming import visualize_concept  # noqa: E402
from conceptkit.naming._maco import _random_crops, crop_coefficients  # noqa: E402


def reference_cnn(steps: int, classes: list[int]) -> list[dict]:
    model = reference_model()
    train = make_concept_dataset(30, seed=0, split="train")
    explainer = conceptkit.ConceptExplainer(model, "block4", n_concepts=10, method="craft", seed=0,
                                            progress=False, importance="gradient_input")
    rows = []
    for c in classes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cc = explainer.fit(train.images[train.class_indices(c)], c)
        concept = int(cc.ranking[0])
        best = float(cc.bank.codes[:, concept].max())
        start = time.perf_counter()
        vis = visualize_concept(model, cc.bank, concept, cc.images, steps=steps, seed=0,
                                progress=False)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            crops = _random_crops(vis.image, 32, (0.5, 0.7), 64, torch.Generator().manual_seed(1))
            codes = crop_coefficients(model, cc.bank, crops)[:, concept]
        rows.append({"class": c, "concept": concept, "best_crop": best,
                     "vis_mean": float(codes.mean()), "vis_max": float(codes.max()),
                     "seconds": seconds, "seconds_per_step": seconds / steps})
    return rows


def efficientnet(steps: int) -> dict:
    from conceptkit.concepts import NMF
    from conceptkit.datasets import efficientnet_lite0, photo_views, sample_photos

    bundle = efficientnet_lite0()
    views = photo_views(sample_photos(names=["coffee"])["coffee"], 8, image_size=224, seed=0)
    explainer = conceptkit.ConceptExplainer(bundle.model, "bn2", n_concepts=4, seed=0,
                                            progress=False, preprocess=bundle.normalize,
                                            importance="gradient_input", method="ice",
                                            factorizer=NMF(4, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cc = explainer.fit(views, 967)
    start = time.perf_counter()
    vis = visualize_concept(bundle.model, cc.bank, 0, views, steps=steps,
                            preprocess=bundle.normalize, seed=0, progress=False)
    seconds = time.perf_counter() - start
    return {"size": vis.params["image_size"], "steps": steps, "seconds": seconds,
            "seconds_per_step": seconds / steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two classes, 16 steps")
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args(argv)
    steps = 16 if args.quick else args.steps
    classes = [0, 1] if args.quick else list(range(6))
    print(f"# bench_maco {' '.join(argv if argv is not None else sys.argv[1:])}: "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"{torch.get_num_threads()} thread(s), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    rows = reference_cnn(steps, classes)
    for r in rows:
        print(f"reference CNN class {r['class']} concept {r['concept']}: best class crop "
              f"{r['best_crop']:.3f}, MACO crops mean {r['vis_mean']:.3f} (max {r['vis_max']:.3f}), "
              f"ratio {r['vis_mean'] / r['best_crop']:.2f}x; {steps} steps in {r['seconds']:.1f} s "
              f"({1000 * r['seconds_per_step']:.0f} ms/step)")
    beats = sum(r["vis_mean"] > r["best_crop"] for r in rows)
    print(f"reference CNN: the visualisation's mean crop beats the best class crop for {beats}/"
          f"{len(rows)} classes' top concepts; median ratio "
          f"{np.median([r['vis_mean'] / r['best_crop'] for r in rows]):.2f}x")
    eff = efficientnet(4 if args.quick else 16)
    print(f"EfficientNet-Lite0 bn2, {eff['size']} px visualisation, 6 crops of 224 px per step: "
          f"{1000 * eff['seconds_per_step']:.0f} ms/step ({eff['steps']} steps in "
          f"{eff['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
