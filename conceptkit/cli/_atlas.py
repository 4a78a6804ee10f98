"""``conceptkit atlas``: one concept dictionary for every class, from an activation store.

Single process, on a store of the concept dataset (``extract --concept-dataset`` records its
labels; a store of ``--images`` needs ``--labels``, one class index per stored image)::

    conceptkit extract --model reference --concept-dataset 100 --layout maps --out acts-maps/
    conceptkit atlas --store acts-maps/ --model reference --out atlas-run/

Across processes (each rank reads its share of the store's chunks; the sufficient statistics of
the NMF are all-reduced, so every rank holds the same dictionary; rank 0 then scores the classes
and writes the outputs)::

    torchrun --nproc_per_node=2 -m conceptkit atlas --store acts-maps/ --model reference ...

The store must hold feature maps (``conceptkit extract ... --layout maps``). Writes
``OUT/atlas.safetensors`` (read it with :func:`conceptkit.load`) and the report in
``OUT/report/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .._validation import held_warnings


def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


#: Python argument names in the library's errors and warnings, and the options that set them.
ATLAS_FLAGS = {"A": "--store", "model": "--model", "labels": "--labels", "importance": "--importance", "n_concepts": "--n-concepts",
               "layer": "--layer", "seed": "--seed", "max_iter": "--max-iter", "tol": "--tol",
               "batch_rows": "--batch-rows", "max_inputs_per_class": "--max-inputs-per-class"}

#: The owner of the files ``atlas`` writes into ``--out`` (see ``conceptkit.report._outputs``).
OWNER = "conceptkit atlas"


def _labels(spec: str | None) -> np.ndarray | None:
    from ._checks import CommandError

    if spec is None:
        return None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"`--labels` {spec!r} is not a file; give a .npy array or a text "
                                f"file with one class index per stored image.")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (ValueError, OSError, EOFError) as err:
        raise CommandError(f"`--labels` {spec!r} cannot be read as class indices ({str(err).rstrip('.')}); give a "
                           f"text file with one integer class index per stored image (or per "
                           f"line), or a .npy array of them.") from err


#: How the library's NMF says its in-memory fit ran out of iterations (``concepts._nmf``).
_STOPPED_FIT = "before converging to tol="
_STOPPED_WHAT = "while fitting the dictionary"


@contextlib.contextmanager
def _starting_fit_explained() -> Iterator[None]:
    """The streamed fit starts from an NMF fitted in memory on a sample of the store's rows,
    with the factorizer's own iteration limit (200), not ``--max-iter`` (the passes over the
    store). Its "reached max_iter=200" warning read, in the command's terms, "reached
    --max-iter 200 ... increase --max-iter", naming a flag that does not set it: it is said
    here as what it is, once. Every other warning is shown as it was."""
    from sklearn.exceptions import ConvergenceWarning

    with held_warnings(ConvergenceWarning, lambda w: _STOPPED_FIT in str(w.message)
                       and _STOPPED_WHAT in str(w.message)) as start:
        yield
    if start:
        found = re.search(r"max_iter=(\d+)", str(start[0].message))
        limit = found.group(1) if found else "200"
        print(f"note: the starting dictionary (an NMF fitted in memory on a sample of the "
              f"store's rows, before the passes over the store) stopped at its own limit of "
              f"{limit} iterations before converging. This is informational: the passes over the "
              f"store (`--max-iter`, `--tol`) start from it and refine it, and the relative "
              f"error printed below is the final dictionary's. The starting fit's limit has no "
              f"option in this command (in Python: ConceptAtlas(..., factorizer=NMF(k, "
              f"solver='torch_hals', max_iter={4 * int(limit)})).", file=sys.stderr)


def _fit_and_write(args: argparse.Namespace, loaded, layer: str, store, labels, options: dict,
                   world: int, start: float) -> tuple[Path | None, str]:
    """Rank 0's work: fit the atlas, save it and (unless ``--no-report``) write its report."""
    from ..pipeline import ConceptAtlas
    from ..report._outputs import MANIFEST, owned_folder, record
    from ._checks import check_out_targets, show_progress

    atlas = ConceptAtlas(loaded.model, layer, args.n_concepts, method="ice",
                         importance=args.importance, seed=args.seed,
                         class_names=loaded.class_names or None,
                         max_inputs_per_class=args.max_inputs_per_class,
                         progress=show_progress(args.quiet), preprocess=None,
                         model_name=loaded.name)
    with _starting_fit_explained():
        atlas.fit(store, labels, store_options=options)
    out = Path(args.out)
    check_out_targets(out, atlas_targets(args))  # a file put there during the fit: not replaced
    # --out is this run's: the report an earlier run wrote there (gone with --no-report, or
    # files the new report no longer writes) is removed, never a file conceptkit did not write
    with owned_folder(out, OWNER):
        path = atlas.save(out / "atlas.safetensors")
        record(path)
        index = None if args.no_report else atlas.report(out / "report")
    fitted = atlas.data_.bank.factorizer
    print(f"atlas of {store.n_rows} rows ({len(atlas.data_.labels)} images, "
          f"{len(atlas.importance.classes)} classes) over {world} rank(s): "
          f"{atlas.n_concepts} concepts, {fitted.n_iter_} passes, relative error "
          f"{fitted.reconstruction_err_ / max(fitted.data_norm_, 1e-300):.4f}, "
          f"{time.perf_counter() - start:.1f} s")
    stale = out / "report" / "index.html"
    if index is None and stale.is_file():  # a report this command has no record of writing
        print(f"warning: {str(stale.parent)!r} holds the report of an earlier atlas, not of this "
              f"one (`--out` has no record in {MANIFEST} that `conceptkit atlas` wrote it, so it "
              f"is left be); remove that folder, or rerun without --no-report.", file=sys.stderr)
    return index, path


def atlas_targets(args: argparse.Namespace) -> list[str]:
    """What ``atlas`` writes into ``--out``: the atlas, and its report unless ``--no-report``."""
    return ["atlas.safetensors"] + ([] if args.no_report else ["report"])


def atlas_main(argv: list[str]) -> int:
    """Parse ``argv`` and build the atlas of a store."""
    from ..concepts import NMF, fit_distributed
    from ..extraction import ActivationStore
    from ._checks import (
        WEIGHTS_HELP,
        CommandError,
        check_counts,
        check_out_dir,
        check_out_targets,
        check_seed_flag,
        command_terms,
        load_model_flags,
    )

    parser = argparse.ArgumentParser(prog="conceptkit atlas", description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="activation store of feature maps")
    parser.add_argument("--model", required=True, help="reference, efficientnet_lite0, timm:NAME, ...")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    parser.add_argument("--layer", default=None,
                        help="the model layer the stored activations come from (default: the "
                             "layer the store records)")
    parser.add_argument("--labels", default=None,
                        help=".npy or text file, one class index per stored image (default: the "
                             "labels the store records; extract --concept-dataset records them)")
    parser.add_argument("--n-concepts", type=int, default=20,
                        help="concepts of the one dictionary shared by every class "
                             "(default: %(default)s)")
    parser.add_argument("--importance", default="auto",
                        help="how each class's concepts are scored: auto (Sobol), sobol, "
                             "closed_form, gradient_input, integrated_gradients, occlusion, "
                             "ablation or rise; pixel_ablation is refused (a store holds no "
                             "pixels) (default: %(default)s)")
    parser.add_argument("--max-iter", type=int, default=50,
                        help="most passes over the store, each one dictionary update "
                             "(default: %(default)s)")
    parser.add_argument("--tol", type=float, default=1e-4,
                        help="stop when a pass lowers the reconstruction error by less than this "
                             "fraction of it (default: %(default)s)")
    parser.add_argument("--batch-rows", type=int, default=65536,
                        help="activation rows encoded at once; lower it when memory is short "
                             "(default: %(default)s)")
    parser.add_argument("--max-inputs-per-class", type=int, default=512,
                        help="at most this many images of each class (spread over the class) "
                             "go into its importance (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the starting dictionary's sample and fit and the importance "
                             "(default: %(default)s)")
    parser.add_argument("--out", required=True,
                        help="output directory: atlas.safetensors and the report in report/ "
                             "(created when missing; files conceptkit did not write are never "
                             "overwritten)")
    parser.add_argument("--no-report", action="store_true",
                        help="write no report (a report an earlier atlas run wrote into --out "
                             "is removed: it would not describe this atlas)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (they are shown only when stderr is a terminal)")
    args = parser.parse_args(argv)
    check_counts(args, {"n_concepts": 1, "max_iter": 1, "batch_rows": 1,
                        "max_inputs_per_class": 2})
    check_seed_flag(args.seed)
    if not args.tol >= 0 or not np.isfinite(args.tol):
        raise CommandError(f"`--tol` must be a finite number >= 0; got {args.tol}.")
    check_out_dir(args.out)
    check_out_targets(args.out, atlas_targets(args))  # never a file conceptkit did not write

    rank, world = _dist_env()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    try:
        with command_terms({"path": "--store"}):
            store = ActivationStore(args.store)
        if (args.labels is None and store.manifest.get("layout") == "maps"  # (else: say that)
                and store.manifest.get("meta", {}).get("labels") is None):
            raise CommandError(f"`--labels` is required: the store {args.store!r} records no "
                               f"class labels (only `extract --concept-dataset` records them); "
                               f"give a .npy or text file with one class index per stored image.")
        labels = _labels(args.labels)  # a file that is no list of labels fails before any work
        loaded = load_model_flags(args.model, args.weights)
        layer = args.layer or store.manifest.get("meta", {}).get("layer") or loaded.layer
        if layer is None:
            raise ValueError("`--layer` is required: the store does not record its layer.")
        options = {"max_iter": args.max_iter, "tol": args.tol, "batch_rows": args.batch_rows}
        start = time.perf_counter()
        if rank != 0:  # the same collective calls as rank 0's fit, then nothing else
            fit_distributed(NMF(args.n_concepts, solver="torch_hals", random_state=args.seed),
                            store, seed=args.seed, progress=False, **options)
        else:
            with command_terms(ATLAS_FLAGS):
                index, path = _fit_and_write(args, loaded, layer, store, labels, options, world,
                                             start)
            print(f"saved {path}" + ("" if index is None else f"; report {index}"))
        if distributed:
            dist.barrier()
    finally:
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
