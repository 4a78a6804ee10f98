"""Importances at the edge of a float32 head's resolution: a small but real effect on a large
logit is kept (a floor at the head's rounding, tried in review, zeroed it), and a class score
that no concept moves at all gets importances of 0 with a warning, not a silent ranking."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.importance import concept_importance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _IdentityBank:
    """Concepts = the activation's own channels: codes are the activations."""

    def __init__(self, k: int):
        self.components = torch.eye(k)

    def encode(self, activations):
        return torch.as_tensor(activations).float()


def _head(weights, bias):
    head = nn.Linear(len(weights), 2)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1] = torch.tensor(weights)
        head.bias.fill_(bias)
    return head


@pytest.mark.parametrize("method", ["closed_form", "sobol"])
def test_a_small_effect_on_a_large_logit_keeps_its_exact_importances(method):
    """Scores move by ~0.01 around 1000 (about 160 float32 steps): resolvable, and the closed
    form of an affine head is beta_j^2 / sum beta^2 whatever the offset."""
    weights = [0.004, 0.003, 0.002, 0.001]
    codes = torch.rand(16, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    beta = codes.double() * torch.tensor(weights, dtype=torch.float64)
    expected = (beta ** 2 / (beta ** 2).sum(1, keepdim=True)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = concept_importance(_head(weights, 1000.0), codes, _IdentityBank(4), 1,
                                    method=method, seed=0, progress=False)
    assert (result.per_input > 0).all()  # no input zeroed
    np.testing.assert_allclose(result.importances, expected.mean(0),
                               atol=1e-4 if method == "closed_form" else 0.05)


def test_a_score_that_moves_only_below_rounding_gets_zero_importance_and_a_warning():
    """Scores that differ by a few float64 steps around 3.0: Sobol sees a constant, every index is 0,
    and the result says the ranking means nothing (it was returned without a word). Scores that
    are exactly the same were refused before the estimator ran, and still are."""
    codes = torch.rand(6, 3, generator=torch.Generator().manual_seed(1)).double()
    head = _head([2e-15, 3e-15, 4e-15], 3.0).double()  # a few float64 steps
    bank = _IdentityBank(3)
    bank.components = bank.components.double()
    bank.encode = lambda activations: torch.as_tensor(activations).double()
    with pytest.warns(RuntimeWarning, match="every importance is 0"):
        result = concept_importance(head, codes, bank, 1, method="sobol", seed=0,
                                    progress=False, fast_path=False)
    np.testing.assert_array_equal(result.per_input, 0.0)
    with pytest.raises(ValueError, match="exactly the same with every concept removed"):
        concept_importance(_head([0.0, 0.0, 0.0], 3.0), codes.float(), _IdentityBank(3), 1,
                           method="sobol", seed=0, progress=False)
