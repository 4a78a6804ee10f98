"""Sparse multinomial logistic regression (elastic net) by accelerated proximal gradient.

Objective, for inputs ``X (n, k)``, labels ``y (n,)``, weights ``W (C, k)`` and intercepts ``b``::

    (1/n) Σ_i CE(W x_i + b, y_i) + λ (α ‖W‖₁ + ½ (1 − α) ‖W‖²)

(the intercept is not penalised). This is the GLM-SAGA objective of the label-free CBM, and equals
scikit-learn's ``LogisticRegression(l1_ratio=α, C=1/(n λ))`` objective divided by ``C n``.

The solver is FISTA with adaptive restart: a gradient step on the smooth part with step ``1/L``,
``L = ½ λ_max(X̃ᵀX̃/n) + λ(1 − α)`` (``X̃ = [X, 1]``; ½ bounds the softmax Hessian), then the
proximal soft-threshold ``sign(w)·max(|w| − step·λα, 0)`` on ``W``. Full batch, in torch, so it
runs on a GPU when the data is there. :func:`elastic_net_path` walks λ down a geometric grid from
the smallest λ that zeroes every weight, warm-starting each fit, and keeps the densest solution
with at most ``nnz_per_class`` non-zero weights in every class (LF-CBM counts |w| > 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import check_float, check_int

NNZ_THRESHOLD = 1e-5


@dataclass(frozen=True)
class SparseFit:
    """One elastic-net solution: ``weight (C, k)``, ``bias (C,)`` and how it was reached."""

    weight: torch.Tensor
    bias: torch.Tensor
    lam: float
    n_iter: int
    converged: bool
    objective: float


def _objective(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, lam: float,
               alpha: float) -> float:
    ce = F.cross_entropy(X @ W.T + b, y)
    return float(ce + lam * (alpha * W.abs().sum() + 0.5 * (1 - alpha) * (W * W).sum()))


def lipschitz_constant(X: torch.Tensor, lam: float, alpha: float) -> float:
    """Upper bound on the curvature of the smooth part (see module notes)."""
    ones = torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)
    Xt = torch.cat([X, ones], dim=1)
    top = torch.linalg.eigvalsh(Xt.T @ Xt / X.shape[0])[-1]
    return float(0.5 * top + lam * (1 - alpha))


def fit_elastic_net(X: torch.Tensor, y: torch.Tensor, n_classes: int, lam: float, *,
                    alpha: float = 0.99, max_iter: int = 5000, tol: float = 1e-7,
                    init: tuple[torch.Tensor, torch.Tensor] | None = None) -> SparseFit:
    """Minimise the elastic-net multinomial objective for one ``lam`` (see module notes).

    Parameters
    ----------
    X : torch.Tensor
        ``(n, k)`` float inputs (standardise them: the penalty is not scale-free).
    y : torch.Tensor
        ``(n,)`` class indices in ``[0, n_classes)``.
    lam, alpha : float
        Penalty strength λ ≥ 0 and L1 share α in [0, 1].
    max_iter, tol : int, float
        Stop when the largest weight change of an iteration is below ``tol`` (relative to
        ``max(1, max |W|)``), or after ``max_iter`` iterations.
    init : (weight, bias), optional
        Warm start.
    """
    lam = check_float(lam, "lam", minimum=0.0)
    alpha = check_float(alpha, "alpha", minimum=0.0, maximum=1.0)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    n, k = X.shape
    if init is None:
        W = torch.zeros(n_classes, k, dtype=X.dtype, device=X.device)
        counts = torch.bincount(y, minlength=n_classes).to(X.dtype).clamp_min(0.5)
        b = torch.log(counts / n)
    else:
        W, b = init[0].to(X).clone(), init[1].to(X).clone()
    step = 1.0 / lipschitz_constant(X, lam, alpha)
    threshold = step * lam * alpha
    onehot = F.one_hot(y, n_classes).to(X.dtype)
    W_prev, b_prev = W.clone(), b.clone()
    V, c = W.clone(), b.clone()  # extrapolated point
    t = 1.0
    obj_prev = float("inf")
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        prob = torch.softmax(X @ V.T + c, dim=1)
        residual = (prob - onehot) / n
        grad_W = residual.T @ X + lam * (1 - alpha) * V
        grad_b = residual.sum(0)
        W_new = V - step * grad_W
        W_new = torch.sign(W_new) * (W_new.abs() - threshold).clamp_min(0)
        b_new = c - step * grad_b
        change = float(max((W_new - W).abs().max(), (b_new - b).abs().max()))
        W_prev, b_prev, W, b = W, b, W_new, b_new
        if change <= tol * max(1.0, float(W.abs().max())):
            converged = True
            break
        obj = _objective(X, y, W, b, lam, alpha) if it % 10 == 0 else obj_prev
        if obj > obj_prev:  # adaptive restart (O'Donoghue & Candès): drop the momentum
            t = 1.0
            V, c = W.clone(), b.clone()
            obj_prev = obj
            continue
        obj_prev = obj
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = (t - 1) / t_next
        V = W + momentum * (W - W_prev)
        c = b + momentum * (b - b_prev)
        t = t_next
    return SparseFit(W, b, lam, it, converged, _objective(X, y, W, b, lam, alpha))


def lambda_max(X: torch.Tensor, y: torch.Tensor, n_classes: int, alpha: float) -> float:
    """The smallest λ at which every weight is zero (intercepts at the log class priors)."""
    n = X.shape[0]
    counts = torch.bincount(y, minlength=n_classes).to(X.dtype)
    prior = counts / n
    residual = (prior.expand(n, -1) - F.one_hot(y, n_classes).to(X.dtype)) / n
    return float((residual.T @ X).abs().max()) / max(alpha, 1e-12)


def nnz_per_class(weight: torch.Tensor) -> np.ndarray:
    """Non-zero weights (|w| > 1e-5) of each class row: ``(C,)``."""
    return (weight.abs() > NNZ_THRESHOLD).sum(1).cpu().numpy()


def elastic_net_path(X: torch.Tensor, y: torch.Tensor, n_classes: int, nnz_target: int, *,
                     alpha: float = 0.99, n_lambdas: int = 40, min_ratio: float = 1e-4,
                     n_bisect: int = 8, max_iter: int = 5000,
                     tol: float = 1e-7) -> tuple[SparseFit, list[dict]]:
    """Fit down a λ path; return the densest fit with ≤ ``nnz_target`` weights in every class.

    λ walks a geometric grid from ``λ_max`` down to ``min_ratio · λ_max`` with warm starts until
    some class has more than ``nnz_target`` non-zero weights; then ``n_bisect`` bisection steps
    (in log λ) between the last admissible λ and that one move as close to the target as possible.

    Returns
    -------
    fit : SparseFit
    path : list of dict
        ``{"lam", "nnz_max", "nnz_total", "n_iter", "train_accuracy"}`` for each λ visited.
    """
    nnz_target = check_int(nnz_target, "nnz_per_class", minimum=1)
    path: list[dict] = []

    def solve(lam: float, init: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[SparseFit, int]:
        fit = fit_elastic_net(X, y, n_classes, lam, alpha=alpha, max_iter=max_iter, tol=tol, init=init)
        counts = nnz_per_class(fit.weight)
        accuracy = float(((X @ fit.weight.T + fit.bias).argmax(1) == y).double().mean())
        path.append({"lam": lam, "nnz_max": int(counts.max()), "nnz_total": int(counts.sum()),
                     "n_iter": fit.n_iter, "train_accuracy": accuracy})
        return fit, int(counts.max())

    grid = lambda_max(X, y, n_classes, alpha) * np.geomspace(1.0, min_ratio, n_lambdas)
    # grid[0] = λ_max zeroes every weight, so the first fit always qualifies
    best, _ = solve(float(grid[0]), None)
    too_dense = None
    for lam in grid[1:]:
        fit, nnz = solve(float(lam), (best.weight, best.bias))
        if nnz > nnz_target:
            too_dense = float(lam)
            break
        best = fit
    if too_dense is not None:
        low, high = np.log(too_dense), np.log(best.lam)
        for _ in range(n_bisect):
            middle = float(np.exp((low + high) / 2))
            fit, nnz = solve(middle, (best.weight, best.bias))
            if nnz > nnz_target:
                low = np.log(middle)
            else:
                best, high = fit, np.log(middle)
    return best, path
