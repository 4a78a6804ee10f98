"""Sparse multinomial logistic regression (elastic net) by accelerated proximal gradient.

Objective, for inputs ``X (n, k)``, labels ``y (n,)``, weights ``W (C, k)`` and intercepts ``b``::

    (1/n) Σ_i CE(W x_i + b, y_i) + α (ρ ‖W‖₁ + ½ (1 − ρ) ‖W‖²)

(the intercept is not penalised; α is ``alpha``, the strength, and ρ is ``l1_ratio``, the L1
share, as in scikit-learn's ``ElasticNet``). This is the GLM-SAGA objective of the label-free
CBM, and equals scikit-learn's ``LogisticRegression(l1_ratio=ρ, C=1/(n α))`` objective divided
by ``C n``.

The solver is FISTA with backtracking and adaptive restart: a gradient step on the smooth part
with step ``1/L``, then the proximal soft-threshold ``sign(w)·max(|w| − step·αρ, 0)`` on ``W``.
``L`` is found by backtracking (tried 20 % below the last accepted value, doubled until the
quadratic upper model holds), capped by the global bound ``½ eig_max(X̃ᵀX̃/n) + α(1 − ρ)``
(``X̃ = [X, 1]``; ½ bounds the softmax Hessian), which always holds; near a saturated optimum the
local curvature is far below that bound, so the steps are much longer. Full batch, in torch, so it
runs on a GPU when the data is there. :func:`elastic_net_path` walks α down a geometric grid from
the smallest α that zeroes every weight, warm-starting each fit, and keeps the densest solution
with at most ``nnz_per_class`` non-zero weights in every class (LF-CBM counts |w| > 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._reprs import dataclass_repr
from .._validation import check_float, check_int, describe

NNZ_THRESHOLD = 1e-5


@dataclass(frozen=True)
class SparseFit:
    """One elastic-net solution: ``weight (C, k)``, ``bias (C,)`` and how it was reached."""

    weight: torch.Tensor
    bias: torch.Tensor
    alpha: float
    n_iter: int
    converged: bool
    objective: float


def _objective(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, alpha: float,
               l1_ratio: float) -> float:
    ce = F.cross_entropy(X @ W.T + b, y)
    return float(ce + alpha * (l1_ratio * W.abs().sum() + 0.5 * (1 - l1_ratio) * (W * W).sum()))


def lipschitz_constant(X: torch.Tensor, alpha: float, l1_ratio: float) -> float:
    """Upper bound on the curvature of the smooth part (see module notes)."""
    ones = torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)
    Xt = torch.cat([X, ones], dim=1)
    top = torch.linalg.eigvalsh(Xt.T @ Xt / X.shape[0])[-1]
    return float(0.5 * top + alpha * (1 - l1_ratio))


def fit_elastic_net(X: torch.Tensor, y: torch.Tensor, n_classes: int, alpha: float, *,
                    l1_ratio: float = 0.99, max_iter: int = 5000, tol: float = 1e-7,
                    init: tuple[torch.Tensor, torch.Tensor] | None = None) -> SparseFit:
    """Minimise the elastic-net multinomial objective for one ``alpha`` (see module notes).

    Parameters
    ----------
    X : torch.Tensor
        ``(n, k)`` float inputs (standardise them: the penalty is not scale-free).
    y : torch.Tensor
        ``(n,)`` class indices in ``[0, n_classes)``.
    alpha, l1_ratio : float
        Penalty strength α ≥ 0 and L1 share ρ in [0, 1].
    max_iter, tol : int, float
        Stop when the largest weight change of an iteration is below ``tol`` (relative to
        ``max(1, max |W|)``), or after ``max_iter`` iterations.
    init : (weight, bias), optional
        Warm start.
    """
    alpha = check_float(alpha, "alpha", minimum=0.0)
    l1_ratio = check_float(l1_ratio, "l1_ratio", minimum=0.0, maximum=1.0)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    n, k = X.shape
    if init is None:
        W = torch.zeros(n_classes, k, dtype=X.dtype, device=X.device)
        counts = torch.bincount(y, minlength=n_classes).to(X.dtype).clamp_min(0.5)
        b = torch.log(counts / n)
    else:
        W, b = init[0].to(X).clone(), init[1].to(X).clone()
    bound = lipschitz_constant(X, alpha, l1_ratio)
    curvature = bound
    onehot = F.one_hot(y, n_classes).to(X.dtype)
    ridge = alpha * (1 - l1_ratio)

    def smooth(W_: torch.Tensor, b_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = X @ W_.T + b_
        loss = (torch.logsumexp(logits, 1) - (logits * onehot).sum(1)).mean() + 0.5 * ridge * (W_ * W_).sum()
        return loss, logits

    V, c = W.clone(), b.clone()  # extrapolated point
    t = 1.0
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        loss_v, logits_v = smooth(V, c)
        residual = (torch.softmax(logits_v, dim=1) - onehot) / n
        grad_W = residual.T @ X + ridge * V
        grad_b = residual.sum(0)
        # backtracking (Beck & Teboulle) from a slightly smaller curvature than last time, so
        # the step can grow where the softmax saturates; the global bound always passes
        curvature = curvature * 0.8
        while True:
            step = 1.0 / curvature
            W_new = V - step * grad_W
            W_new = torch.sign(W_new) * (W_new.abs() - step * alpha * l1_ratio).clamp_min(0)
            b_new = c - step * grad_b
            dW, db = W_new - V, b_new - c
            model = (loss_v + (grad_W * dW).sum() + (grad_b * db).sum()
                     + 0.5 * curvature * ((dW * dW).sum() + (db * db).sum()))
            if curvature >= bound or smooth(W_new, b_new)[0] <= model + 1e-12 * abs(float(loss_v)):
                break
            curvature = min(2 * curvature, bound)
        change = float(max((W_new - W).abs().max(), (b_new - b).abs().max()))
        # gradient-based adaptive restart (O'Donoghue & Candès): drop the momentum when it
        # points against the proximal-gradient step
        restart = float(((V - W_new) * (W_new - W)).sum() + ((c - b_new) * (b_new - b)).sum()) > 0
        W_prev, b_prev, W, b = W, b, W_new, b_new
        if change <= tol * max(1.0, float(W.abs().max())):
            converged = True
            break
        if restart:
            t = 1.0
            V, c = W.clone(), b.clone()
            continue
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = (t - 1) / t_next
        V = W + momentum * (W - W_prev)
        c = b + momentum * (b - b_prev)
        t = t_next
    return SparseFit(W, b, alpha, n_iter, converged, _objective(X, y, W, b, alpha, l1_ratio))


def alpha_max(X: torch.Tensor, y: torch.Tensor, n_classes: int, l1_ratio: float) -> float:
    """The smallest α at which every weight is zero (intercepts at the log class priors)."""
    n = X.shape[0]
    counts = torch.bincount(y, minlength=n_classes).to(X.dtype)
    prior = counts / n
    residual = (prior.expand(n, -1) - F.one_hot(y, n_classes).to(X.dtype)) / n
    return float((residual.T @ X).abs().max()) / max(l1_ratio, 1e-12)


def nnz_per_class(weight: torch.Tensor) -> np.ndarray:
    """Non-zero weights (|w| > 1e-5) of each class row: ``(C,)``."""
    return (weight.abs() > NNZ_THRESHOLD).sum(1).cpu().numpy()


def check_l1_ratio(l1_ratio: Any) -> float:
    """The L1 share of the elastic net, in (0, 1]. The path starts at the smallest penalty that
    zeroes every weight, which only an L1 part has: with ``l1_ratio`` 0 that start is infinite
    and the head comes out all zeros."""
    value = check_float(l1_ratio, "l1_ratio", minimum=0.0, maximum=1.0)
    if value <= 0.0:
        raise ValueError(f"`l1_ratio` must be in (0, 1]; got {l1_ratio!r}. The sparse head's path "
                         f"needs an L1 part (with 0 every weight stays 0); for a nearly ridge "
                         f"head use a small value such as 0.01.")
    return value


def elastic_net_path(X: torch.Tensor, y: torch.Tensor, n_classes: int, nnz_target: int, *,
                     l1_ratio: float = 0.99, n_alphas: int = 25, min_ratio: float = 1e-4,
                     n_bisect: int = 8, max_iter: int = 5000,
                     tol: float = 1e-6) -> tuple[SparseFit, list[dict]]:
    """Fit down a α path; return the densest fit with ≤ ``nnz_target`` weights in every class.

    α walks a geometric grid from ``α_max`` down to ``min_ratio · α_max`` with warm starts until
    some class has more than ``nnz_target`` non-zero weights; then ``n_bisect`` bisection steps
    (in log α) between the last admissible α and that one move as close to the target as possible.
    Like glmnet, the walk also ends once the fit is saturated — the deviance ratio
    ``1 − CE/CE_null`` exceeds 0.999 or gains less than 1e-5 from one α to the next — since
    smaller penalties then only inflate the weights (on separable data, without bound).

    Returns
    -------
    fit : SparseFit
    path : list of dict
        ``{"alpha", "nnz_max", "nnz_total", "n_iter", "train_accuracy", "deviance_ratio"}`` for
        each α visited.
    """
    nnz_target = check_int(nnz_target, "nnz_per_class", minimum=1)
    l1_ratio = check_l1_ratio(l1_ratio)
    path: list[dict] = []
    null_loss = None

    def solve(alpha: float, init: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[SparseFit, int]:
        nonlocal null_loss
        fit = fit_elastic_net(X, y, n_classes, alpha, l1_ratio=l1_ratio, max_iter=max_iter,
                              tol=tol, init=init)
        counts = nnz_per_class(fit.weight)
        logits = X @ fit.weight.T + fit.bias
        loss = float(F.cross_entropy(logits, y))
        null_loss = loss if null_loss is None else null_loss  # α_max: intercepts only
        path.append({"alpha": alpha, "nnz_max": int(counts.max()), "nnz_total": int(counts.sum()),
                     "n_iter": fit.n_iter,
                     "train_accuracy": float((logits.argmax(1) == y).double().mean()),
                     "deviance_ratio": 1 - loss / null_loss if null_loss > 0 else 1.0})
        return fit, int(counts.max())

    grid = alpha_max(X, y, n_classes, l1_ratio) * np.geomspace(1.0, min_ratio, n_alphas)
    # grid[0] = α_max zeroes every weight, so the first fit always qualifies
    best, _ = solve(float(grid[0]), None)
    too_dense = None
    for alpha in grid[1:]:
        fit, nnz = solve(float(alpha), (best.weight, best.bias))
        if nnz > nnz_target:
            too_dense = float(alpha)
            break
        best = fit
        ratio, previous = path[-1]["deviance_ratio"], path[-2]["deviance_ratio"]
        if ratio > 0.999 or ratio - previous < 1e-5:
            break
    if too_dense is not None:
        low, high = np.log(too_dense), np.log(best.alpha)
        for _ in range(n_bisect):
            middle = float(np.exp((low + high) / 2))
            fit, nnz = solve(middle, (best.weight, best.bias))
            if nnz > nnz_target:
                low = np.log(middle)
            else:
                best, high = fit, np.log(middle)
    return best, path


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
SparseFit.__repr__ = dataclass_repr  # type: ignore[method-assign]


def check_path(path: Any, name: str = "path") -> list[dict]:
    """Check a saved α path (the ``path`` of :func:`elastic_net_path`): a list of dicts whose
    numbers are finite and in range. Loaders raise this inside ``loading`` (a FormatError)."""
    if not isinstance(path, list):
        raise TypeError(f"{name} must be a list; got {describe(path)}.")
    for i, step in enumerate(path):
        if not isinstance(step, dict):
            raise TypeError(f"{name}[{i}] must be a dict; got {describe(step)}.")
        for key, value in step.items():
            if key in ("nnz_max", "nnz_total", "n_iter"):
                check_int(value, f"{name}[{i}][{key!r}]", minimum=0)
            elif key == "alpha":
                check_float(value, f"{name}[{i}][{key!r}]", minimum=0.0)
            elif key == "train_accuracy":
                check_float(value, f"{name}[{i}][{key!r}]", minimum=0.0, maximum=1.0)
            elif key == "deviance_ratio":  # 1 - loss / null loss
                check_float(value, f"{name}[{i}][{key!r}]", maximum=1.0)
            else:
                check_float(value, f"{name}[{i}][{key!r}]")
    return path
