"""Sixth review of concept importance: the affine fast path's tolerance was shared by every
probed input (one input's large range or level hid a nonlinearity in the others), an input the
probe and the design check never drew was checked only with every concept kept, and RISE
divided a sample covariance by ``n`` instead of ``n - 1``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.importance import concept_importance
from conceptkit.importance._attribution import Seeds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _IdentityBank:
    """Concepts = the activation's first ``k`` channels: codes are those channels; any further
    channel is left to the reconstruction residual."""

    def __init__(self, k: int, channels: int | None = None, dtype=torch.float32):
        self.components = torch.eye(k, channels or k, dtype=dtype)
        self.k = k

    def encode(self, activations):
        return torch.as_tensor(activations)[:, :self.k].clone()


class _Head(nn.Module):
    """Two logits ``(y, -y)`` from a function ``y`` of the activations ``(n, C)``."""

    def __init__(self, score):
        super().__init__()
        self.score = score

    def forward(self, x):
        y = self.score(x)
        return torch.stack([y, -y], 1)


def _importance(head, acts, bank, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return concept_importance(head, acts, bank, 0, progress=False, **kwargs)


def _fast_and_slow(head, acts, bank, **kwargs):
    return (_importance(head, acts, bank, **kwargs),
            _importance(head, acts, bank, fast_path=False, **kwargs))


CLOSED_FORM_REFUSED = r"`method`='closed_form' needs a head `h` that is affine.*method='sobol'"


# --- 1. each input's affinity is judged against its own tolerance ---------------------------

def _wavy(x):
    # affine in concepts 0 and 1; concept 2 moves the score by a sine of amplitude 0.02
    return x[:, 0] + x[:, 1] + 0.02 * torch.sin(20 * x[:, 2])


def test_one_inputs_large_range_does_not_hide_a_nonlinearity_in_the_others():
    """Input 0 moves the float32 score by about 1000 (and has no code of the wavy concept); the
    others move it by about 0.04, mostly through the sine. A tolerance of 1e-4 of the range
    over every probed input (0.1) hid the sine: the fast path gave [0.19 0.19 0.62] to those
    inputs where `h` gives [0.04 0.04 0.90]."""
    acts = torch.tensor([[1000.0, 1.0, 0.0]] + [[0.01, 0.01, 1.0]] * 9)
    fast, slow = _fast_and_slow(_Head(_wavy), acts, _IdentityBank(3), seed=0)
    assert fast.params["fast_path"] is False
    np.testing.assert_array_equal(fast.per_input, slow.per_input)
    assert slow.per_input[1, 2] > 0.85 and slow.per_input[1, 0] < 0.06
    with pytest.raises(ValueError, match=CLOSED_FORM_REFUSED):
        _importance(_Head(_wavy), acts, _IdentityBank(3), method="closed_form", seed=0)


def test_a_large_constant_offset_on_one_input_does_not_hide_a_nonlinearity():
    """The same concepts on every input, but input 0's kept residual lifts its score by 1000:
    the level of one input used to set everyone's tolerance."""
    def score(x):
        return 0.01 * x[:, 0] + 0.01 * x[:, 1] + 0.02 * torch.sin(20 * x[:, 2]) + x[:, 3]

    acts = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 10)
    acts[0, 3] = 1000.0
    bank = _IdentityBank(3, channels=4)
    fast, slow = _fast_and_slow(_Head(score), acts, bank, residual=True, seed=0)
    assert fast.params["fast_path"] is False
    np.testing.assert_array_equal(fast.per_input, slow.per_input)
    assert slow.importances[2] > 0.85


def test_an_affine_head_on_inputs_of_very_different_scales_keeps_the_fast_path():
    """Per-input tolerances are not too strict for a float32 linear head: inputs whose scores
    differ by five orders of magnitude still collapse, to the slow path's numbers."""
    weights = torch.tensor([0.5, -1.0, 2.0])
    acts = torch.tensor([[1000.0, 1.0, 3.0]] + [[0.01, 0.02, 0.005]] * 5
                        + [[0.3, 0.2, 0.1]] * 4)
    head = _Head(lambda x: x @ weights + 7.0)
    fast, slow = _fast_and_slow(head, acts, _IdentityBank(3), seed=0)
    assert fast.params["fast_path"] is True and "fast_path_rejected" not in fast.params
    np.testing.assert_allclose(fast.per_input, slow.per_input, atol=1e-5)
    closed = _importance(head, acts, _IdentityBank(3), method="closed_form", seed=0)
    squares = (acts.double() * weights.double()) ** 2
    expected = (squares / squares.sum(1, keepdim=True)).numpy()
    np.testing.assert_allclose(closed.per_input, expected, rtol=1e-5)


# --- 2. every input is checked inside the mask cube, not only with every concept kept ------

def _bumped(x):
    # affine for x3 <= 2 (every input but one); a bump for 2 < x3 < 10 that is 0 again at 10,
    # so the special input (x3 = 10) is affine with every concept kept
    x3 = x[:, 3]
    bump = 20 * torch.sin(np.pi * (x3 - 2) / 8) ** 2 * ((x3 > 2) & (x3 < 10))
    return x[:, 0] + 2 * x[:, 1] + 0.5 * x[:, 2] + x3 + bump


def _bumped_inputs():
    acts = torch.rand(100, 4, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64) + 0.1
    acts[40, 3] = 10.0
    return acts


def test_an_input_that_neither_the_probe_nor_the_design_check_draws_is_still_checked():
    """With seed 3 neither the probe's 8 inputs nor the design check's 64 include input 40,
    which used to be checked with every concept kept only (where `h` agrees with the collapse)
    and got the affine inputs' importances: [0.002 0.034 0.002 0.955] where `h` gives
    [0 0.004 0 0.918]. Its own random masks inside the cube now catch it."""
    acts, bank = _bumped_inputs(), _IdentityBank(4, dtype=torch.float64)
    fast, slow = _fast_and_slow(_Head(_bumped), acts, bank, seed=3, confidence=None)
    assert fast.params["fast_path"] is False
    np.testing.assert_array_equal(fast.per_input, slow.per_input)
    assert slow.per_input[40, 3] > 0.9 and slow.per_input[40, 1] < 0.01


def test_closed_form_refuses_a_head_that_is_not_affine_on_one_input():
    """closed_form had no check beyond the probe and every input with all concepts kept: it
    returned affine indices for input 40, called exact."""
    acts, bank = _bumped_inputs(), _IdentityBank(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=CLOSED_FORM_REFUSED):
        _importance(_Head(_bumped), acts, bank, method="closed_form", seed=3)
    # without the special input, the same head is affine and closed_form answers
    acts[40, 3] = 1.0
    closed = _importance(_Head(_bumped), acts, bank, method="closed_form", seed=3)
    beta = acts * torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(closed.per_input, (beta**2 / (beta**2).sum(1, keepdim=True)),
                               rtol=1e-5)


# --- 3. RISE divides the sample covariance by n - 1 ------------------------------------------

def _rise_head():
    return _Head(lambda x: 3 * x[:, 0] + 5)


def test_rise_is_the_unbiased_sample_covariance_over_p_1_minus_p():
    """For y = 3 m0 + 5, RISE is 3 var(m0) / (p (1 - p)) with the (n - 1) sample variance of
    the input's own masks; dividing by n made it 3 (1 - 1/n) on average (2.25 at n = 4)."""
    n_samples, p = 4, 0.5
    acts = torch.ones(20, 1, dtype=torch.float64)
    result = _importance(_rise_head(), acts, _IdentityBank(1, dtype=torch.float64),
                         method="rise", n_samples=n_samples, seed=0, confidence=None)
    seeds = Seeds(0)
    masks = np.stack([seeds.input_rng(i).random((n_samples, 1)) < p for i in range(20)])
    expected = 3 * masks[:, :, 0].astype(float).var(axis=1, ddof=1) / (p * (1 - p))
    np.testing.assert_allclose(result.per_input[:, 0], expected, rtol=1e-12, atol=1e-12)
    assert np.any(expected > 0)


def test_rise_estimates_the_affine_coefficient_without_bias_at_few_samples():
    acts = torch.ones(3000, 1, dtype=torch.float64)
    result = _importance(_rise_head(), acts, _IdentityBank(1, dtype=torch.float64),
                         method="rise", n_samples=4, seed=0)
    assert abs(result.importances[0] - 3.0) < 0.1          # 2.25 before
    assert result.ci_low[0] < 3.0 < result.ci_high[0]


def test_rise_with_one_sample_is_refused():
    acts = torch.ones(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="`n_samples`"):
        _importance(_rise_head(), acts, _IdentityBank(1, dtype=torch.float64),
                    method="rise", n_samples=1, seed=0)
