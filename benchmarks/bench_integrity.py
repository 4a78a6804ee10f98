"""Benchmark: what conceptkit's integrity checks cost, next to the work they guard.

Stores never serve stale or altered data, and cached explanations never outlive the weights or
the factorizer they came from. Both checks read bytes the user did not ask to read; this measures
how many, in one process, median of ``--repeats``:

- **activation store**: a store of ``--rows`` x 512 float32 rows in chunks of 65,536 rows (written
  by :func:`conceptkit.extraction._store.write_chunks`, synthetic non-negative rows) is read three
  ways: a plain ``np.load(mmap_mode="r")`` pass that sums every chunk (the read a fit needs); the
  first pass of a fresh :class:`~conceptkit.extraction.ActivationStore` (which checks every
  chunk's BLAKE2b digest before serving it); a second pass of the same store object (checked
  once per file state: nothing is hashed again). The store's bytes are in the page cache for
  every pass (one warm-up pass first), so the ratio is hashing against memory reads: a cold
  disk makes the raw pass slower and the ratio smaller.
- **model weights**: on timm's ``vit_base_patch16_224`` (86 M parameters, random weights, built
  offline) and on the shipped reference CNN, :func:`conceptkit._torchutils.weights_state` (what
  an explanation's caches compare on every maps or metrics call: a float64 sum and L2 norm of
  every weight) and :func:`conceptkit.extraction._fingerprint.module_digest` (the BLAKE2b of
  every weight that ``write_store`` records once per extraction), against one forward pass of a
  batch of ``--batch`` images under ``torch.no_grad()``.

Run: ``python benchmarks/bench_integrity.py [--rows 200000] [--repeats 5] [--batch 8]
[--quick]``. Full run: about 1 minute on 2 CPU cores; ``--quick`` (50,000 rows, 3 repeats, no
ViT-B): about 10 seconds. The store goes to a temporary directory that is deleted at the end.
"""

from __future__ import annotations

import os
import sys

if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp when torch loads

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

FEATURES = 512
CHUNK_ROWS = 65536


def _median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def store_costs(rows: int, repeats: int) -> dict:
    from conceptkit.extraction import ActivationStore
    from conceptkit.extraction._store import finalize_store, write_chunks
    from conceptkit.extraction._store_read import chunk_digest

    def synthetic(start: int, stop: int) -> torch.Tensor:
        rng = np.random.default_rng([0, start])
        return torch.from_numpy(rng.exponential(1.0, (stop - start, FEATURES)).astype(np.float32))

    with tempfile.TemporaryDirectory(prefix="ck_integrity_") as tmp:
        path = Path(tmp) / "store"
        write_chunks(synthetic, rows, path, chunk_size=CHUNK_ROWS, layout="pooled", progress=False)
        store = finalize_store(path, rows, chunk_size=CHUNK_ROWS, layout="pooled")
        files = [path / entry["file"] for entry in store.manifest["chunks"]]
        size = sum(f.stat().st_size for f in files)

        def raw() -> float:
            return float(sum(np.load(f, mmap_mode="r", allow_pickle=False).sum(dtype=np.float64)
                             for f in files))

        def checked_first() -> float:
            return float(sum(c.sum(dtype=np.float64) for c in ActivationStore(path).iter_chunks()))

        held = ActivationStore(path)
        for _ in held.iter_chunks():  # checks every digest once
            pass

        def checked_again() -> float:
            return float(sum(c.sum(dtype=np.float64) for c in held.iter_chunks()))

        def hashing() -> None:
            for f in files:
                chunk_digest(f)

        raw()  # warm the page cache
        assert abs(raw() - checked_first()) <= 1e-6 * abs(raw())  # the same rows either way
        return {"rows": rows, "bytes": size, "chunks": len(files),
                "raw": _median_seconds(raw, repeats),
                "checked_first": _median_seconds(checked_first, repeats),
                "checked_again": _median_seconds(checked_again, repeats),
                "hash_only": _median_seconds(hashing, repeats)}


def weight_costs(name: str, model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> dict:
    from conceptkit._torchutils import weights_state
    from conceptkit.extraction._fingerprint import module_digest

    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    forward()  # warm-up
    n_params = sum(p.numel() for p in model.parameters())
    return {"model": name, "parameters": n_params, "batch": tuple(batch.shape),
            "forward": _median_seconds(forward, repeats),
            "weights_state": _median_seconds(lambda: weights_state(model), repeats),
            "module_digest": _median_seconds(lambda: module_digest(model), repeats)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="store rows (200,000: 410 MB)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (5)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--quick", action="store_true", help="50,000 rows, 3 repeats, no ViT-B")
    parser.add_argument("--omp-active", action="store_true", help="leave OMP_WAIT_POLICY alone")
    args = parser.parse_args(argv)
    rows = args.rows or (50_000 if args.quick else 200_000)
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")

    s = store_costs(rows, repeats)
    mb = s["bytes"] / 1e6
    print(f"\nactivation store: {s['rows']:,} x {FEATURES} float32, {s['chunks']} chunks, {mb:.0f} MB "
          f"(page cache warm), median of {repeats}")
    print(f"  plain read (np.load + sum)          {s['raw']:.3f} s")
    print(f"  first read, digests checked        {s['checked_first']:.3f} s  "
          f"({s['checked_first'] / s['raw']:.2f}x the plain read)")
    print(f"  later reads, same store object     {s['checked_again']:.3f} s  "
          f"({s['checked_again'] / s['raw']:.2f}x)")
    print(f"  hashing alone (BLAKE2b)            {s['hash_only']:.3f} s  "
          f"({mb / 1e3 / s['hash_only']:.2f} GB/s)")

    from conceptkit.datasets import reference_model

    cases = [("reference CNN (shapes world)", reference_model(),
              torch.rand(args.batch, 3, 64, 64))]
    if not args.quick:
        import timm

        torch.manual_seed(0)
        cases.append(("timm vit_base_patch16_224 (random weights)",
                      timm.create_model("vit_base_patch16_224", pretrained=False),
                      torch.rand(args.batch, 3, 224, 224)))
    print(f"\nmodel weights, median of {repeats}:")
    for name, model, batch in cases:
        w = weight_costs(name, model, batch, repeats)
        print(f"  {w['model']}: {w['parameters'] / 1e6:.2f} M parameters; forward of "
              f"{w['batch'][0]} images {w['forward'] * 1e3:.1f} ms")
        print(f"    weights_state (every cached maps/metrics call) {w['weights_state'] * 1e3:.1f} ms"
              f"  ({w['weights_state'] / w['forward']:.2f}x one forward)")
        print(f"    module_digest (once per write_store)           {w['module_digest'] * 1e3:.1f} ms"
              f"  ({w['module_digest'] / w['forward']:.2f}x one forward)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
