"""Benchmark: concept bottleneck models on the reference concept dataset, and the sparse solver.

Part 1 — supervised CBMs (the ``conceptkit train-cbm`` defaults): the shipped reference CNN is
frozen and cut at ``block3``; its maps are computed once for 300 / 60 / 150 images per class
(train / val / test, seed 0) and a ``SpatialProbe`` is the concept encoder. Each of the four modes
is trained (Adam lr 1e-2, batch 128, ≤ 40 epochs, patience 10) and scored on the test split: task
and concept accuracy, accuracy with every concept intervened, intervention-curve areas for the
three policies, and leakage.

Part 2 — post-hoc CBM on the pooled ``block4`` features (CAV bank from the concept labels,
SGD elastic-net head, PCBM-h).

Part 3 — the label-free CBM's elastic-net solver (torch FISTA with backtracking) against
scikit-learn's SAGA on the same objective (``LogisticRegression(l1_ratio=0.99, C=1/(nλ))``):
wall time and objective gap, on standardised random concept activations. Both run under the same
thread cap (``--solver-threads``, default 1: SAGA is single-threaded; torch's and the BLAS/OpenMP
pools are capped alike), after a warm-up fit of each on the first 500 rows; each time is the
median of ``--repeats`` fits (default 5; 1 with ``--quick``, where SAGA needs ~45 s at alpha 1e-3
under load), the two solvers alternating.

OpenMP threads sleep while idle (``OMP_WAIT_POLICY=PASSIVE``, set here before torch loads) unless
``--omp-active``. The header and the last line give the machine, the threads and the load
average.

Run: ``python benchmarks/bench_cbm.py [--quick] [--only supervised,posthoc,solver]
[--solver-threads 1] [--repeats 5]``; prints Markdown tables and writes JSON with ``--json PATH``.
"""

from __future__ import annotations

import os
import sys

if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp when torch loads

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from conceptkit.bottleneck import (  # noqa: E402
    CAVBank,
    ConceptBottleneckModel,
    PosthocCBM,
    SpatialProbe,
    evaluate_cbm,
    intervention_curve,
    leakage_score,
    train_cbm,
)
from conceptkit.bottleneck._sparse import fit_elastic_net, nnz_per_class  # noqa: E402
from conceptkit.datasets import make_concept_dataset, reference_model  # noqa: E402
from conceptkit.extraction import ActivationExtractor, split_model  # noqa: E402

PARTS = ("supervised", "posthoc", "solver")


@contextmanager
def thread_cap(threads: int):
    """torch's and the native BLAS/OpenMP pools capped at ``threads`` inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def supervised(sizes: dict[str, int], epochs: int) -> list[dict]:
    start = time.perf_counter()
    splits = {name: make_concept_dataset(n, seed=0, split=name) for name, n in sizes.items()}
    extractor = ActivationExtractor(reference_model(), "block3", batch_size=256, progress=False)
    data = {name: (extractor(ds.images), ds.concepts, ds.labels) for name, ds in splits.items()}
    print(f"features: {time.perf_counter() - start:.1f} s")
    rows = []
    for mode in ("joint", "independent", "sequential", "standard"):
        torch.manual_seed(0)
        model = ConceptBottleneckModel(SpatialProbe(data["train"][0].shape[1], 10), 10, 6)
        history = train_cbm(model, data["train"], data["val"], mode=mode, epochs=epochs, lr=1e-2,
                            batch_size=128, patience=10, seed=0, progress=False)
        result = evaluate_cbm(model, data["test"])
        orders = {"random": {"n_trials": 5, "seed": 0}}  # the other policies are deterministic
        curves = {p: intervention_curve(model, data["test"], policy=p, **orders.get(p, {}))
                  for p in ("random", "uncertainty", "importance")}
        leak = leakage_score(model, data["train"], data["test"])
        rows.append({"mode": mode, "train_seconds": history.seconds,
                     "epochs": [s.epochs_run for s in history.stages],
                     "task_accuracy": result.task_accuracy,
                     "concept_accuracy": result.concept_accuracy,
                     "min_concept_accuracy": float(result.per_concept_accuracy.min()),
                     "all_intervened": float(curves["random"].accuracy_mean[-1]),
                     "area": {p: c.area for p, c in curves.items()},
                     "leakage": leak.leakage})
    return rows


def posthoc(n_train: int, n_test: int) -> dict:
    backbone, _ = split_model(reference_model(), "flatten")
    train = make_concept_dataset(n_train, seed=0, split="train", spurious=False)
    test = make_concept_dataset(n_test, seed=0, split="test")
    with torch.no_grad():
        emb, emb_test = backbone(train.images).numpy(), backbone(test.images).numpy()
    start = time.perf_counter()
    bank = CAVBank.from_concept_labels(emb, train.concepts, list(train.concept_names), n_samples=50,
                                       seed=0)
    plain = PosthocCBM(bank, alpha=1e-2, seed=0, progress=False).fit(emb, train.labels)
    hybrid = PosthocCBM(bank, alpha=1e-2, residual=True, seed=0, progress=False).fit(emb, train.labels)
    y = test.labels.numpy()
    return {"seconds": time.perf_counter() - start, "cav_accuracy": bank.accuracy.tolist(),
            "pcbm_accuracy": float((plain.predict(emb_test) == y).mean()),
            "pcbm_h_accuracy": float((hybrid.predict(emb_test) == y).mean())}


def solver(n: int, k: int, n_classes: int, alphas: list[float], threads: int = 1,
           repeats: int = 5) -> list[dict]:
    """FISTA against SAGA under one thread cap: a warm-up fit of each on 500 rows, then
    ``repeats`` fits of each (alternating), median wall time."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, k))
    weights = rng.normal(size=(n_classes, k)) * (rng.random((n_classes, k)) < 0.2) * 2
    y = (X @ weights.T + rng.gumbel(size=(n, n_classes))).argmax(1)
    Xt, yt = torch.tensor(X), torch.tensor(y)

    def ours(alpha, rows=slice(None)):
        return fit_elastic_net(Xt[rows], yt[rows], n_classes, alpha, tol=1e-8, max_iter=20000)

    def theirs(alpha, rows=slice(None)):
        return LogisticRegression(l1_ratio=0.99, C=1 / (len(X[rows]) * alpha), solver="saga",
                                  tol=1e-8, max_iter=100000).fit(X[rows], y[rows])

    out = []
    with thread_cap(threads):
        for alpha in alphas:
            ours(alpha, slice(500)), theirs(alpha, slice(500))  # warm-up: imports, allocator
            times: dict[str, list[float]] = {"ours": [], "theirs": []}
            for r in range(repeats):
                for name in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
                    start = time.perf_counter()
                    result = ours(alpha) if name == "ours" else theirs(alpha)
                    times[name].append(time.perf_counter() - start)
                    if name == "ours":
                        fit = result
                    else:
                        sk = result
            W, b = torch.tensor(sk.coef_), torch.tensor(sk.intercept_)
            sk_obj = float(torch.nn.functional.cross_entropy(Xt @ W.T + b, yt)
                           + alpha * (0.99 * W.abs().sum() + 0.005 * (W * W).sum()))
            out.append({"alpha": alpha, "threads": threads, "repeats": repeats,
                        "ours_seconds": statistics.median(times["ours"]),
                        "ours_runs": times["ours"], "ours_iterations": fit.n_iter,
                        "sklearn_seconds": statistics.median(times["theirs"]),
                        "sklearn_runs": times["theirs"], "objective_gap": fit.objective - sk_obj,
                        "nnz_ours": int(nnz_per_class(fit.weight).sum()),
                        "nnz_sklearn": int(nnz_per_class(W).sum())})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    parser.add_argument("--solver-threads", type=int, default=1,
                        help="thread cap of both solvers in the solver part (torch, BLAS/OpenMP)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed fits of each solver (median; default 5, 1 with --quick)")
    parser.add_argument("--omp-active", action="store_true",
                        help="leave OMP_WAIT_POLICY alone (spinning OpenMP threads)")
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--only: unknown {[p for p in parts if p not in PARTS] or args.only!r}; "
                     f"choose from {list(PARTS)}")
    if args.solver_threads < 1:
        parser.error(f"--solver-threads must be >= 1; got {args.solver_threads}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    repeats = args.repeats or (1 if args.quick else 5)
    print(f"# bench_cbm: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"{torch.get_num_threads()} thread(s) (parts supervised/posthoc), solver part capped at "
          f"{args.solver_threads} thread(s) for both solvers, {repeats} repeat(s), median; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average {_load()}", flush=True)
    sizes = {"train": 60, "val": 20, "test": 50} if args.quick else {"train": 300, "val": 60, "test": 150}
    results = {}
    if "supervised" in parts:
        results["supervised"] = supervised(sizes, epochs=15 if args.quick else 40)
    if "posthoc" in parts:
        results["posthoc"] = posthoc(60 if args.quick else 300, 50 if args.quick else 150)
    if "solver" in parts:
        results["solver"] = solver(2000 if args.quick else 10000, 50, 10, [1e-3, 1e-2],
                                   args.solver_threads, repeats)
    if "supervised" in results:
        print("\n| mode | train s | epochs | task acc | concept acc (min) | all intervened | "
              "area random / uncertainty / importance | leakage |\n|---|---|---|---|---|---|---|---|")
        for r in results["supervised"]:
            area = " / ".join(f"{r['area'][p]:.3f}" for p in ("random", "uncertainty", "importance"))
            print(f"| {r['mode']} | {r['train_seconds']:.1f} | {r['epochs']} | "
                  f"{r['task_accuracy']:.4f} | {r['concept_accuracy']:.4f} "
                  f"({r['min_concept_accuracy']:.3f}) | {r['all_intervened']:.4f} | {area} | "
                  f"{r['leakage']:+.4f} |")
    if "posthoc" in results:
        p = results["posthoc"]
        print(f"\nPCBM test accuracy {p['pcbm_accuracy']:.4f}, PCBM-h {p['pcbm_h_accuracy']:.4f} "
              f"({p['seconds']:.1f} s); CAV held-out accuracy "
              f"{np.round(p['cav_accuracy'], 3).tolist()}")
    if "solver" in results:
        print(f"\nsolver: {args.solver_threads} thread(s) each, median of {repeats} fits after a "
              f"warm-up\n| alpha | ours s (iterations; runs) | sklearn saga s (runs) | "
              f"objective gap (ours − sklearn) | NNZ ours / sklearn |\n|---|---|---|---|---|")
        for r in results["solver"]:
            print(f"| {r['alpha']:g} | {r['ours_seconds']:.2f} ({r['ours_iterations']}; "
                  f"{[round(t, 2) for t in r['ours_runs']]}) | {r['sklearn_seconds']:.2f} "
                  f"({[round(t, 2) for t in r['sklearn_runs']]}) | {r['objective_gap']:.2e} | "
                  f"{r['nnz_ours']} / {r['nnz_sklearn']} |")
    print(f"# load average at the end {_load()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
