"""``conceptkit train-cbm``: train a CBM on the reference concept dataset and report on it.

Two feature modes:

- ``--features frozen`` (default): the shipped reference CNN is frozen and cut at ``--layer``
  (``block3``: 8×8 maps that still carry the class-irrelevant distractor concepts, which
  ``block4`` has largely discarded); its maps are computed once and cached in memory, and the
  concept encoder is a :class:`SpatialProbe` (a 1×1 linear concept detector, max-pooled over
  positions). A few minutes at most on two CPU cores.
- ``--features end2end``: a freshly initialised copy of the reference architecture up to
  ``--layer`` plus a :class:`SpatialProbe`, trained on the images (slow on CPU).

The datasets module is imported lazily: ``bottleneck`` itself never depends on ``datasets``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from ..bottleneck._intervene import POLICIES, intervention_curve
from ..bottleneck._metrics import evaluate_cbm, leakage_score
from ..bottleneck._model import BOTTLENECKS, HEADS, ConceptBottleneckModel, SpatialProbe
from ..bottleneck._report import write_cbm_report
from ..bottleneck._train import MODES, OPTIMIZERS, train_cbm
from ._checks import (
    TRAIN_CBM_OUTPUTS,
    CommandError,
    add_deprecated_alias,
    check_counts,
    check_out_dir,
    check_out_targets,
    check_seed_flag,
    command_terms,
    load_reference_flags,
    owned_cbm_folder,
    record_outputs,
    show_progress,
)

#: Python argument names in the library's errors and warnings, and the options that set them.
TRAIN_CBM_FLAGS = {"concept_loss_weight": "--concept-loss-weight", "epochs": "--epochs",
                   "lr": "--lr", "batch_size": "--batch-size", "patience": "--patience",
                   "optimizer": "--optimizer", "seed": "--seed", "device": "--device",
                   "layer": "--layer", "image_size": "--size", "mode": "--mode",
                   "weights": "--weights", "n_trials": "--trials", "head": "--head",
                   "bottleneck": "--bottleneck"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conceptkit train-cbm",
        description="Train a concept bottleneck model on the reference concept dataset; write the "
                    "model (.safetensors) and an HTML/PNG/JSON report.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--mode", choices=MODES, default="joint",
                        help="how concepts and task are trained (Koh et al.; default: %(default)s)")
    parser.add_argument("--features", choices=("frozen", "end2end"), default="frozen",
                        help="frozen: the shipped reference CNN's maps; end2end: a fresh copy "
                             "trained with the CBM (slow on CPU) (default: %(default)s)")
    parser.add_argument("--layer", default="block3",
                        help="reference CNN layer to cut at (default: %(default)s)")
    parser.add_argument("--bottleneck", choices=BOTTLENECKS, default="sigmoid",
                        help="what the head reads: concept probabilities or logits "
                             "(default: %(default)s)")
    parser.add_argument("--head", choices=HEADS, default="linear",
                        help="task head on the concepts (default: %(default)s)")
    parser.add_argument("--concept-loss-weight", type=float, default=None,
                        help="λ of the joint loss CE + λ Σ BCE (default 1; --mode joint only: "
                             "the other modes have no such weight)")
    parser.add_argument("--epochs", type=int, default=300,
                        help="most epochs per stage, a cap: early stopping (--patience) ends a "
                             "stage when its validation loss stops improving (with the other "
                             "defaults, --mode joint stops near epoch 280, in about a minute on "
                             "two CPU cores), and a stage that reaches the cap while its loss "
                             "still falls warns. --features end2end trains the CNN every epoch: "
                             "lower it there on a CPU (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=10,
                        help="epochs without a better validation loss before a stage stops "
                             "(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="Adam learning rate (1e-2 converges in far fewer epochs than 1e-3 on "
                             "the frozen features) (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="examples per step (default: %(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                        help="(default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=300,
                        help="training images per class (default: %(default)s)")
    parser.add_argument("--n-val", type=int, default=60,
                        help="validation images per class (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=150,
                        help="test images per class (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64,
                        help="side of the concept dataset's images in pixels, as fed to the "
                             "model (default: %(default)s)")
    parser.add_argument("--weights", default=None,
                        help="reference CNN weights (default: the ones shipped with conceptkit)")
    parser.add_argument("--trials", type=int, default=5,
                        help="random intervention orders (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the datasets, the model's start and training "
                             "(default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, ... (default: the CPU)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (they are shown only when stderr is a terminal)")
    # the names before 0.2 (every other command says --quiet and --size)
    add_deprecated_alias(parser, "--no-progress", "--quiet")
    add_deprecated_alias(parser, "--image-size", "--size")
    return parser


def _encoder_and_inputs(args: argparse.Namespace, splits: dict, n_concepts: int,
                        progress: bool):
    from ..extraction import ActivationExtractor, split_model

    reference = load_reference_flags(args.weights)  # (the formats explain reads)
    if args.features == "frozen":
        extractor = ActivationExtractor(reference, args.layer, batch_size=128, device=args.device,
                                        progress=progress)
        inputs = {name: extractor(ds.images) for name, ds in splits.items()}
        with torch.random.fork_rng(devices=[]):  # the probe's initial weights follow --seed
            torch.manual_seed(args.seed)
            encoder = SpatialProbe(inputs["train"].shape[1], n_concepts)
        return encoder, inputs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        fresh = type(reference)(**{k: getattr(reference, k) for k in ("n_classes", "width")})
        trunk, _ = split_model(fresh, args.layer)
        with torch.no_grad():
            channels = trunk(splits["train"].images[:1]).shape[1]
        encoder = nn.Sequential(trunk, SpatialProbe(channels, n_concepts))
    return encoder, {name: ds.images for name, ds in splits.items()}


def _check_arguments(args: argparse.Namespace) -> None:
    """Every option the datasets, the reference CNN or training would refuse, refused before the
    datasets are drawn, naming the option."""
    from .._validation import resolve_device
    from ..datasets._generate import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from ..extraction._layers import get_layer

    check_counts(args, {"epochs": 1, "patience": 1, "batch_size": 1, "n_train": 1, "n_val": 1,
                        "n_test": 1, "trials": 1})  # (--size: its range, below)
    check_out_dir(args.out)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CommandError(f"`--lr` must be a positive number; got {args.lr}.")
    weight = args.concept_loss_weight
    if weight is not None and args.mode != "joint":
        raise CommandError(f"`--concept-loss-weight` weighs the concept loss of `--mode joint`; "
                           f"`--mode {args.mode}` has no such weight and would ignore it. Leave "
                           f"it out, or use `--mode joint`.")
    if weight is not None and not (math.isfinite(weight) and weight >= 0):
        raise CommandError(f"`--concept-loss-weight` must be a number >= 0; got {weight}.")
    if not MIN_IMAGE_SIZE <= args.size <= MAX_IMAGE_SIZE:
        raise CommandError(f"`--size` must lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] "
                           f"(pixels of the concept dataset's images); got {args.size}.")
    check_seed_flag(args.seed)
    if args.weights is not None and not Path(args.weights).is_file():
        raise CommandError(f"`--weights` {args.weights!r} does not exist (or is not a file).")
    resolve_device(args.device, "--device")
    with command_terms({"path": "--weights"}):  # (a damaged weights file)
        reference = load_reference_flags(args.weights)  # (the formats explain reads)
    check_out_targets(args.out, TRAIN_CBM_OUTPUTS)  # a user's file in --out: refused at once
    get_layer(reference, args.layer, "--layer")


def train_cbm_main(argv: list[str]) -> int:
    """Entry point of ``conceptkit train-cbm``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    _check_arguments(args)  # before the datasets are drawn, in the command's terms
    with command_terms(TRAIN_CBM_FLAGS):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from ..datasets import make_concept_dataset

    progress = show_progress(args.quiet)
    start = time.perf_counter()
    sizes = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    splits = {name: make_concept_dataset(n, image_size=args.size, seed=args.seed, split=name,
                                         progress=progress)
              for name, n in sizes.items()}
    train_ds = splits["train"]
    encoder, inputs = _encoder_and_inputs(args, splits, train_ds.n_concepts, progress)
    data = {name: (inputs[name], ds.concepts, ds.labels) for name, ds in splits.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = ConceptBottleneckModel(encoder, train_ds.n_concepts, train_ds.n_classes,
                                       head=args.head, bottleneck=args.bottleneck,
                                       concept_names=list(train_ds.concept_names),
                                       class_names=list(train_ds.class_names))
    history = train_cbm(model, data["train"], data["val"], mode=args.mode,
                        concept_loss_weight=args.concept_loss_weight, epochs=args.epochs,
                        lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                        optimizer=args.optimizer, seed=args.seed, device=args.device,
                        progress=progress)
    evaluation = evaluate_cbm(model, data["test"])
    # --trials and --seed set the random orders; the other policies are deterministic
    orders = {"random": {"n_trials": args.trials, "seed": args.seed}}
    curves = {policy: intervention_curve(model, data["test"], policy=policy,
                                         **orders.get(policy, {})) for policy in POLICIES}
    leakage = leakage_score(model, data["train"], data["test"])
    out = Path(args.out)
    with owned_cbm_folder(out):  # never a file conceptkit did not write; listed in a manifest
        model_path = model.save(out / "cbm.safetensors")
        # the options as used: the concept loss weight training applied (none outside joint)
        settings = dict(vars(args), concept_loss_weight=history.concept_loss_weight)
        page = write_cbm_report(out, model, evaluation, curves, history=history, leakage=leakage,
                                extra={"settings": settings, "total_seconds":
                                       time.perf_counter() - start, "model_file": model_path.name},
                                title=f"CBM ({args.mode}, {args.features} features) on the concept dataset")
        record_outputs(model_path, out / "metrics.json", page)
    print(f"mode={args.mode} features={args.features}: task accuracy {evaluation.task_accuracy:.4f}, "
          f"concept accuracy {evaluation.concept_accuracy:.4f}, "
          f"all-concepts intervention {curves['random'].accuracy_mean[-1]:.4f}, "
          f"leakage {leakage.leakage:+.4f}")
    print(f"model: {model_path}\nreport: {page}")
    return 0
