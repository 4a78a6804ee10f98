"""Image-level concept ablation, the reconstruction residual and the probability score.

Closed forms: with activations ``A = U W + R`` (``R`` outside the span of ``W``) and a head
``y = Linear(GAP(A))``, removing concept ``j`` from every position changes the class logit by
``beta_ij = mean_p U_ijp (W w_c)_j`` whatever the residual; the probability drop is the softmax
of the head's logits on ``A`` and on ``A - u_j w_j``, computed here directly with torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.importance import concept_importance


class ProjectionBank:
    """Codes are the projections on orthonormal components (exact for activations in their span)."""

    def __init__(self, components: torch.Tensor):
        self.components = components

    def encode(self, activations):
        return torch.einsum("nchw,kc->nkhw", torch.as_tensor(activations), self.components)


def problem(n=12, k=4, channels=10, size=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(channels, channels, generator=gen))[0].T
    components, outside = basis[:k].contiguous(), basis[k:]
    codes = torch.rand(n, k, size, size, generator=gen) * torch.linspace(0.5, 2.0, k)[:, None, None]
    residual = torch.einsum("nrhw,rc->nchw", torch.randn(n, channels - k, size, size,
                                                         generator=gen), outside)
    activations = torch.einsum("nkhw,kc->nchw", codes, components) + residual
    torch.manual_seed(seed)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)).eval()
    return codes, components, activations, residual, head


def run(head, acts, bank, method, class_id=1, **kwargs):
    return concept_importance(head, acts, bank, class_id, method, progress=False, seed=0, **kwargs)


def test_ablation_logit_drop_is_beta_for_a_linear_head():
    codes, components, acts, _, head = problem()
    w = head[-1].weight[1].detach().double()
    beta = (codes.double().mean((2, 3)) * (components.double() @ w)).numpy()
    bank = ProjectionBank(components)
    for residual in (True, False):
        result = run(head, acts, bank, "ablation", score="logit", residual=residual)
        np.testing.assert_allclose(result.per_input, beta, rtol=1e-4, atol=1e-5)
        assert result.params["residual"] is residual and result.params["score"] == "logit"


def test_ablation_probability_drop_matches_softmax_by_hand():
    codes, components, acts, _, head = problem(seed=1)
    bank = ProjectionBank(components)
    result = run(head, acts, bank, "ablation")           # defaults: residual, probability
    assert result.method == "ablation"
    assert result.params["residual"] is True and result.params["score"] == "probability"
    with torch.no_grad():
        base = torch.softmax(head(acts), 1)[:, 1]
        expected = np.stack([
            (base - torch.softmax(head(acts - torch.einsum("nhw,c->nchw", codes[:, j],
                                                           components[j])), 1)[:, 1]).numpy()
            for j in range(codes.shape[1])], axis=1)
    np.testing.assert_allclose(result.per_input, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.importances, expected.mean(0), rtol=1e-4, atol=1e-6)
    # Without the residual the head sees U W, not A: a different (and here wrong) base score.
    without = run(head, acts, bank, "ablation", residual=False)
    assert np.abs(without.per_input - expected).max() > 1e-3


def test_gradient_input_with_residual_is_taken_at_the_real_activation():
    codes, components, acts, _, _ = problem(seed=2)
    torch.manual_seed(2)
    head = nn.Sequential(nn.Conv2d(10, 6, 1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3)).eval()
    bank = ProjectionBank(components)
    x = acts.clone().requires_grad_(True)
    torch.softmax(head(x), 1)[:, 2].sum().backward()
    expected = torch.einsum("nkhw,nchw,kc->nk", codes, x.grad, components).numpy()
    result = run(head, acts, bank, "gradient_input", class_id=2, residual=True,
                 score="probability")
    np.testing.assert_allclose(result.per_input, expected, rtol=1e-4, atol=1e-6)


def test_sobol_with_residual_keeps_the_affine_fast_path_and_the_indices():
    codes, components, acts, _, head = problem(seed=3)
    bank = ProjectionBank(components)
    plain = run(head, acts, bank, "sobol")
    kept = run(head, acts, bank, "sobol", residual=True)
    slow = run(head, acts, bank, "sobol", residual=True, fast_path=False)
    assert kept.params["fast_path"] and not slow.params["fast_path"]
    # A per-input constant does not change a variance-based index.
    np.testing.assert_allclose(kept.per_input, plain.per_input, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kept.per_input, slow.per_input, rtol=1e-3, atol=1e-5)


def test_bad_settings_name_the_argument():
    codes, components, acts, _, head = problem()
    bank = ProjectionBank(components)
    with pytest.raises(ValueError, match="score"):
        run(head, acts, bank, "ablation", score="odds")
    with pytest.raises(TypeError, match="residual"):
        run(head, acts, bank, "ablation", residual="yes")


class Ignores(nn.Module):
    """A head whose output never depends on its input (like a CLS head fed patch tokens)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 2) + 0.0 * x.sum() * 0


@pytest.mark.parametrize("method", ["sobol", "gradient_input", "ablation"])
def test_no_silent_zeros(method):
    codes, components, acts, _, head = problem()
    with pytest.raises(ValueError, match="do not reach the output"):
        run(Ignores(), acts, ProjectionBank(components), method, class_id=0)

    class Empty(ProjectionBank):
        def encode(self, activations):
            return torch.zeros_like(super().encode(activations))

    with pytest.raises(ValueError, match="zero for every input"):
        run(head, acts, Empty(components), method)
