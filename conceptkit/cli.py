"""Command line: ``conceptkit demo | explain | report | atlas | train-cbm | extract | bench``."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import numpy as np
import torch

#: ``--factorizer`` choices: signed activations (ViT/CLIP tokens) need ``semi_nmf`` or ``pca``.
FACTORIZER_CHOICES = {"nmf": "NMF", "semi_nmf": "SemiNMF", "kmeans": "KMeansConcepts",
                      "pca": "PCAConcepts", "ica": "ICAConcepts", "sparse": "SparseDictionary",
                      "topk_sae": "TopKSAE"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_images(pattern: str, size: int) -> tuple[torch.Tensor, list[str]]:
    """Images from a directory or a glob, resized (shorter side) and centre-cropped to ``size``."""
    from PIL import Image

    path = Path(pattern)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(f for f in glob.glob(pattern) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"`--images` {pattern!r} matches no image file "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
    out = []
    for file in files:
        try:
            with Image.open(file) as img:
                img = img.convert("RGB")
                scale = size / min(img.size)
                img = img.resize((max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))),
                                 Image.BICUBIC)
                left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
                img = img.crop((left, top, left + size, top + size))
                out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
        except OSError as err:
            raise OSError(f"`--images`: cannot read {file!r}: {err}") from err
    return torch.stack(out), files


def _cmd_explain(args: argparse.Namespace) -> int:
    from ._zoo import load_model
    from .pipeline import ConceptExplainer

    loaded = load_model(args.model, args.weights)
    layer = args.layer or loaded.default_layer
    if layer is None:
        raise SystemExit("error: `--layer` is required for this model (no default layer known).")
    size = args.size or loaded.input_size
    images, files = load_images(args.images, size)
    name = args.class_name or (loaded.labels[args.class_id] if args.class_id < len(loaded.labels)
                               else f"class {args.class_id}")
    factorizer = None
    if args.factorizer is not None:
        from .concepts import FACTORIZERS

        factorizer = FACTORIZERS[FACTORIZER_CHOICES[args.factorizer]](n_concepts=args.n_concepts)
    explainer = ConceptExplainer(loaded.model, layer, n_concepts=args.n_concepts, method=args.method,
                                 importance=args.importance, patch_size=args.patch_size,
                                 factorizer=factorizer,
                                 batch_size=args.batch_size, seed=args.seed,
                                 preprocess=loaded.preprocess, model_name=loaded.name,
                                 progress=not args.quiet)
    result = explainer.fit(images, args.class_id, name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = result.save(out / "explanation.safetensors")
    page = result.report(out)
    print(f"explained {len(files)} images of {name!r} at {layer} of {loaded.name}")
    for rank, c in enumerate(result.ranking[:5]):
        print(f"  #{rank + 1} concept {int(c)}: importance {result.importances[c]:.3f}")
    print(f"saved {saved}\nreport {page}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from . import load
    from ._results import ClassConcepts

    result = load(args.saved)
    if not isinstance(result, ClassConcepts):
        raise SystemExit(f"error: {args.saved!r} holds a {type(result).__name__}, not an explanation.")
    page = result.report(args.out)
    print(f"report {page}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(out_dir=args.out, n_per_class=args.n_per_class, method=args.method,
                    seed=args.seed, progress=not args.quiet, n_concepts=args.n_concepts)


def _cmd_train_cbm(argv: list[str]) -> int:
    from .bottleneck._cli import train_cbm_main

    return train_cbm_main(argv)


def _cmd_extract(argv: list[str]) -> int:
    from ._extract_cli import extract_main

    return extract_main(argv)


def _cmd_atlas(argv: list[str]) -> int:
    from ._atlas_cli import atlas_main

    return atlas_main(argv)


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    scripts = sorted(root.glob("bench_*.py"))
    if not scripts:
        raise SystemExit(f"error: no benchmarks found in {root} (run from a source checkout).")
    failed = 0
    for script in scripts:
        if args.only and args.only not in script.name:
            continue
        print(f"== {script.name}", flush=True)
        extra = ["--quick"] if args.quick else []
        failed += subprocess.call([sys.executable, str(script), *extra]) != 0
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conceptkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="explain every class of the ground-truth dataset")
    demo.add_argument("--out", default="conceptkit-demo")
    demo.add_argument("--n-per-class", type=int, default=60)
    demo.add_argument("--method", default="ice", choices=["craft", "ice", "ace"])
    demo.add_argument("--n-concepts", type=int, default=10)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")

    exp = sub.add_parser("explain", help="explain one class of a model on a folder of images")
    exp.add_argument("--model", required=True,
                     help="reference | efficientnet_lite0 | torchvision:NAME | timm:NAME | open_clip:NAME")
    exp.add_argument("--weights", default=None, help="local weights file (or DEFAULT/pretrained/tag online)")
    exp.add_argument("--layer", default=None)
    exp.add_argument("--images", required=True, help="a directory or a glob")
    exp.add_argument("--class", dest="class_id", type=int, required=True)
    exp.add_argument("--class-name", default=None)
    exp.add_argument("--out", required=True)
    exp.add_argument("--method", default="craft", choices=["craft", "ice", "ace"])
    exp.add_argument("--importance", default="sobol")
    exp.add_argument("--n-concepts", type=int, default=10)
    exp.add_argument("--factorizer", default=None, choices=sorted(FACTORIZER_CHOICES),
                     help="replace the method's factorizer (semi_nmf for ViT/CLIP tokens)")
    exp.add_argument("--patch-size", type=int, default=None)
    exp.add_argument("--size", type=int, default=None, help="image size fed to the model")
    exp.add_argument("--batch-size", type=int, default=32)
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--quiet", action="store_true")

    rep = sub.add_parser("report", help="write the report of a saved explanation")
    rep.add_argument("saved")
    rep.add_argument("--out", required=True)

    sub.add_parser("train-cbm", help="train a concept bottleneck model (see train-cbm --help)",
                   add_help=False)
    sub.add_parser("extract", help="(sharded) activation extraction to an on-disk store",
                   add_help=False)
    sub.add_parser("atlas", help="one concept dictionary for all classes, from a store "
                   "(see atlas --help; runs under torchrun)", add_help=False)

    bench = sub.add_parser("bench", help="run the benchmark suite (benchmarks/)")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--only", default=None, help="run only benchmarks whose name contains this")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``conceptkit`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
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
    commands = {"demo": _cmd_demo, "explain": _cmd_explain, "report": _cmd_report, "bench": _cmd_bench}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        if os.environ.get("CONCEPTKIT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
