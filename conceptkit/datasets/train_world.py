"""Reproduce the shipped weights of a world's model.

    python -m conceptkit.datasets.train_world --world textures [--arch resnet] [--out PATH]

Trains the model deterministically on the CPU (one thread, deterministic algorithms, fresh
training images every epoch), reports the held-out accuracy on a test split of another seed and
how much the model relies on each part, and saves the weights with that record as one
``.safetensors`` file (no pickle) plus the record as a ``.json`` file beside it. The shapes world's
CNN is trained by ``python -m conceptkit.datasets.train_reference``; ``--world shapes`` (with no
``--arch`` or ``--arch cnn``) runs it.

An architecture the world does not ship, or other architecture settings, train a model to check
explanations on that the defaults were not chosen on; it must go elsewhere (``--out``) and loads
with ``world.model(weights=PATH)``:

    python -m conceptkit.datasets.train_world --world scales --arch vit \
        --config patch_size=4 --epochs 60 --out scales_vit_p4.safetensors

Without ``--out`` the shipped file is rewritten, and only with the shipped settings: any other
``--epochs``, ``--n-per-class``, ``--lr``, ``--seed`` or ``--config`` is refused unless ``--out``
names a file outside the package's weights folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..io import save_file
from ._world import WEIGHTS_DIR, WORLD_WEIGHTS_KIND, WORLD_WEIGHTS_VERSION, WORLDS, load_world


def writes_shipped_weights(out: Path) -> bool:
    """Whether ``out`` is a file in the package's folder of shipped weights."""
    return out.resolve().parent == WEIGHTS_DIR.resolve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conceptkit.datasets.train_world",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, choices=WORLDS, help="the world to train on")
    parser.add_argument("--arch", default=None, help="architecture (default: the world's default); "
                        "'resnet' or 'vit' also where the world does not ship it (with --out)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="an architecture setting (JSON value), e.g. patch_size=4; repeatable; "
                        "needs --out")
    parser.add_argument("--out", type=Path, default=None, help="weights file to write "
                        "(default: the shipped file of that world and architecture, only with "
                        "the shipped settings; other settings need --out)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the world's)")
    parser.add_argument("--n-per-class", type=int, default=None,
                        help="fresh training images per class per epoch (default: the world's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the world's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and model (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.suffix != ".safetensors":
        # the record goes beside it as OUT.json: an OUT named .json would be overwritten by it
        parser.error(f"--out must name a .safetensors file (its record is written beside it "
                     f"as .json); got {str(args.out)!r}.")
    if args.world == "shapes" and args.arch in (None, "cnn"):
        from . import train_reference

        extra = ["--out", str(args.out)] if args.out is not None else []
        for flag, value in (("--epochs", args.epochs), ("--n-per-class", args.n_per_class),
                            ("--lr", args.lr)):
            if value is not None:
                extra += [flag, str(value)]
        for item in args.config:  # the reference CNN has one setting: its width
            key, sep, value = item.partition("=")
            if key.strip() != "width" or not sep:
                parser.error(f"the shapes world's CNN takes one setting, width=N; got "
                             f"--config {item!r}.")
            extra += ["--width", value.strip()]
        return train_reference.main([*extra, "--seed", str(args.seed)]
                                    + (["--no-progress"] if args.no_progress else []))
    from ._world_training import train_world_model

    world = load_world(args.world)
    config = {}
    for item in args.config:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError(item)
            config[key.strip()] = json.loads(value)
        except ValueError:  # json.JSONDecodeError is one
            parser.error(f"--config takes KEY=VALUE with a JSON value (e.g. patch_size=4); "
                         f"got {item!r}.")
    try:
        spec = world.training_spec(args.arch, config or None)
        differ = world.unshipped_settings(args.arch, config or None, epochs=args.epochs,
                                          n_per_class=args.n_per_class, lr=args.lr, seed=args.seed)
        if differ and (args.out is None or writes_shipped_weights(args.out)):
            raise ValueError(f"the {args.world!r} world ships no {spec.architecture!r} model with "
                             f"these settings ({', '.join(differ)}): pass --out PATH outside the "
                             f"package's weights folder (the shipped weights stay as they are).")
        if args.out is not None and writes_shipped_weights(args.out) and (
                args.out.resolve() != spec.weights_path(world.name).resolve()):
            raise ValueError(f"--out {str(args.out)!r} is another shipped weights file; write the "
                             f"{args.world!r} {spec.architecture!r} model to "
                             f"{str(spec.weights_path(world.name))!r} or outside the package.")
        model, info = train_world_model(args.world, args.arch, epochs=args.epochs, seed=args.seed,
                                        n_per_class=args.n_per_class, lr=args.lr,
                                        progress=not args.no_progress, config=config or None)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    out = args.out if args.out is not None else spec.weights_path(world.name)
    save_file(out, model.state_dict(), info, kind=WORLD_WEIGHTS_KIND, version=WORLD_WEIGHTS_VERSION)
    record = {**info, "file": out.name, "file_bytes": out.stat().st_size}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{world.name}/{spec.architecture}: trained in {info['train_seconds']:.1f} s; held-out "
          f"accuracy {info['test_accuracy']:.4f} ({info['n_parameters']} parameters)")
    for class_name, row in info["reliance"].items():
        shown = ", ".join(f"{part} {value:+.2f}" for part, value in row.items() if value is not None)
        print(f"  reliance of {class_name!r}: {shown}")
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
