"""The elastic-net multinomial solver of the label-free CBM (bottleneck/_sparse.py).

Checked against scikit-learn's SAGA on the same objective, against the KKT conditions, and for
the penalty path's choice of the densest admissible fit.
"""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from conceptkit.bottleneck._sparse import (
    alpha_max,
    elastic_net_path,
    fit_elastic_net,
    nnz_per_class,
)


def _glm_problem(n=400, k=10, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    true_w = rng.normal(size=(n_classes, k)) * (rng.random((n_classes, k)) < 0.3) * 2
    y = (X @ true_w.T + rng.gumbel(size=(n, n_classes))).argmax(1)
    return torch.tensor(X), torch.tensor(y)


def _objective(X, y, W, b, alpha, l1_ratio=0.99):
    ce = torch.nn.functional.cross_entropy(X @ W.T + b, y)
    return float(ce + alpha * (l1_ratio * W.abs().sum() + 0.5 * (1 - l1_ratio) * (W * W).sum()))


@pytest.mark.parametrize("alpha", [3e-3, 3e-2])
def test_elastic_net_matches_sklearn_saga(alpha):
    X, y = _glm_problem()
    fit = fit_elastic_net(X, y, 3, alpha, l1_ratio=0.99, tol=1e-10, max_iter=20000)
    assert fit.converged
    sk = LogisticRegression(l1_ratio=0.99, C=1 / (len(y) * alpha), solver="saga", tol=1e-10,
                            max_iter=100000).fit(X.numpy(), y.numpy())
    W_sk, b_sk = torch.tensor(sk.coef_), torch.tensor(sk.intercept_)
    assert fit.objective == pytest.approx(_objective(X, y, W_sk, b_sk, alpha), rel=1e-7)
    np.testing.assert_allclose(fit.weight.numpy(), sk.coef_, atol=1e-4)
    np.testing.assert_array_equal(nnz_per_class(fit.weight), nnz_per_class(W_sk))


def test_elastic_net_solution_satisfies_kkt():
    X, y = _glm_problem(seed=1)
    alpha, l1_ratio = 1e-2, 0.99
    fit = fit_elastic_net(X, y, 3, alpha, l1_ratio=l1_ratio, tol=1e-11, max_iter=50000)
    W, b = fit.weight, fit.bias
    prob = torch.softmax(X @ W.T + b, 1)
    residual = (prob - torch.nn.functional.one_hot(y, 3)) / len(y)
    grad = residual.T @ X + alpha * (1 - l1_ratio) * W
    active = W.abs() > 1e-8
    np.testing.assert_allclose(grad[active], -alpha * l1_ratio * torch.sign(W[active]), atol=1e-6)
    assert float(grad[~active].abs().max()) <= alpha * l1_ratio + 1e-6
    np.testing.assert_allclose(residual.sum(0), 0, atol=1e-8)  # unpenalised intercepts


def test_alpha_max_is_the_smallest_all_zero_penalty():
    X, y = _glm_problem(seed=2)
    top = alpha_max(X, y, 3, 0.99)
    assert nnz_per_class(fit_elastic_net(X, y, 3, top * 1.001, tol=1e-9).weight).sum() == 0
    assert nnz_per_class(fit_elastic_net(X, y, 3, top * 0.9, tol=1e-9).weight).sum() > 0


@pytest.mark.parametrize("target", [1, 3])
def test_path_returns_the_densest_fit_within_the_target(target):
    X, y = _glm_problem(seed=3)
    fit, path = elastic_net_path(X, y, 3, target)
    counts = nnz_per_class(fit.weight)
    assert counts.max() <= target
    assert counts.max() == target  # the bisection gets to the target on this problem
    admissible = [p["alpha"] for p in path if p["nnz_max"] <= target]
    assert fit.alpha == min(admissible)
