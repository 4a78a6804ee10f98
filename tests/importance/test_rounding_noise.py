"""A class score that no concept moves (beyond the rounding of the head's dtype) gets importances
of 0 and a warning, not a confident ranking of float32 rounding noise (found by the second
review of concept importance: Sobol judged float32 scores at float64 rounding, and the closed
form had no floor at all)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.importance import concept_importance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _PinvBank:
    def __init__(self, components: torch.Tensor):
        self.components = components

    def encode(self, activations):
        return torch.as_tensor(activations).float() @ torch.linalg.pinv(self.components)


def _problem(orthogonal: bool):
    """Concepts whose directions are orthogonal to the class weight (up to float32 rounding)
    or not; the class score is then 3.0 whatever the concepts, or moves with them."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(6, generator=generator)
    w = w / w.norm()
    W = torch.rand(3, 6, generator=generator)
    if orthogonal:
        W = W - (W @ w)[:, None] * w[None]
    codes = torch.rand(4, 3, generator=generator) * 10
    head = nn.Linear(6, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1] = w
        head.bias.fill_(3.0)
    return head, codes @ W, _PinvBank(W)


@pytest.mark.parametrize("method, options", [("sobol", {}), ("sobol", {"fast_path": False}),
                                              ("closed_form", {})])
def test_a_score_no_concept_moves_gets_zero_importance_and_a_warning(method, options):
    head, activations, bank = _problem(orthogonal=True)
    scores = head(activations)[:, 1].detach()
    assert float(scores.max() - scores.min()) < 1e-5  # constant up to float32 rounding
    with pytest.warns(RuntimeWarning, match="every importance is 0"):
        result = concept_importance(head, activations, bank, 1, method=method, seed=0,
                                    progress=False, **options)
    np.testing.assert_array_equal(result.per_input, 0.0)


@pytest.mark.parametrize("method", ["sobol", "closed_form"])
def test_a_score_the_concepts_move_keeps_its_importances_and_no_warning(method):
    head, activations, bank = _problem(orthogonal=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = concept_importance(head, activations, bank, 1, method=method, seed=0,
                                    progress=False)
    assert (result.importances > 0.01).all()
    # the closed form of an affine head: beta_j^2 / sum beta^2, with beta_j = u_j (w_j . w)
    beta = (bank.encode(activations) * (bank.components @ head.weight[1]).detach()).double()
    expected = (beta ** 2 / (beta ** 2).sum(1, keepdim=True)).mean(0).numpy()
    np.testing.assert_allclose(result.importances, expected, atol=0.05 if method == "sobol" else 1e-5)
