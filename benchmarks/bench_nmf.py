"""Benchmark the NMF solvers of conceptkit against scikit-learn's coordinate descent.

For each problem (non-negative low-rank data plus non-negative noise, seeded) every solver fits
``NMF(k, solver=..., random_state=0)`` with the default ``max_iter``/``tol``. Each fit runs in its own
fresh worker process so that its peak memory can be read cleanly; solvers take turns (the order
rotates between repeats) so that load on the machine hits them alike. Printed per comparison:
median fit time (wall clock) of both solvers and their ratio, the median CPU time of the worker
(user + system; on a loaded machine the better measure of work done, since it does not count
time spent waiting for a core), relative error ``||A - U W|| / ||A||`` of both,
and the peak memory above the worker's footprint after loading the data (peak resident set size
from ``getrusage``, which counts numpy, BLAS and torch CPU allocations alike; on a GPU,
``torch.cuda.max_memory_allocated``). Times cover ``fit`` only (initialisation included), after a
small warm-up fit in the same worker.

Usage::

    python benchmarks/bench_nmf.py            # (5000 x 2048, k=25) and (20000 x 512, k=10)
    python benchmarks/bench_nmf.py --quick    # small problems, one repeat
    python benchmarks/bench_nmf.py --threads 1   # single-threaded (less sensitive to load)
    python benchmarks/bench_nmf.py --omp-passive # sleeping OpenMP threads (shared machines)

On a loaded machine (more runnable processes than cores) GNU OpenMP's default active wait makes
torch's intra-op thread pool spin against the other processes; torch solvers then slow down far
more than scikit-learn's OpenBLAS calls. ``--threads 1`` or ``--omp-passive`` removes that effect;
the header line prints the load average at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL = [(5000, 2048, 25), (20000, 512, 10)]
QUICK = [(1000, 512, 10), (4000, 128, 5)]
SOLVERS = ["cd", "mu", "torch_hals", "torch_mu"]


def make_data(n: int, c: int, k: int, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    """Rank-``k`` non-negative data (exponential codes, sparse exponential parts) plus noise."""
    rng = np.random.default_rng(seed)
    codes = rng.exponential(1.0, (n, k)).astype(np.float32)
    parts = (rng.exponential(1.0, (k, c)) * (rng.random((k, c)) < 0.3)).astype(np.float32)
    A = codes @ parts
    A += np.float32(noise * A.std()) * np.abs(rng.standard_normal(A.shape, dtype=np.float32))
    return A


def _current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(path: str, solver: str, k: int, device: str | None, threads: int | None) -> dict:
    """Run inside a fresh process: warm up, fit once, report time / error / peak memory."""
    import warnings

    import torch
    from sklearn.exceptions import ConvergenceWarning

    if threads:  # the same cap for torch's and numpy's native thread pools
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)

    from conceptkit.concepts import NMF

    warnings.simplefilter("ignore", ConvergenceWarning)
    kwargs = {"device": device} if device and solver.startswith("torch") else {}
    warm = np.abs(np.random.default_rng(1).standard_normal((64, 32))).astype(np.float32)
    NMF(4, solver=solver, random_state=0, max_iter=5, **kwargs).fit(warm)
    A = np.load(path)
    data = torch.from_numpy(A).to(device) if kwargs else A
    if kwargs and device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _current_rss()
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    est = NMF(k, solver=solver, random_state=0, **kwargs).fit(data)
    if kwargs and device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    result = {"solver": solver, "seconds": seconds, "cpu_seconds": cpu_seconds,
              "n_iter": est.n_iter_,
              "rel_error": est.reconstruction_err_ / float(np.linalg.norm(A)),
              "peak_mb": max(peak, 0) / 2**20}
    if kwargs and device.startswith("cuda"):
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_worker(path: Path, solver: str, k: int, device: str | None, threads: int | None,
               passive: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(path), solver, str(k)]
    env = dict(os.environ)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if device:
        cmd += ["--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0 or not out.stdout.strip():
        # the worker's own message, not a CalledProcessError that hides it
        tail = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"error: the {solver} worker (k={k}) failed with exit code "
                         f"{out.returncode}: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe_threads() -> str:
    code = ("import torch, threadpoolctl, json; print(json.dumps([torch.get_num_threads(), "
            "[(i['internal_api'], i['num_threads']) for i in threadpoolctl.threadpool_info()]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        torch_threads, pools = json.loads(out.stdout)
    except ValueError:
        return "threads: unknown"
    return f"torch {torch_threads}, native pools {pools}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problems, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="fits per solver (median)")
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    parser.add_argument("--device", default=None, help="device for the torch solvers (e.g. cuda)")
    parser.add_argument("--threads", type=int, default=None,
                        help="cap torch and BLAS/OpenMP threads in every worker (default: as is)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="run workers with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep "
                             "instead of spinning; matters on a loaded machine)")
    parser.add_argument("--worker", nargs=3, metavar=("DATA", "SOLVER", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        path, solver, k = args.worker
        print(json.dumps(worker(path, solver, int(k), args.device, args.threads)))
        return

    solvers = [s for s in args.solvers.split(",") if s]
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown or not solvers:
        parser.error(f"--solvers: unknown {unknown or args.solvers!r}; choose from {SOLVERS}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1; got {args.threads}")
    problems = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    if "cd" not in solvers:
        solvers = ["cd"] + solvers
    threads = f"capped at {args.threads}" if args.threads else describe_threads()
    if args.omp_passive:
        threads += ", OMP_WAIT_POLICY=PASSIVE"
    print(f"# bench_nmf: {os.cpu_count()} CPUs, threads {threads}; torch device "
          f"{args.device or 'cpu'}; {repeats} repeat(s), median time; load average "
          f"{os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for n, c, k in problems:
            path = Path(tmp) / f"A_{n}_{c}_{k}.npy"
            np.save(path, make_data(n, c, k))
            runs: dict[str, list[dict]] = {s: [] for s in solvers}
            for r in range(repeats):
                order = solvers[r % len(solvers):] + solvers[:r % len(solvers)]
                for solver in order:
                    runs[solver].append(run_worker(path, solver, k, args.device, args.threads,
                                                   args.omp_passive))
            summary = {s: {"seconds": statistics.median(x["seconds"] for x in rs),
                           "cpu": statistics.median(x["cpu_seconds"] for x in rs),
                           "rel_error": rs[0]["rel_error"], "n_iter": rs[0]["n_iter"],
                           "peak_mb": max(x["peak_mb"] for x in rs),
                           "all": [round(x["seconds"], 2) for x in rs]}
                       for s, rs in runs.items()}
            ref = summary["cd"]
            label = f"{n}x{c} k={k}"
            print(f"{label}  cd: {ref['seconds']:.2f} s (runs {ref['all']}; CPU {ref['cpu']:.2f} s), "
                  f"{ref['n_iter']} it, rel.err {ref['rel_error']:.5f}, peak RSS +{ref['peak_mb']:.0f} MB")
            for solver in solvers:
                if solver == "cd":
                    continue
                s = summary[solver]
                gap = 100.0 * (s["rel_error"] / ref["rel_error"] - 1.0)
                print(f"{label}  {solver} vs cd: {s['seconds']:.2f} s vs {ref['seconds']:.2f} s "
                      f"(ratio {s['seconds'] / ref['seconds']:.2f}; runs {s['all']}; CPU time "
                      f"{s['cpu']:.2f} s vs {ref['cpu']:.2f} s, ratio {s['cpu'] / ref['cpu']:.2f}), "
                      f"{s['n_iter']} vs {ref['n_iter']} it, rel.err {s['rel_error']:.5f} vs "
                      f"{ref['rel_error']:.5f} ({gap:+.1f} %), peak RSS +{s['peak_mb']:.0f} MB vs "
                      f"+{ref['peak_mb']:.0f} MB")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
