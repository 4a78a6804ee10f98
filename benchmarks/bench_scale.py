"""Benchmark: concept discovery over 1,000,000 x 512 float32 activations (2 GB) in bounded memory.

A synthetic activation store is written chunk by chunk with
:func:`conceptkit.extraction._store.write_chunks` (non-negative rank-``k`` rows, sparse exponential codes
and parts, plus non-negative noise of 10 % of the rows' standard deviation; every chunk is drawn
from its own seeded generator, so the store never exists in memory). Then, each in a **fresh subprocess** whose peak resident memory
(``VmHWM``: anonymous and file-backed pages, so memory-mapped chunks count) is read at its end:

- **streaming**: ``fit_streaming(NMF(k, solver="torch_hals"), store, seed=0)`` — online HALS over
  every row, started from a batch fit of a uniform sample (``--solver cd``: scikit-learn's
  ``MiniBatchNMF``);
- **in-memory sample**: the usual alternative when the rows do not fit, ``NMF(k, solver=...).fit``
  on a uniform 100,000-row sample loaded into memory.

Both dictionaries are then scored the same way on every row of the store
(:func:`~conceptkit.concepts.streaming_error`, one more pass, timed separately).

Printed per comparison: both wall times and their ratio, both peak RSS, and the relative
reconstruction error ``||A - U W||_F / ||A||_F`` over the whole store of both dictionaries, plus the
target (peak RSS <= 1.5 GB for the streaming fit). The store is deleted at the end unless ``--keep``.

Run: ``python benchmarks/bench_scale.py [--quick] [--rows N] [--dir DIR] [--keep]``. Full run
(1,000,000 rows, 2 GB in a temporary directory): about 8 minutes on 2 CPU cores; ``--quick``
(100,000 rows, 20,000-row sample): about 1 minute.
"""

from __future__ import annotations

import os
import sys

if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp when torch loads

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _proc import status_kb  # noqa: E402

TARGET_GB = 1.5
SEED = 0
#: Scale of the non-negative noise |N(0, 1)|: 10 % of the rows' standard deviation (2.9 at k = 16).
NOISE = 0.3


# ------------------------------------------------------------------------------ the store
def planted_parts(k: int, features: int, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng([seed, 0])
    return (rng.exponential(1.0, (k, features)) * (rng.random((k, features)) < 0.3)).astype(np.float32)


def synthetic_rows(start: int, stop: int, parts: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Rows ``[start, stop)``: sparse exponential codes times ``parts`` plus non-negative noise."""
    rng = np.random.default_rng([seed, 1, start])
    k, features = parts.shape
    codes = rng.exponential(1.0, (stop - start, k)).astype(np.float32)
    codes *= rng.random((stop - start, k), dtype=np.float32) < 0.5
    rows = codes @ parts
    rows += np.float32(NOISE) * np.abs(rng.standard_normal(rows.shape, dtype=np.float32))
    return rows


def write_synthetic_store(path: Path, n_rows: int, features: int, k: int, chunk_rows: int) -> float:
    import torch

    from conceptkit.extraction._store import finalize_store, write_chunks

    parts = planted_parts(k, features)
    start = time.perf_counter()
    write_chunks(lambda a, b: torch.from_numpy(synthetic_rows(a, b, parts)), n_rows, path,
                 chunk_size=chunk_rows, layout="pooled", progress=False)
    finalize_store(path, n_rows, chunk_size=chunk_rows, layout="pooled",
                   meta={"synthetic": {"k": k, "seed": SEED}})
    return time.perf_counter() - start


# ------------------------------------------------------------------------------ workers
def worker(mode: str, store_path: str, k: int, batch_rows: int, sample_rows: int,
           epochs: int, solver: str) -> dict:
    """Runs in a fresh process: one fit, its error over the whole store, its peak RSS."""
    import warnings

    import torch
    from sklearn.exceptions import ConvergenceWarning

    from conceptkit.concepts import NMF, fit_streaming, streaming_error
    from conceptkit.concepts._streaming import RowSource
    from conceptkit.concepts.metrics import matched_cosine
    from conceptkit.extraction import ActivationStore

    warnings.simplefilter("ignore", ConvergenceWarning)
    store = ActivationStore(store_path)
    base_kb = status_kb("VmRSS")
    start = time.perf_counter()
    if mode == "stream":
        est = fit_streaming(NMF(k, solver=solver), store, epochs=epochs,
                            batch_rows=batch_rows, seed=SEED, error=False, progress=False)
    else:
        sample = RowSource(store).sample(sample_rows, np.random.default_rng(SEED))
        est = NMF(k, solver=solver, random_state=SEED).fit(sample)
        del sample
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    residual, norm = streaming_error(est, store, batch_rows=batch_rows)
    error_seconds = time.perf_counter() - start
    parts = planted_parts(k, store.n_features)
    return {"mode": mode, "seconds": fit_seconds, "error_seconds": error_seconds,
            "rel_error": residual / norm, "matched_cosine": matched_cosine(est.components_, parts),
            "peak_mb": status_kb("VmHWM") / 1024, "base_mb": base_kb / 1024,
            "torch_threads": torch.get_num_threads()}


def run_worker(mode: str, store: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, str(store), "--k", str(args.k),
           "--batch-rows", str(args.batch_rows), "--sample-rows", str(args.sample_rows),
           "--epochs", str(args.epochs), "--solver", args.solver]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 20,000-row sample")
    parser.add_argument("--rows", type=int, default=None, help="rows in the store (1,000,000)")
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--k", type=int, default=16, help="concepts (planted rank)")
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--batch-rows", type=int, default=8192)
    parser.add_argument("--sample-rows", type=int, default=None,
                        help="rows of the in-memory comparison fit (100,000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--solver", default="torch_hals",
                        help="NMF solver of both fits: torch_hals (online HALS) or cd/mu "
                             "(scikit-learn's MiniBatchNMF for the streaming fit)")
    parser.add_argument("--dir", default=None, help="where to write the store (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store")
    parser.add_argument("--omp-active", action="store_true", help="leave OMP_WAIT_POLICY alone")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sample_rows is None:
        args.sample_rows = 20_000 if args.quick else 100_000
    if args.worker:
        mode, store = args.worker
        print(json.dumps(worker(mode, store, args.k, args.batch_rows, args.sample_rows,
                                args.epochs, args.solver)))
        return 0

    n_rows = args.rows or (100_000 if args.quick else 1_000_000)
    size_gb = n_rows * args.features * 4 / 1e9
    print(f"# bench_scale: {os.cpu_count()} CPUs, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; store {n_rows:,} x {args.features} "
          f"float32 ({size_gb:.2f} GB), k={args.k}, NMF solver {args.solver}, chunks of "
          f"{args.chunk_rows:,} rows, blocks of {args.batch_rows:,}, {args.epochs} epoch(s); load "
          f"average {os.getloadavg()[0]:.1f}")
    root = Path(tempfile.mkdtemp(prefix="conceptkit-scale-", dir=args.dir))
    store = root / "store"
    try:
        seconds = write_synthetic_store(store, n_rows, args.features, args.k, args.chunk_rows)
        on_disk = sum(f.stat().st_size for f in store.iterdir()) / 1e9
        print(f"# wrote {store} ({on_disk:.2f} GB) in {seconds:.1f} s")
        stream = run_worker("stream", store, args)
        sample = run_worker("sample", store, args)
        ok = stream["peak_mb"] <= TARGET_GB * 1024
        what = f"NMF k={args.k} on {n_rows:,} x {args.features} ({size_gb:.2f} GB store)"
        print(f"{what} | in-memory fit of a {args.sample_rows:,}-row sample {sample['seconds']:.1f} s "
              f"| streaming fit of every row {stream['seconds']:.1f} s | ratio "
              f"{stream['seconds'] / sample['seconds']:.2f}x | peak RSS {stream['peak_mb']:.0f} MB "
              f"vs {sample['peak_mb']:.0f} MB (after imports {stream['base_mb']:.0f} MB) | rel. error "
              f"over the store {stream['rel_error']:.5f} vs {sample['rel_error']:.5f} "
              f"({100 * (stream['rel_error'] / sample['rel_error'] - 1):+.2f} %), planted parts "
              f"matched cosine {stream['matched_cosine']:.4f} vs {sample['matched_cosine']:.4f} | "
              f"target peak RSS <= {TARGET_GB} GB: {'met' if ok else 'MISSED'}")
        print(f"    error pass over the store (exact ||A - UW||): {stream['error_seconds']:.1f} s; "
              f"torch threads {stream['torch_threads']}")
    finally:
        if args.keep:
            print(f"# kept {store}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
