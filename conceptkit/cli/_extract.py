"""Sharded extraction on torch.distributed: ``torchrun --nproc_per_node=N -m conceptkit extract``.

Every rank loads the same model and the same ordered list of inputs, computes the store chunks
``i`` with ``i % world_size == rank`` and writes them into the shared store directory; after a
barrier, rank 0 writes the manifest. Because chunk ``i`` always holds inputs
``[i·chunk_size, (i+1)·chunk_size)``, the sharded store is identical to a single-process one.

The same command scales out unchanged: on a GPU node ``torchrun --nproc_per_node=8`` gives each
rank its own GPU (``--device cuda`` picks ``cuda:LOCAL_RANK`` and the NCCL backend), and on
several nodes ``torchrun --nnodes=M --node_rank=R --rdzv_endpoint=HOST:PORT ...`` with the store
on a shared file system. Ranks only synchronise at the final barrier, so a killed run is resumed
by rerunning the same command: existing chunks are skipped. A rerun with another model, layer,
weights, inputs, chunk size or layout is refused (the store's fingerprint differs);
``--overwrite`` replaces the store.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .._validation import resolve_device
from ..extraction import ActivationExtractor
from ..extraction._fingerprint import extractor_identity, inputs_identity
from ..extraction._store import (
    LAYOUTS,
    check_meta,
    finalize_store,
    prepare_store,
    shard_chunks,
    slice_inputs,
    write_chunks,
)
from ._checks import (
    WEIGHTS_HELP,
    CommandError,
    check_counts,
    check_out_dir,
    check_seed_flag,
    command_terms,
    load_model_flags,
    show_progress,
)

#: Python argument names in the library's errors, and the ``extract`` options that set them
#: (``path`` is the store: ``--out``; ``n_per_class``: ``--concept-dataset``).
EXTRACT_FLAGS = {"layer": "--layer", "path": "--out", "n_per_class": "--concept-dataset",
                 "chunk_size": "--chunk-size", "batch_size": "--batch-size", "layout": "--layout",
                 "image_size": "--size", "seed": "--seed", "split": "--split",
                 "device": "--device", "overwrite": "--overwrite"}

#: The splits of the concept dataset (``make_concept_dataset``'s ``split``).
SPLITS = ("train", "val", "test")

#: The side of the concept dataset's images without ``--size`` (the reference CNN's input).
DATASET_SIZE = 64


def _dist_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _load_inputs(args: argparse.Namespace, size: int) -> tuple[Any, list[int] | None]:
    """The inputs, and their class labels where the command knows them (the concept dataset's:
    recorded in the store's ``meta["labels"]``, which ``conceptkit atlas`` reads)."""
    if args.concept_dataset is not None:
        from ..datasets import make_concept_dataset

        data = make_concept_dataset(args.concept_dataset, seed=0 if args.seed is None else args.seed,
                                    split="train" if args.split is None else args.split,
                                    image_size=DATASET_SIZE if args.size is None else args.size)
        return data.images, [int(label) for label in data.labels]
    if args.images is None:
        raise CommandError("give `--images DIR_OR_GLOB` or `--concept-dataset N_PER_CLASS`.")
    from ._images import load_images

    return load_images(args.images, size)[0], None


def extract_main(argv: list[str]) -> int:
    """``conceptkit extract``: write activations of a model at a layer into a store."""
    parser = argparse.ArgumentParser(prog="conceptkit extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="reference | efficientnet_lite0 | world:NAME[:ARCH] | "
                             "torchvision:NAME | timm:NAME | open_clip:NAME")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    parser.add_argument("--layer", default=None,
                        help="the layer whose activations are stored (default: the model's own)")
    parser.add_argument("--images", default=None, help="a directory or a glob of images (no default: give --images or "
                             "--concept-dataset)")
    parser.add_argument("--concept-dataset", type=int, default=None,
                        help="use the ground-truth concept dataset with this many images per "
                             "class (its class labels are recorded in the store, where "
                             "`conceptkit atlas` reads them)")
    parser.add_argument("--split", default=None, choices=SPLITS,
                        help="--concept-dataset only: the split drawn (default train)")
    parser.add_argument("--seed", type=int, default=None,
                        help="--concept-dataset only: the seed of the dataset (default 0)")
    parser.add_argument("--out", required=True, help="store directory")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="inputs per chunk file of the store (default: %(default)s)")
    parser.add_argument("--layout", default="pooled", choices=list(LAYOUTS),
                        help="what is stored per input: pooled (one vector), maps (C x h x w, "
                             "what `conceptkit atlas` needs) or positions (one row per "
                             "position) (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="inputs per forward pass (default: %(default)s)")
    parser.add_argument("--size", type=int, default=None,
                        help="side in pixels of the images fed to the model: --images are "
                             "resized to it (default: the model's own input size); "
                             "--concept-dataset images are drawn at it, 32 to 512 (default: "
                             f"{DATASET_SIZE})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda uses cuda:LOCAL_RANK)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a store written by another extraction (another model, "
                             "layer, inputs, chunk size or layout) instead of refusing")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (it is shown only when stderr is a terminal)")
    args = parser.parse_args(argv)
    check_counts(args, {"chunk_size": 1, "batch_size": 1, "size": 1, "concept_dataset": 1})
    check_out_dir(args.out)
    if args.concept_dataset is not None and args.images is not None:
        raise CommandError("give `--images` or `--concept-dataset`, not both (the store holds "
                           "one set of inputs).")
    given = [flag for flag, value in (("--split", args.split), ("--seed", args.seed))
             if value is not None]
    if given and args.concept_dataset is None:  # they choose the concept dataset's images
        raise CommandError(f"`{given[0]}` goes with `--concept-dataset` (it chooses the "
                           f"ground-truth images drawn); with `--images` it would be ignored. "
                           f"Leave it out.")
    check_seed_flag(args.seed)
    if args.concept_dataset is not None and args.size is not None:
        from ..datasets._generate import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

        if not MIN_IMAGE_SIZE <= args.size <= MAX_IMAGE_SIZE:
            raise CommandError(f"`--size` must lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] with "
                               f"`--concept-dataset` (the side in pixels its images are drawn "
                               f"at); got {args.size}.")

    rank, world, local_rank = _dist_env()
    distributed = world > 1
    device = resolve_device(f"cuda:{local_rank}" if args.device == "cuda" else args.device,
                            "--device")
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with command_terms(EXTRACT_FLAGS):
            _extract(args, rank, world, distributed, device)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _extract(args: argparse.Namespace, rank: int, world: int, distributed: bool,
             device: Any) -> None:
    """The extraction itself (errors of the library in the command's terms)."""
    if distributed:
        import torch.distributed as dist

    loaded = load_model_flags(args.model, args.weights)
    layer = args.layer or loaded.layer
    if layer is None:
        raise CommandError("`--layer` is required for this model.")
    inputs, labels = _load_inputs(args, args.size if args.size is not None
                                  else loaded.input_size)
    loaded.model.to(device)
    extractor = ActivationExtractor(loaded.model, layer, batch_size=args.batch_size,
                                    progress=False, preprocess=loaded.preprocess)
    n = len(inputs)
    n_chunks = -(-n // args.chunk_size)
    mine = shard_chunks(n_chunks, rank, world)
    fingerprint = {**extractor_identity(extractor), "inputs": inputs_identity(inputs)}
    meta = {"model": args.model, "layer": layer, "world_size": world}
    if labels is not None:  # one class index per stored input: atlas needs no --labels
        meta["labels"] = labels
    check_meta(meta, n, args.chunk_size)  # before any chunk is computed
    # the first input before the store is created (or cleared by --overwrite): a model whose
    # activations are NaN leaves no store behind, which a rerun with other weights would refuse
    _check_finite(extractor(slice_inputs(inputs, 0, 1)), args.layout, layer, 0, 1)
    if args.overwrite and rank == 0:  # one rank clears the old store, then all write
        prepare_store(args.out, n, chunk_size=args.chunk_size, layout=args.layout,
                      fingerprint=fingerprint, overwrite=True)
    if distributed:
        dist.barrier()

    def compute(start: int, stop: int) -> Any:
        activations = extractor(slice_inputs(inputs, start, stop))
        _check_finite(activations, args.layout, layer, start, stop)  # never a store of NaN
        return activations

    done = write_chunks(compute, n, args.out,
                        chunk_size=args.chunk_size, layout=args.layout, indices=mine,
                        progress=show_progress(args.quiet) and rank == 0,
                        fingerprint=fingerprint)
    if distributed:
        dist.barrier()
    if rank == 0:
        store = finalize_store(args.out, n, chunk_size=args.chunk_size, layout=args.layout,
                               meta=meta, fingerprint=fingerprint)
        print(f"store {args.out}: {store.n_rows} rows x {store.n_features} features in "
              f"{len(store.manifest['chunks'])} chunks (this rank computed {len(done)})")
    if distributed:
        dist.barrier()


def _check_finite(activations: Any, layout: str, layer: str, start: int, stop: int) -> None:
    """Refuse activations with NaN or Inf values (as stored: ``pooled`` averages them, which
    can overflow) before they are written into the store: every factorizer (and
    ``conceptkit atlas``) would refuse them later, far from their cause."""
    import numpy as np

    from ..extraction._store_read import to_layout

    if not bool(np.isfinite(to_layout(activations, layout)).all()):
        which = f"input {start}" if stop - start == 1 else f"inputs {start} to {stop - 1}"
        raise CommandError(f"the model's activations at `--layer` {layer!r} are NaN or Inf (for "
                           f"{which}); nothing of them is stored. The model computes non-finite "
                           f"values: check its weights (`--weights`).")
