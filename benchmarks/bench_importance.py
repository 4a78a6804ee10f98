"""Benchmark: Sobol concept importance, CRAFT-style loop vs vectorised path vs affine fast path.

Setting (after the performance note in shared/reference/sobol_perf.md): 500 inputs, k = 25
concepts, 32 designs, activations (500, 512, 7, 7), and a pooled linear head (global average
pooling + Linear(512, 1000)), as in CRAFT's PyTorch notebook. All three paths use CRAFT's design
(one unscrambled Halton design shared by all inputs) so that their results can be compared.

- ``craft_loop``: written here after CRAFT's ``estimate_importance``: per image, masks ->
  ``(U ⊙ m) W`` -> full ``h`` -> class logit in batches of 64, ``.cpu()`` per batch, numpy Jansen.
- ``generic``: ``concept_importance(..., fast_path=False)``, vectorised over inputs x designs.
- ``fast``: ``concept_importance(..., fast_path=True)``: the affine head collapses to a k-vector.

It also reports the accuracy target: mean absolute error of class-level importances against the
closed form at 32 designs over 100 inputs, for one shared design vs an independent scramble per
input.

OpenMP threads sleep while idle (``OMP_WAIT_POLICY=PASSIVE``, set here before torch loads, and
inherited by the worker processes) unless ``--omp-active``: on a machine shared with other jobs,
spin-waiting threads slow torch down by several times (the CRAFT-style loop, which makes many
small calls, most of all) and make the ratios meaningless. ``--threads N`` caps torch's threads
in every worker (default: torch's default). The header and the last line give the machine, the
threads and the load average.

Run: ``python benchmarks/bench_importance.py [--quick] [--threads 1] [--device cuda]``.
"""

from __future__ import annotations

import os
import sys

if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp when torch loads

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import qmc  # noqa: E402
from torch import nn  # noqa: E402

from conceptkit.importance import concept_importance  # noqa: E402

CLASS_ID = 7


class PinvBank:
    """Components ``W`` (k, C); ``encode`` solves ``A = U W`` per position with ``pinv(W)``."""

    def __init__(self, components: torch.Tensor):
        self.components = components
        self._pinv = torch.linalg.pinv(components)          # (C, k)

    def encode(self, activations):
        return torch.einsum("nchw,ck->nkhw", torch.as_tensor(activations), self._pinv)


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator peak, or resident set size sampled at 2 ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(0.002)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss())
        self.peak_mb = (peak - self._base) / 2**20


def make_problem(n, k, channels, size, n_classes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.empty(n, k, size, size).exponential_(generator=gen)
    components = torch.rand(k, channels, generator=gen)
    acts = torch.einsum("nkhw,kc->nchw", codes, components)
    torch.manual_seed(seed)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, n_classes))
    return head.to(device), acts.to(device), PinvBank(components.to(device))


def craft_loop(head, acts, bank, class_id, n_designs, batch_size=64):
    """CRAFT's per-image loop (re-implemented): shared unscrambled Halton, numpy Jansen."""
    k = bank.components.shape[0]
    points = qmc.Halton(2 * k, scramble=False).random(n_designs).astype(np.float32)
    a, b = points[:, :k], points[:, k:]
    replicated = np.concatenate([np.where(np.eye(k, dtype=bool)[i], b, a) for i in range(k)])
    masks = torch.from_numpy(np.concatenate([a, b, replicated])).to(acts.device)
    codes = bank.encode(acts)
    importances = []
    with torch.no_grad():
        for u in codes:
            outputs = []
            for start in range(0, len(masks), batch_size):
                perturbed = u[None] * masks[start:start + batch_size, :, None, None]
                rebuilt = torch.einsum("mkhw,kc->mchw", perturbed, bank.components)
                outputs.append(head(rebuilt)[:, class_id].cpu())
            y = torch.cat(outputs).double().numpy()
            f_a, f_c = y[:n_designs], y[2 * n_designs:].reshape(k, n_designs)
            importances.append(((f_a - f_c) ** 2).sum(1) / (2 * n_designs * np.var(f_a, ddof=1)))
    return np.mean(importances, axis=0)


VARIANTS = {
    "craft_loop": "CRAFT-style per-image loop, shared unscrambled Halton",
    "generic": "vectorised generic path, same design",
    "fast_path": "affine fast path, same design",
    "fast_path_per_input": "affine fast path, default per-input scrambled Sobol",
    "closed_form": "exact total indices of the affine head",
}


def run_variant(name, args, repeats):
    """Time one variant in this (fresh) process; return median seconds, importances, peak MB."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    head, acts, bank = make_problem(args.n, args.k, args.channels, args.size, 1000, device)
    craft_design = dict(shared_design=True, sampler="halton_unscrambled", n_designs=args.designs,
                        progress=False, confidence=None)
    functions = {
        "craft_loop": lambda a: craft_loop(head, a, bank, CLASS_ID, args.designs),
        "generic": lambda a: concept_importance(head, a, bank, CLASS_ID, fast_path=False,
                                                **craft_design).importances,
        "fast_path": lambda a: concept_importance(head, a, bank, CLASS_ID, fast_path=True,
                                                  **craft_design).importances,
        "fast_path_per_input": lambda a: concept_importance(
            head, a, bank, CLASS_ID, seed=0, n_designs=args.designs, progress=False).importances,
        "closed_form": lambda a: concept_importance(head, a, bank, CLASS_ID, "closed_form",
                                                    progress=False).importances,
    }
    function = functions[name]
    function(acts[:2])                                   # warm-up: one-time library setup
    walls, cpus = [], []
    for _ in range(repeats):
        with PeakMemory(device) as memory:
            start, start_cpu = time.perf_counter(), time.process_time()
            result = function(acts)
            if device.type == "cuda":
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
    return (float(np.median(walls)), float(np.median(cpus)), result, memory.peak_mb,
            torch.get_num_threads())


def speed(args):
    """Each variant runs in a fresh process, so that peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    results = {}
    for name in VARIANTS:
        repeats = 1 if name in ("craft_loop", "generic") else 5
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results[name] = pool.submit(run_variant, name, args, repeats).result()
    shape = f"n={args.n} k={args.k} activations=({args.n}, {args.channels}, {args.size}, " \
            f"{args.size}) head=GAP+Linear({args.channels}, 1000) designs={args.designs}"
    threads = sorted({r[4] for r in results.values()})
    print(f"# speed on {args.device}, torch {'/'.join(map(str, threads))} thread(s) in the workers: "
          f"{shape}")
    print("# wall-clock seconds (CPU seconds of the process, which a loaded machine inflates less)")
    for first, second in [("craft_loop", "generic"), ("craft_loop", "fast_path"),
                          ("generic", "fast_path")]:
        (w_a, c_a, a, mem_a, _), (w_b, c_b, b, mem_b, _) = results[first], results[second]
        print(f"{first + ' vs ' + second:24s} {w_a:8.3f} s ({c_a:8.3f}) vs {w_b:7.3f} s "
              f"({c_b:7.3f})  ratio {w_a / w_b:7.1f}x ({c_a / c_b:7.1f}x)  "
              f"max|diff| {np.abs(a - b).max():.1e}  peak {mem_a:6.1f} MB vs {mem_b:6.1f} MB")
    for name in ("fast_path_per_input", "closed_form"):
        wall, cpu, _, peak, _ = results[name]
        print(f"{name:24s} {wall:8.3f} s ({cpu:8.3f})  peak {peak:6.1f} MB  ({VARIANTS[name]})")
    w_loop, c_loop, loop, _, _ = results["craft_loop"]
    w_fast, c_fast, fast, _, _ = results["fast_path"]
    ok = min(w_loop / w_fast, c_loop / c_fast) >= 100 and np.abs(loop - fast).max() <= 1e-5
    print(f"target fast_path >= 100x craft_loop with max|diff| <= 1e-5: {'met' if ok else 'MISSED'}")


def accuracy(args, device):
    print(f"# accuracy: class-level MAE vs closed form, 100 inputs, {args.designs} designs, "
          f"k={args.k}, {args.reps} datasets")
    variants = {
        "craft (shared unscrambled Halton)": dict(shared_design=True,
                                                  sampler="halton_unscrambled"),
        "shared scrambled Sobol": dict(shared_design=True, sampler="sobol"),
        "per-input scrambled Sobol": dict(shared_design=False, sampler="sobol"),
    }
    errors = {name: [] for name in variants}
    per_input_errors = {name: [] for name in variants}
    for rep in range(args.reps):
        head, acts, bank = make_problem(100, args.k, 64, 3, 10, device, seed=rep)
        exact = concept_importance(head, acts, bank, 2, "closed_form", progress=False)
        for name, options in variants.items():
            result = concept_importance(head, acts, bank, 2, seed=rep, n_designs=args.designs,
                                        progress=False, **options)
            errors[name].append(np.abs(result.importances - exact.importances).mean())
            per_input_errors[name].append(np.abs(result.per_input - exact.per_input).mean())
    for name in variants:
        print(f"{name:34s} MAE {np.mean(errors[name]):.4f} ± {np.std(errors[name]):.4f}  "
              f"(per-input MAE {np.mean(per_input_errors[name]):.4f})")
    ok = np.mean(errors["per-input scrambled Sobol"]) <= 0.02
    print(f"target MAE <= 0.02 with per-input scrambling: {'met' if ok else 'MISSED'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--designs", type=int, default=32)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="n=50 and 3 accuracy datasets")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every worker (default: torch's default)")
    parser.add_argument("--omp-active", action="store_true",
                        help="leave OMP_WAIT_POLICY alone (spinning OpenMP threads)")
    args = parser.parse_args()
    for name in ("n", "k", "channels", "size", "designs", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    if args.quick:
        args.n, args.reps = 50, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench_importance: {platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} {torch.get_num_threads()} thread(s), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    speed(args)
    accuracy(args, torch.device(args.device))
    print(f"# load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
