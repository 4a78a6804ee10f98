"""The parser of the ``conceptkit`` command and the dispatch to each command."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from ._checks import (
    WEIGHTS_HELP,
    CommandError,
    check_counts,
    check_out_dir,
    check_out_targets,
    check_seed_flag,
    command_terms,
    show_progress,
)
from ._explain import FACTORIZER_CHOICES
from ._naming import add_naming_arguments, check_naming_arguments

#: Every command, in the order ``--help`` lists them (README.md lists the same).
COMMANDS = ("demo", "explain", "report", "atlas", "train-cbm", "extract", "bench")

PROGRAM_DESCRIPTION = f"Command line: conceptkit {' | '.join(COMMANDS)}."


#: The report's options, for errors the library raises naming its own arguments (the saved
#: file is the positional argument ``path``, the name the library's errors use too).
REPORT_FLAGS = {"out_dir": "--out"}


def _cmd_report(args: argparse.Namespace) -> int:
    from .. import load
    from ..pipeline import ClassConcepts
    from ..report._write import class_slug

    with command_terms(REPORT_FLAGS):
        result = load(args.path)
        if not isinstance(result, ClassConcepts):
            raise CommandError(f"`path` {args.path!r} holds a {type(result).__name__}, not an "
                               f"explanation.")
        # the class's folder, written by a report before (its files are listed in its
        # .conceptkit-outputs.json), or not there: never a file conceptkit did not write
        check_out_targets(args.out, [class_slug(result.class_id, result.class_name
                                                or f"class {result.class_id}")])
        page = result.report(args.out)
    print(f"report {page}")
    return 0


#: The demo's options, for errors the library raises naming its own arguments.
DEMO_FLAGS = {"n_concepts": "--n-concepts", "seed": "--seed", "method": "--method",
              "out_dir": "--out", "n_per_class": "--n-per-class"}

#: The fewest images a class can have for ACE to keep any cluster: a kept cluster has more than
#: ``min_cluster_size`` (20) segments from ``m`` images with ``m`` > a tenth of its size, so
#: ``m >= 3`` (``concepts.ACE``).
ACE_MIN_IMAGES = 3


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    check_counts(args, {"n_per_class": 2})  # a class of one image has nothing to factorize
    if args.method == "ace" and args.n_per_class < ACE_MIN_IMAGES:
        raise CommandError(f"`--n-per-class` must be at least {ACE_MIN_IMAGES} with `--method "
                           f"ace`; got {args.n_per_class}. ACE keeps only clusters of more than "
                           f"20 segments drawn from more than a tenth of their segments' count "
                           f"of distinct images, which needs {ACE_MIN_IMAGES} images at least "
                           f"(and far more in practice: the default is 60).")
    check_seed_flag(args.seed)
    # in the demo's terms: its options, not Python's
    with command_terms(DEMO_FLAGS, "a larger `--n-per-class`"), _images_are_n_per_class():
        return run_demo(out_dir=args.out, n_per_class=args.n_per_class, method=args.method,
                        seed=args.seed, progress=show_progress(args.quiet),
                        n_concepts=args.n_concepts)


@contextlib.contextmanager
def _images_are_n_per_class() -> Iterator[None]:
    """The demo's images are ``--n-per-class`` of each class: "the 2 `images`" of an error is
    said as "the 2 images of a class (`--n-per-class`)"."""
    try:
        yield
    except CommandError as err:
        message = re.sub(r"(\d+) `images`", r"\1 images of a class (`--n-per-class`)", str(err))
        if message == str(err):
            raise
        raise CommandError(message) from err


def _cmd_train_cbm(argv: list[str]) -> int:
    from ._train_cbm import train_cbm_main

    return train_cbm_main(argv)


def _cmd_extract(argv: list[str]) -> int:
    from ._extract import extract_main

    return extract_main(argv)


def _cmd_atlas(argv: list[str]) -> int:
    from ._atlas import atlas_main

    return atlas_main(argv)


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    scripts = sorted(root.glob("bench_*.py"))
    if not scripts:
        raise CommandError(f"no benchmarks found in {root} (run from a source checkout).")
    if args.only is not None:
        chosen = [script for script in scripts if args.only in script.name]
        if not chosen:
            names = ", ".join(script.stem.removeprefix("bench_") for script in scripts)
            raise CommandError(f"`--only` {args.only!r} matches no benchmark; the benchmarks "
                               f"are {names}.")
        scripts = chosen
    failed = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        extra = ["--quick"] if args.quick else []
        failed += subprocess.call([sys.executable, str(script), *extra]) != 0
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conceptkit", description=PROGRAM_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="explain every class of the ground-truth dataset")
    demo.add_argument("--out", default="conceptkit-demo",
                      help="output directory: a report per class and an index "
                           "(default: %(default)s)")
    demo.add_argument("--n-per-class", type=int, default=60,
                      help="images of each of the six classes to explain (the train split, "
                           "spurious cue on; at least 2) (default: %(default)s)")
    demo.add_argument("--method", default="ice", choices=["craft", "ice", "ace"],
                      help="concept discovery method (default: %(default)s)")
    demo.add_argument("--n-concepts", type=int, default=10,
                      help="concepts per class (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seeds the dataset, the factorization and the importance "
                           "(default: %(default)s)")
    demo.add_argument("--quiet", action="store_true",
                      help="no progress bars (they are shown only when stderr is a terminal)")

    exp = sub.add_parser("explain", help="explain one class of a model on a folder of images")
    exp.add_argument("--model", required=True,
                     help="reference | efficientnet_lite0 | world:NAME[:ARCH] (shapes, textures, scales, "
                          "context) | torchvision:NAME | timm:NAME | open_clip:NAME")
    exp.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    exp.add_argument("--layer", default=None,
                     help="the layer whose activations are explained (default: the model's own, "
                          "e.g. block4 for reference, layer4 for ResNets; required when the "
                          "model has none)")
    exp.add_argument("--images", required=True, help="a directory or a glob")
    exp.add_argument("--class", dest="class_id", required=True,
                     help="the class to explain: an output index, or a class name of the model "
                          "(e.g. 'espresso', 'tiger cat'; close matches are suggested)")
    exp.add_argument("--class-name", default=None,
                     help="the class's name in the report (default: the model's class name, if "
                          "it has one)")
    exp.add_argument("--out", required=True,
                     help="output directory: explanation.safetensors and the class's report "
                          "(created when missing; files conceptkit did not write are never "
                          "overwritten)")
    exp.add_argument("--method", default="ice", choices=["craft", "ice", "ace"],
                     help="concept discovery method (default: %(default)s)")
    exp.add_argument("--importance", default="pixel_ablation",
                     help="how concepts are scored: pixel_ablation (paints each concept's "
                          "regions out of the images), sobol, closed_form, gradient_input, "
                          "integrated_gradients, occlusion, ablation or rise "
                          "(default: %(default)s)")
    exp.add_argument("--n-concepts", type=int, default=None,
                     help="number of concepts (default 10; ACE: 25 clusters before filtering)")
    exp.add_argument("--factorizer", default=None, choices=sorted(FACTORIZER_CHOICES),
                     help="replace the method's factorizer (default: nmf for ice and craft, "
                          "except topk_sae, a top-k sparse autoencoder with 2 concepts per "
                          "token, at a layer that gives ViT/CLIP tokens; ace clusters with "
                          "kmeans)")
    exp.add_argument("--patch-size", type=int, default=None,
                     help="--method craft only: side of its crops in pixels (default: CRAFT's)")
    exp.add_argument("--tokens", default="auto", choices=["auto", "patches", "cls"],
                     help="at a transformer layer: 'patches' (ICE on the patch tokens), 'cls' "
                          "(ICE on the CLS token of each window of the image shown alone) or "
                          "'auto' (default: 'cls' where the model classifies from its CLS token "
                          "and the explanation is ICE with pixel ablation, except with "
                          "--visualize or --name-with classes, which need the patch tokens). At "
                          "a CNN layer (feature maps) 'auto' and 'patches' change nothing and "
                          "'cls' is refused")
    exp.add_argument("--window", type=int, default=None,
                     help="where the CLS token is read: window side in pixels (default: a "
                          "quarter of the image side)")
    exp.add_argument("--size", type=int, default=None,
                     help="side in pixels the images are resized to for the model (default: the "
                          "model's own input size)")
    exp.add_argument("--batch-size", type=int, default=32,
                     help="images per forward pass (default: %(default)s)")
    exp.add_argument("--seed", type=int, default=0,
                     help="seeds the factorization and the importance (default: %(default)s)")
    exp.add_argument("--device", default=None,
                     help="where the model runs: cpu, cuda, cuda:1, ... (default: the CPU)")
    exp.add_argument("--quiet", action="store_true",
                     help="no progress bars (they are shown only when stderr is a terminal)")
    add_naming_arguments(exp)

    rep = sub.add_parser("report", help="write the report of a saved explanation")
    rep.add_argument("path", help="a saved explanation (explanation.safetensors of explain)")
    rep.add_argument("--out", required=True,
                     help="output directory of the report (created when missing; files "
                          "conceptkit did not write are never overwritten)")

    sub.add_parser("train-cbm", help="train a concept bottleneck model (see train-cbm --help)",
                   add_help=False)
    sub.add_parser("extract", help="(sharded) activation extraction to an on-disk store",
                   add_help=False)
    sub.add_parser("atlas", help="one concept dictionary for all classes, from a store "
                   "(see atlas --help; runs under torchrun)", add_help=False)

    bench = sub.add_parser("bench", help="run the benchmark suite (benchmarks/)")
    bench.add_argument("--quick", action="store_true",
                       help="each benchmark's short run (--quick: smaller data, fewer repeats), "
                            "a check that it runs rather than the published numbers")
    bench.add_argument("--only", default=None,
                       help="run only the benchmarks whose name contains this, e.g. cbm "
                            "(default: every benchmark)")
    return parser


#: Arguments that count something, and their smallest value (checked before any work).
COUNTS = {"n_per_class": 2, "n_concepts": 1, "patch_size": 1, "size": 1, "batch_size": 1,
          "visualize_steps": 1}


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "train-cbm":
        return _cmd_train_cbm(argv[1:])
    if argv and argv[0] == "extract":
        return _cmd_extract(argv[1:])
    if argv and argv[0] == "atlas":
        try:
            return _cmd_atlas(argv[1:])
        except (ValueError, TypeError, FileNotFoundError) as err:
            if os.environ.get("CONCEPTKIT_DEBUG"):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    check_counts(args, COUNTS)
    if args.command != "bench":
        check_out_dir(args.out)
    if args.command == "explain":
        check_naming_arguments(args)
    from ._explain import explain_main

    commands = {"demo": _cmd_demo, "explain": explain_main, "report": _cmd_report, "bench": _cmd_bench}
    return commands[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``conceptkit`` command.

    A user error (a bad argument, a missing or damaged file, images that cannot be read) is
    printed as one ``error: ...`` line with exit status 2, as argparse does for its own checks;
    ``CONCEPTKIT_DEBUG=1`` shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        return _run(argv)
    except (ValueError, TypeError, OSError) as err:  # FormatError is a ValueError
        if os.environ.get("CONCEPTKIT_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except MemoryError as err:  # one line, as every other failure of a command
        if os.environ.get("CONCEPTKIT_DEBUG"):
            raise
        print(f"error: out of memory{': ' + str(err) if str(err) else ''} (pass fewer or "
              f"smaller inputs, or a smaller `--batch-size` where the command has one).",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
