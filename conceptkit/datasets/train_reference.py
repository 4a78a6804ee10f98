"""Reproduce the shipped reference CNN weights.

    python -m conceptkit.datasets.train_reference [--out PATH] [--epochs 5] [--seed 0]

Without ``--out`` the shipped file is rewritten, and only with the shipped settings (the
defaults); other settings need ``--out`` outside the package's weights folder.

Generates the train and val splits of the concept dataset, trains :class:`ReferenceCNN`
deterministically on the CPU (one thread and deterministic algorithms, as ``train_world``; the
record says so), reports held-out accuracy on spurious-free and cue-correlated test
splits and how much the model relies on the spurious cue, and saves the weights with that record
as one ``.safetensors`` file (no pickle, format version 2, with a content digest).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..io import save_file
from ._reference import WEIGHTS_KIND, WEIGHTS_PATH, WEIGHTS_VERSION
from ._training import _REFERENCE_DEFAULTS, train_reference_cnn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conceptkit.datasets.train_reference",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="weights file to write (default: "
                        "the shipped file, only with the shipped settings; other settings need "
                        "--out)")
    defaults = dict(_REFERENCE_DEFAULTS)  # the shipped model's settings
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
    if args.out is not None and args.out.suffix != ".safetensors":
        parser.error(f"--out must name a .safetensors file; got {str(args.out)!r}.")
    differ = [f"--{name.replace('_', '-')} {getattr(args, name)} (shipped {defaults[name]})"
              for name, _, _ in options if getattr(args, name) != defaults[name]]
    if differ and (args.out is None or args.out.resolve().parent == WEIGHTS_PATH.parent.resolve()):
        # the shipped file (and its folder) holds the shipped model only
        parser.error(f"the shipped reference CNN is trained with other settings ("
                     f"{', '.join(differ)}): pass --out PATH outside the package's weights folder "
                     f"(the shipped weights stay as they are).")
    if args.out is not None and args.out.resolve().parent == WEIGHTS_PATH.parent.resolve() and (
            args.out.resolve() != WEIGHTS_PATH.resolve()):
        parser.error(f"--out {str(args.out)!r} is another shipped weights file; write the "
                     f"reference CNN to {str(WEIGHTS_PATH)!r} or outside the package.")
    out = WEIGHTS_PATH if args.out is None else args.out
    try:
        model, info = train_reference_cnn(**{name: getattr(args, name) for name, _, _ in options},
                                          progress=not args.no_progress)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    save_file(out, model.state_dict(), info, kind=WEIGHTS_KIND, version=WEIGHTS_VERSION)
    print(f"trained in {info['train_seconds']:.1f} s; held-out accuracy: spurious-free "
          f"{info['test_accuracy']:.4f}, with the cue {info['test_accuracy_with_spurious']:.4f}")
    print("spurious cue effect: " + json.dumps(info["spurious_cue_effect"], indent=1))
    print("control (a distractor drawn in): " + json.dumps(info["distractor_control_effect"], indent=1))
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
