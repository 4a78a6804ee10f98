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
wall time and objective gap, on standardised random concept activations.

Run: ``python benchmarks/bench_cbm.py [--quick]``; prints Markdown tables and writes JSON with
``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from conceptkit.bottleneck import (
    CAVBank,
    ConceptBottleneckModel,
    PosthocCBM,
    SpatialProbe,
    evaluate_cbm,
    intervention_curve,
    leakage_score,
    train_cbm,
)
from conceptkit.bottleneck._sparse import fit_elastic_net, nnz_per_class
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.extraction import ActivationExtractor, split_model


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
        curves = {p: intervention_curve(model, data["test"], policy=p, n_trials=5, seed=0)
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


def solver(n: int, k: int, n_classes: int, alphas: list[float]) -> list[dict]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, k))
    weights = rng.normal(size=(n_classes, k)) * (rng.random((n_classes, k)) < 0.2) * 2
    y = (X @ weights.T + rng.gumbel(size=(n, n_classes))).argmax(1)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    rows = []
    for alpha in alphas:
        start = time.perf_counter()
        fit = fit_elastic_net(Xt, yt, n_classes, alpha, tol=1e-8, max_iter=20000)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        sk = LogisticRegression(l1_ratio=0.99, C=1 / (n * alpha), solver="saga", tol=1e-8,
                                max_iter=100000).fit(X, y)
        theirs = time.perf_counter() - start
        W, b = torch.tensor(sk.coef_), torch.tensor(sk.intercept_)
        sk_obj = float(torch.nn.functional.cross_entropy(Xt @ W.T + b, yt)
                       + alpha * (0.99 * W.abs().sum() + 0.005 * (W * W).sum()))
        rows.append({"alpha": alpha, "ours_seconds": ours, "ours_iterations": fit.n_iter,
                     "sklearn_seconds": theirs, "objective_gap": fit.objective - sk_obj,
                     "nnz_ours": int(nnz_per_class(fit.weight).sum()),
                     "nnz_sklearn": int(nnz_per_class(W).sum())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sizes = {"train": 60, "val": 20, "test": 50} if args.quick else {"train": 300, "val": 60, "test": 150}
    results = {"supervised": supervised(sizes, epochs=15 if args.quick else 40),
               "posthoc": posthoc(60 if args.quick else 300, 50 if args.quick else 150),
               "solver": solver(2000 if args.quick else 10000, 50, 10, [1e-3, 1e-2])}
    print("\n| mode | train s | epochs | task acc | concept acc (min) | all intervened | "
          "area random / uncertainty / importance | leakage |\n|---|---|---|---|---|---|---|---|")
    for r in results["supervised"]:
        area = " / ".join(f"{r['area'][p]:.3f}" for p in ("random", "uncertainty", "importance"))
        print(f"| {r['mode']} | {r['train_seconds']:.1f} | {r['epochs']} | {r['task_accuracy']:.4f} | "
              f"{r['concept_accuracy']:.4f} ({r['min_concept_accuracy']:.3f}) | "
              f"{r['all_intervened']:.4f} | {area} | {r['leakage']:+.4f} |")
    p = results["posthoc"]
    print(f"\nPCBM test accuracy {p['pcbm_accuracy']:.4f}, PCBM-h {p['pcbm_h_accuracy']:.4f} "
          f"({p['seconds']:.1f} s); CAV held-out accuracy {np.round(p['cav_accuracy'], 3).tolist()}")
    print("\n| alpha | ours s (iterations) | sklearn saga s | objective gap (ours − sklearn) | NNZ ours / sklearn |"
          "\n|---|---|---|---|---|")
    for r in results["solver"]:
        print(f"| {r['alpha']:g} | {r['ours_seconds']:.2f} ({r['ours_iterations']}) | "
              f"{r['sklearn_seconds']:.2f} | {r['objective_gap']:.2e} | {r['nnz_ours']} / {r['nnz_sklearn']} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
