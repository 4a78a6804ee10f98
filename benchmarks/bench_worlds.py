"""The ground-truth worlds and their shipped models: generation time, accuracy, size, reliance.

    .venv/bin/python benchmarks/bench_worlds.py [--quick]

For every world and every shipped architecture: the time to draw 100 images per class (median
of 3), the held-out accuracy on a fresh seed (200 images per class; 40 with --quick), the
parameter count, the weights' file size, the training time recorded with the weights, and the
measured reliance on each part (drop of the true-class probability when the part is painted out
with the image's channel median), per class. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from conceptkit.datasets import WORLDS, load_world  # noqa: E402
from conceptkit.datasets._architectures import n_parameters  # noqa: E402
from conceptkit.datasets._world_training import part_reliance  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 test images per class")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the test sample")
    args = parser.parse_args()
    n_test = 40 if args.quick else 200
    print(f"# machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}; test sample: {n_test} per class, seed {args.seed}, split 'test'")
    rows, reliance = [], []
    for name in WORLDS:
        world = load_world(name)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            world.sample(100, seed=0, split="train")
            timings.append(time.perf_counter() - started)
        data = world.sample(n_test, seed=args.seed, split="test")
        for arch in world.architectures:
            model = world.model(arch)
            with torch.no_grad():
                logits = torch.cat([model(data.images[i:i + 256]) for i in range(0, len(data), 256)])
            accuracy = float((logits.argmax(1) == data.labels).float().mean())
            info = world.info(arch)
            seconds = (f"{info['train_cpu_seconds']} s CPU" if "train_cpu_seconds" in info
                       else f"{info.get('train_seconds', '?')} s wall")
            size = world.spec(arch).weights_path(name).stat().st_size
            rows.append(f"| {name} | {arch} | `{world.layers[arch]}` | {100 * accuracy:.2f} % | "
                        f"{n_parameters(model):,} | {size / 1e6:.2f} MB | "
                        f"{seconds} | {np.median(timings):.2f} s |")
            drops = part_reliance(model, data)
            for c, parts in enumerate(world.class_parts):
                causal = ", ".join(f"{world.part_names[k]} {drops[c, k]:.2f}" for k in parts)
                others = [k for k in range(world.n_parts) if k not in parts and not np.isnan(drops[c, k])]
                top = max(others, key=lambda k: drops[c, k]) if others else None
                other = f"{world.part_names[top]} {drops[c, top]:.2f}" if top is not None else "-"
                reliance.append(f"| {name} | {arch} | {world.class_names[c]} | {causal} | {other} |")
    print("\n| world | arch | layer | held-out accuracy | parameters | weights | training | "
          "100 images/class drawn in |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| world | arch | class | reliance on its causal parts | largest other part |")
    print("|---|---|---|---|---|")
    print("\n".join(reliance))
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
