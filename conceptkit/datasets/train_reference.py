"""Reproduce the shipped reference CNN weights.

    python -m conceptkit.datasets.train_reference [--out PATH] [--epochs 5] [--seed 0]

Generates the train and val splits of the concept dataset, trains :class:`ReferenceCNN`
deterministically on the CPU, reports held-out accuracy on spurious-free and cue-correlated test
splits and how much the model relies on the spurious cue, and saves the weights with that record
as one ``.safetensors`` file (no pickle).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..io import save_file
from ._reference import WEIGHTS_KIND, WEIGHTS_PATH, WEIGHTS_VERSION
from ._training import train_reference_cnn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conceptkit.datasets.train_reference",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file to write")
    defaults = {name: p.default for name, p in inspect.signature(train_reference_cnn).parameters.items()}
    options = [("epochs", int, "training epochs"), ("seed", int, "seed of data and model"),
               ("n_per_class", int, "training images per class"),
               ("n_val_per_class", int, "validation images per class"),
               ("n_test_per_class", int, "test images per class"),
               ("batch_size", int, "batch size"), ("lr", float, "Adam learning rate"),
               ("width", int, "channels of the first block")]
    for name, kind, text in options:
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=defaults[name],
                            help=f"{text} (default {defaults[name]})")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error(f"--out must name a .safetensors file; got {str(args.out)!r}.")
    try:
        model, info = train_reference_cnn(**{name: getattr(args, name) for name, _, _ in options},
                                          progress=not args.no_progress)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    save_file(args.out, model.state_dict(), info, kind=WEIGHTS_KIND, version=WEIGHTS_VERSION)
    print(f"trained in {info['train_seconds']:.1f} s; held-out accuracy: spurious-free "
          f"{info['test_accuracy']:.4f}, with the cue {info['test_accuracy_with_spurious']:.4f}")
    print("spurious cue effect: " + json.dumps(info["spurious_cue_effect"], indent=1))
    print("control (a distractor drawn in): " + json.dumps(info["distractor_control_effect"], indent=1))
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
