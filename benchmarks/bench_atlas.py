"""Concept atlas benchmarks (issue 17).

1. ``store``: NMF of a 1,000,000 x 512 activation store (planted rank-32 rows, float32, 20
   memory-mapped chunks) by :func:`conceptkit.concepts.fit_distributed`, in 1 process and in 2
   gloo processes (``torch.distributed.run``, one thread each): time ratio, equality of the
   dictionaries, peak RSS of every rank (target <= 1.5 GB each).
2. ``world``: the whole atlas (fit + importance + report) on the shapes world with 6 x 500 images
   against the bare forward pass of ``g`` it needs (overhead ratio), and the ground-truth checks:
   the model's reliance on every part measured by painting the part out, each part's best
   concept (pointing game of its maps), whether that concept is important to exactly the classes
   that rely on the part, ``explain_confusion`` on the most confused pair, and ``top_images``
   precision@20.

Usage::

    python benchmarks/bench_atlas.py [--quick] [--only store|world] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _proc import status_kb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RSS_TARGET_MB = 1536


# ------------------------------------------------------------------------------ store
def make_store(path: Path, n_rows: int, n_features: int, chunk_rows: int, rank: int = 32) -> None:
    from conceptkit.extraction import finalize_store, write_chunks

    rng = np.random.default_rng(0)
    parts = (rng.exponential(1.0, (rank, n_features)) * (rng.random((rank, n_features)) < 0.3))
    parts = parts.astype(np.float32)

    def compute(start: int, stop: int) -> torch.Tensor:
        local = np.random.default_rng(start)
        codes = (local.exponential(1.0, (stop - start, rank))
                 * (local.random((stop - start, rank)) < 0.2)).astype(np.float32)
        rows = codes @ parts + 0.05 * np.abs(local.standard_normal((stop - start, n_features),
                                                                    dtype=np.float32))
        return torch.from_numpy(rows)

    write_chunks(compute, n_rows, path, chunk_size=chunk_rows, layout="pooled", progress=False)
    finalize_store(path, n_rows, chunk_size=chunk_rows, layout="pooled")


def store_worker(store: str, out: str, passes: int, device: str) -> None:
    """One rank of the store benchmark (run by this script in a subprocess)."""
    torch.set_num_threads(1)
    from conceptkit.concepts import NMF, fit_distributed

    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    start = time.perf_counter()
    est = fit_distributed(NMF(32, solver="torch_hals", device=device), store, max_iter=passes,
                          tol=0.0, batch_rows=16384, init_rows=20000, seed=0, progress=False)
    seconds = time.perf_counter() - start
    if rank == 0:
        np.save(out + ".npy", est.components_)
    # One file per rank: two ranks printing to one pipe can interleave their lines.
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "seconds": seconds, "peak_rss_mb": status_kb("VmHWM") / 1024,
         "relative_error": est.reconstruction_err_ / est.data_norm_, "passes": est.n_iter_}))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], out: str) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return [json.loads(path.read_text()) for path in sorted(Path(out).parent.glob(
        Path(out).name + ".rank*.json"))]


def bench_store(n_rows: int, chunk_rows: int, passes: int, device: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        start = time.perf_counter()
        make_store(store, n_rows, 512, chunk_rows)
        print(f"# store {n_rows} x 512 float32 ({n_rows * 512 * 4 / 1e9:.2f} GB, "
              f"{-(-n_rows // chunk_rows)} chunks) written in {time.perf_counter() - start:.1f} s")
        me = [sys.executable, str(Path(__file__).resolve()), "--worker", str(store)]
        one = _run(me + [str(Path(tmp) / "one"), str(passes), device], str(Path(tmp) / "one"))
        two = _run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                    "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_port()}",
                    *me[1:], str(Path(tmp) / "two"), str(passes), device], str(Path(tmp) / "two"))
        W1, W2 = np.load(Path(tmp) / "one.npy"), np.load(Path(tmp) / "two.npy")
    diff = float(np.abs(W1 - W2).max() / np.abs(W1).max())
    t1, t2 = one[0]["seconds"], max(r["seconds"] for r in two)
    rss = [one[0]["peak_rss_mb"]] + [r["peak_rss_mb"] for r in sorted(two, key=lambda r: r["rank"])]
    met = max(rss) <= RSS_TARGET_MB and diff <= 1e-5
    print(f"NMF k=32 of {n_rows}x512 store, {passes} passes, 1 rank vs 2 gloo ranks | "
          f"{t1:.1f} s | {t2:.1f} s | {t1 / t2:.2f}x | peak RSS per rank (MB) "
          f"{', '.join(f'{v:.0f}' for v in rss)} | max |W1-W2|/max|W| {diff:.1e} | "
          f"relative error {one[0]['relative_error']:.4f} | "
          f"target (RSS <= {RSS_TARGET_MB} MB, equal to 1e-5): {'met' if met else 'MISSED'}")


# ------------------------------------------------------------------------------ world
def paint_out(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each masked part replaced by the mean colour of a 3-px ring around it (the backgrounds
    are smooth gradients, so this is the local background)."""
    import torch.nn.functional as F

    m = masks.float()[:, None]
    ring = (F.max_pool2d(m, 7, stride=1, padding=3) - m).clamp(min=0)
    fill = (images * ring).sum((2, 3), keepdim=True) / ring.sum((2, 3), keepdim=True).clamp(min=1)
    return images * (1 - m) + fill * m


def reliance(model, world, batch: int = 256) -> np.ndarray:
    """``R[c, p]``: mean drop of P(class c) on images of class c that show part p, when p is
    painted out (NaN where no such image)."""
    probs = lambda x: torch.cat([model(x[s:s + batch]).softmax(1)  # noqa: E731
                                 for s in range(0, len(x), batch)])
    labels, concepts = world.labels.numpy(), world.concepts.numpy()
    n_classes = int(world.n_classes)
    out = np.full((n_classes, concepts.shape[1]), np.nan)
    with torch.no_grad():
        base = probs(world.images)
        for p in range(concepts.shape[1]):
            rows = np.flatnonzero(concepts[:, p] > 0)
            if rows.size == 0:
                continue
            painted = probs(paint_out(world.images[rows], world.masks[rows, p]))
            for c in range(n_classes):
                mine = labels[rows] == c
                if mine.sum() >= 5:
                    idx = torch.as_tensor(rows[mine])
                    out[c, p] = float((base[idx, c] - painted[torch.as_tensor(np.flatnonzero(mine)), c]).mean())
    return out


def _region_kwargs(quantile: Any, n_segments: Any) -> dict | None:
    """The atlas's ``importance_kwargs`` for ``--quantile`` and ``--n-segments`` (None: its own)."""
    kwargs = {} if quantile is None else {"quantile": quantile}
    if n_segments != "default":
        kwargs["n_segments"] = n_segments
    return kwargs or None


def bench_world(n_per_class: int, device: str, n_concepts: int, figure: str | None = None,
                threshold: float = 0.1, world_name: str = "shapes", importance: str = "auto",
                seed: int = 0, quantile: Any = None, n_segments: Any = "default") -> None:
    from conceptkit import ConceptAtlas
    from conceptkit.datasets import load_world
    from conceptkit.evaluate import default_tolerance
    from conceptkit.extraction import ActivationExtractor
    from conceptkit.maps import localisation_table

    name, _, arch = world_name.partition(":")   # "shapes:vit": another shipped architecture
    shipped = load_world(name)
    arch = arch or shipped.architecture
    world = shipped.sample(n_per_class, seed=seed, split="test")
    CONCEPT_NAMES = list(world.concept_names)  # noqa: N806 - the parts' names
    model, layer = shipped.model(arch).to(device), shipped.layers[arch]
    # the bare pass of g, for the ratio: one warm-up pass (allocator, kernels), then the median
    # of 3 timed passes
    extractor = ActivationExtractor(model, layer, batch_size=64, device=device, progress=False)
    extractor(world.images[:64])
    g_times = []
    for _ in range(3):
        g_start = time.perf_counter()
        extractor(world.images)
        g_times.append(time.perf_counter() - g_start)
    g_time = float(np.median(g_times))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        atlas = ConceptAtlas(model, layer, n_concepts, method="ice", seed=seed, progress=False,
                             device=device, class_names=world.class_names, importance=importance,
                             importance_kwargs=_region_kwargs(quantile, n_segments)).fit(world)
        fit_time = time.perf_counter() - start
        index = atlas.report(Path(tmp) / "report")
        total = time.perf_counter() - start
        if figure:
            Path(figure).parent.mkdir(parents=True, exist_ok=True)
            Path(figure).write_bytes((index.parent / "heatmap.png").read_bytes())
    print(f"{world_name}: atlas of {len(world.labels)} images at {layer} (ICE, k={n_concepts}, "
          f"{type(atlas.data_.bank.factorizer).__name__}, {atlas.importance.method}; fit + importance + report) vs "
          f"bare g (median of 3 warm passes) | {g_time:.2f} s | {total:.2f} s (fit+importance {fit_time:.2f} s) | "
          f"{total / g_time:.1f}x overhead")

    # ---- ground truth
    R = reliance(model.cpu(), world)
    used = np.nan_to_num(R, nan=0.0) >= threshold
    maps = atlas.concept_maps(world.images)
    # pointing game with conceptkit.evaluate's tolerance (1/16 of the side: 4 px at 64 px)
    table = localisation_table(maps, world.masks, world.concepts, "pointing_game",
                               tolerance=default_tolerance(int(world.images.shape[-1])))  # (k, G)
    overlap = localisation_table(maps, world.masks, world.concepts, "iou")  # (k, G)
    important = atlas.importance.important()
    concepts = world.concepts.numpy()
    print(f"# reliance R[c, p] = drop of P(c) when part p is painted out (threshold {threshold}):")
    for c in range(int(world.n_classes)):
        print("#  class " + world.class_names[c].ljust(34) + " ".join(
            f"{CONCEPT_NAMES[p][:10]}={R[c, p]:+.2f}" for p in range(R.shape[1])
            if np.isfinite(R[c, p]) and abs(R[c, p]) >= 0.02))
    hits = 0
    parts = sorted({p for pair in world.class_concepts for p in pair})
    chosen = []
    from sklearn.metrics import roc_auc_score

    scores = atlas.data_.scores
    for p in parts:
        # The part's concept: the one whose maps overlap the part best — mean IoU of the map's
        # top decile with the part's mask (conceptkit.maps.match_concepts, as eval_naming picks
        # a part's best-matching concept). It must also point at the part (pointing game >= 0.5,
        # conceptkit.evaluate's tolerance). The ROC AUC of its per-image presence (images with vs
        # without the part) is shown beside; it is undefined where every image shows the part.
        j = int(np.nanargmax(overlap[:, p]))
        with_part = concepts[:, p] > 0
        auc = (roc_auc_score(with_part, scores[:, j]) if 0 < with_part.sum() < len(with_part)
               else float("nan"))
        chosen.append(j)
        relied = set(np.flatnonzero(used[:, p]).tolist())
        found = set(np.flatnonzero(important[:, j]).tolist())
        top = atlas.top_images(j, 20, with_maps=False)
        precision = float(concepts[top.image_ids, p].mean())
        ok = relied == found and table[j, p] >= 0.5
        hits += ok
        print(f"part {CONCEPT_NAMES[p]:<18} | concept C{j} (IoU {overlap[j, p]:.2f}, pointing "
              f"{table[j, p]:.2f}, AUC "
              f"{auc:.3f}) | "
              f"classes relying {sorted(relied)} | classes where important {sorted(found)} | "
              f"{'match' if ok else 'DIFFERENT'} | precision@20 {precision:.2f}")
    distinct = len(set(chosen)) == len(chosen)
    a, b, probability = atlas.most_confused_pairs(1)[0]
    result = atlas.explain_confusion(a, b)
    shared_parts = set(world.class_concepts[a]) & set(world.class_concepts[b])
    # the top concept sits on the common part: it points at it (pointing game >= 0.5, the rule by
    # which conceptkit.evaluate says where a concept sits); a dictionary may hold two concepts
    # on one part, and either one counts
    named = [p for p in shared_parts if table[result.top, p] >= 0.5]
    print(f"parts recovered (importance classes == reliance classes): {hits}/{len(parts)}; one "
          f"distinct concept per part: {distinct}")
    print(f"most confused pair {world.class_names[a]} -> {world.class_names[b]} (mean P {probability:.3f}, "
          f"{result.n_confused}/{len(result.image_ids)} misclassified): top concept C{result.top} "
          f"contributes {result.contributions[result.top]:+.3f} to the margin, shared by both "
          f"classes: {bool(result.shared[result.top])}; it sits on the classes' common part: "
          f"{bool(named)}")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Every flag checked before any work (the store part runs first and takes minutes): one
    line and exit 2 (``parser.error``) for a bad value. Returns the world part's (names, seeds,
    quantile, n_segments)."""
    from conceptkit.datasets import WORLDS, load_world
    from conceptkit.pipeline._atlas import ATLAS_IMPORTANCES

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.n_concepts < 1:
        parser.error(f"--n-concepts must be >= 1; got {args.n_concepts}")
    if args.importance not in ATLAS_IMPORTANCES:
        parser.error(f"--importance: unknown {args.importance!r}; choose from "
                     f"{list(ATLAS_IMPORTANCES)}")
    names = list(WORLDS) if args.world == "all" else [w for w in args.world.split(",") if w]
    if not names:
        parser.error("--world: no world named")
    for spec in names:
        name, _, arch = spec.partition(":")
        if name not in WORLDS:
            parser.error(f"--world: unknown world {name!r}; choose from {list(WORLDS)} or 'all'")
        archs = tuple(load_world(name).architectures)
        if arch and arch not in archs:
            parser.error(f"--world: world {name!r} has no architecture {arch!r}; it has "
                         f"{list(archs)}")
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers expected; got {args.seeds!r}")
    quantile = None
    if args.quantile is not None:
        try:
            quantile = tuple(float(q) for q in args.quantile.split(","))
        except ValueError:
            parser.error(f"--quantile: comma-separated numbers expected; got {args.quantile!r}")
        if not all(0 < q < 1 for q in quantile):
            parser.error(f"--quantile: each value must lie in (0, 1); got {args.quantile!r}")
    n_segments: Any = args.n_segments
    if n_segments == "none":
        n_segments = None
    elif n_segments != "default":
        try:
            n_segments = int(n_segments)
        except ValueError:
            parser.error(f"--n-segments: a positive integer, 'none' or 'default' expected; got "
                         f"{args.n_segments!r}")
        if n_segments < 1:
            parser.error(f"--n-segments must be >= 1; got {n_segments}")
    return names, seeds, quantile, n_segments


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        store_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["store", "world"], default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-concepts", type=int, default=12, help="atlas size (world part)")
    parser.add_argument("--figure", default=None, help="copy the world atlas heatmap here (PNG)")
    parser.add_argument("--world", default="shapes",
                        help="ground-truth world(s) of the world part: a name, comma-separated "
                             "names or 'all' (conceptkit.datasets.WORLDS); name:arch for another "
                             "shipped model, e.g. shapes:vit")
    parser.add_argument("--importance", default="auto", help="the atlas's importance method")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the world part")
    parser.add_argument("--n-segments", default="default",
                        help="pixel ablation's superpixels per image: a number grows each region "
                             "to the superpixels it covers at least half of, 'none' paints the "
                             "regions alone (default: the atlas's own, ATLAS_N_SEGMENTS)")
    parser.add_argument("--quantile", default=None,
                        help="pixel ablation's region quantile(s), comma-separated (default: the "
                             "atlas's, the top decile over the dataset)")
    args = parser.parse_args()
    checked = _check_args(parser, args)
    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench_atlas: {os.cpu_count()} CPUs, torch {torch.__version__}, device "
          f"{args.device}, load average {load:.1f}")
    if args.only in (None, "store"):
        if args.quick:
            bench_store(100_000, 10_000, 3, args.device)
        else:
            bench_store(1_000_000, 50_000, 5, args.device)
    if args.only in (None, "world"):
        names, seeds, quantile, n_segments = checked
        for seed in seeds:
            for name in names:
                print(f"## world {name}, seed {seed}")
                bench_world(60 if args.quick else 500, args.device, args.n_concepts,
                            args.figure if name == "shapes" and seed == 0 else None,
                            world_name=name, importance=args.importance, seed=seed,
                            quantile=quantile, n_segments=n_segments)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# load average at the end {load:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
