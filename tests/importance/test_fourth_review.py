"""Fourth review of concept importance: rounding noise read as importances, a fast path fooled
by a kink in a corner of the mask cube, a sensitivity probe that depended on input order and a
float32 softmax, bfloat16 heads, pixel ablation on a saturated softmax, and ``n_bootstrap``
without ``confidence``."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit._validation import to_numpy
from conceptkit.importance import _concept, concept_importance, sobol_indices, sobol_indices_with_ci
from conceptkit.importance._fastpath import AffineHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Bank:
    """A fixed dictionary: components ``W`` (k, C); codes by least squares, clamped at 0."""

    def __init__(self, components):
        self.components = torch.as_tensor(components)

    def encode(self, activations):
        a = torch.as_tensor(activations).to(self.components.dtype)
        return torch.clamp(a @ torch.linalg.pinv(self.components), min=0)


class _IdentityBank:
    """Concepts = the activation's own channels: codes are the activations."""

    def __init__(self, k: int, dtype=torch.float32):
        self.components = torch.eye(k, dtype=dtype)

    def encode(self, activations):
        return torch.as_tensor(activations).to(self.components.dtype)


def _linear(weights, bias, n_classes=2, row=1, dtype=torch.float32):
    head = nn.Linear(len(weights), n_classes)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[row] = torch.tensor(weights)
        head.bias.fill_(bias)
    return head.to(dtype)


# --- 1. a class score constant up to float32 rounding -------------------------------------

def _orthogonal_class():
    """A class row ``w`` orthogonal (in float64) to every concept: the float32 class score is
    the bias plus rounding, ``3 +- a few ulps``."""
    gen = torch.Generator().manual_seed(0)
    k, channels, n = 3, 6, 8
    w = torch.randn(channels, dtype=torch.float64, generator=gen)
    w /= w.norm()
    components = torch.rand(k, channels, dtype=torch.float64, generator=gen)
    components = (components - (components @ w)[:, None] * w[None]).float()
    codes = torch.rand(n, k, generator=gen) * 10
    acts = codes @ components
    head = nn.Linear(channels, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1] = w.float()
        head.bias.fill_(3.0)
    return head, acts, _Bank(components), codes, components


@pytest.mark.parametrize("method, kwargs", [("sobol", {}), ("sobol", {"fast_path": False}),
                                            ("closed_form", {})])
def test_a_class_that_no_concept_moves_gets_zero_importances_not_rounding_noise(method, kwargs):
    head, acts, bank, codes, components = _orthogonal_class()
    with torch.no_grad():
        scores = head(acts)[:, 1]
    assert float(scores.max() - scores.min()) > 0      # not exactly constant: rounding
    # generic Sobol on input 0's score as a function of the masks calls it constant
    def score_of_masks(masks):
        masked = torch.as_tensor(masks, dtype=torch.float32) * codes[0]
        return head(masked @ components)[:, 1].detach()

    with pytest.warns(RuntimeWarning, match="constant on all"):
        reference = sobol_indices(score_of_masks, 3, n_designs=32, seed=0)
    np.testing.assert_array_equal(reference, 0.0)
    with pytest.warns(RuntimeWarning, match="every importance is 0"):
        result = concept_importance(head, acts, bank, 1, method=method, seed=0,
                                    progress=False, **kwargs)
    np.testing.assert_array_equal(result.per_input, 0.0)
    np.testing.assert_array_equal(result.ci_high, 0.0)


@pytest.mark.parametrize("weights, bias", [
    ([1e-4, 6e-5, 3e-5], 1.0),       # moves a score of 1 by about 1e-4
    ([6e-3, 4e-3, 2e-3], 1000.0),    # moves a score of 1000 by about 1e-2
])
def test_a_small_real_effect_keeps_its_importance(weights, bias):
    """The rounding floor is a few float32 steps of the score: an effect of 1e-4 relative, or
    1e-2 on 1000, is well above it and keeps the importances of the path without a floor."""
    codes = torch.rand(12, 3, generator=torch.Generator().manual_seed(3)) + 0.5
    head, bank = _linear(weights, bias), _IdentityBank(3)
    beta = codes.double() * torch.tensor(weights, dtype=torch.float64)
    exact = (beta ** 2 / (beta ** 2).sum(1, keepdim=True)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = concept_importance(head, codes, bank, 1, seed=0, progress=False)
        slow = concept_importance(head, codes, bank, 1, seed=0, progress=False,
                                  fast_path=False)
        closed = concept_importance(head, codes, bank, 1, method="closed_form", seed=0,
                                    progress=False)
    assert fast.params["fast_path"] is True and slow.params["fast_path"] is False
    assert (slow.per_input > 0).all() and (fast.per_input > 0).all()
    # the generic path reads h's float32 rounding, the fast path the exact collapse
    np.testing.assert_allclose(fast.per_input, slow.per_input, atol=0.03)
    np.testing.assert_allclose(fast.importances, slow.importances, atol=0.01)
    np.testing.assert_allclose(closed.per_input, exact, atol=1e-3)


def test_inputs_constant_up_to_rounding_are_named_in_a_warning():
    """Input 0's codes move the score by 1e-9 (below float32's step at 3), input 1's by 1e-3:
    input 0 gets 0 and a warning, input 1 the importance it has alone."""
    codes = torch.tensor([[1.0, 1.0, 1.0], [1e6, 2e6, 3e6]])
    head = _linear([1e-9, 1e-9, 1e-9], 3.0)
    with pytest.warns(RuntimeWarning, match=r"rounding of its dtype \(float32\) on 1 of the 2 "
                                            r"inputs \(inputs 0\)"):
        both = concept_importance(head, codes, _IdentityBank(3), 1, seed=0, progress=False,
                                  fast_path=False, shared_design=True)
    alone = concept_importance(head, codes[1:], _IdentityBank(3), 1, seed=0, progress=False,
                               fast_path=False, shared_design=True)
    np.testing.assert_array_equal(both.per_input[0], 0.0)
    np.testing.assert_allclose(both.per_input[1], alone.per_input[0], rtol=1e-12)
    assert (both.per_input[1] > 0.05).all()


# --- 2. the affine fast path --------------------------------------------------------------

class _Kink(nn.Module):
    """Affine except where ``m0 > m1 + 0.8`` (2 % of the mask cube, including the corner
    'concept 0 alone')."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()

    def forward(self, x):
        bump = 40 * torch.relu(x[:, 0] - x[:, 1] - 0.8)
        return self.fc(x) + torch.stack([bump, bump], 1)


@pytest.mark.parametrize("seed", range(8))
def test_a_kinked_head_is_not_taken_for_affine(seed):
    head, acts = _Kink(), torch.ones(8, 3)   # codes 1: the head sees the mask itself
    auto = concept_importance(head, acts, _IdentityBank(3), 1, seed=seed, progress=False,
                              n_designs=256)
    off = concept_importance(head, acts, _IdentityBank(3), 1, seed=seed, progress=False,
                             n_designs=256, fast_path=False)
    assert auto.params["fast_path"] is False
    np.testing.assert_array_equal(auto.per_input, off.per_input)
    with pytest.raises(ValueError, match="fast_path=True needs"):
        concept_importance(head, acts, _IdentityBank(3), 1, seed=seed, progress=False,
                           n_designs=256, fast_path=True)


def test_an_affine_head_still_takes_the_fast_path_and_matches_h():
    codes = torch.rand(10, 4, generator=torch.Generator().manual_seed(1)) + 0.2
    head, bank = _linear([0.5, -1.0, 2.0, 0.3], 0.7), _IdentityBank(4)
    fast = concept_importance(head, codes, bank, 1, seed=0, progress=False)
    slow = concept_importance(head, codes, bank, 1, seed=0, progress=False, fast_path=False)
    assert fast.params["fast_path"] is True and "fast_path_rejected" not in fast.params
    np.testing.assert_allclose(fast.per_input, slow.per_input, atol=1e-5)


def test_a_collapse_that_h_contradicts_on_the_design_falls_back_to_h(monkeypatch):
    """A collapse that passed the probe but is wrong (here: planted, twice the real betas)
    is caught on rows of the Sobol design, and h itself is asked."""
    codes = torch.rand(10, 3, generator=torch.Generator().manual_seed(2)) + 0.2
    weights = [0.5, -1.0, 2.0]
    head, bank = _linear(weights, 0.7), _IdentityBank(3)
    beta = (codes.double() * torch.tensor(weights, dtype=torch.float64)).numpy()
    wrong = beta * np.array([2.0, 1.0, 1.0])
    monkeypatch.setattr(_concept, "fit_affine", lambda problem, rng: AffineHead(
        beta=wrong, intercept=np.full(len(beta), 0.7)))
    result = concept_importance(head, codes, bank, 1, seed=0, progress=False)
    off = concept_importance(head, codes, bank, 1, seed=0, progress=False, fast_path=False)
    assert result.params["fast_path"] is False
    assert result.params["fast_path_rejected"] == "design"
    np.testing.assert_array_equal(result.per_input, off.per_input)
    with pytest.raises(ValueError, match="differs from its affine collapse"):
        concept_importance(head, codes, bank, 1, seed=0, progress=False, fast_path=True)


# --- 3. the sensitivity probe and the probability ------------------------------------------

def _confident_first_half(n=16):
    """Two concepts on channels 1 and 2; the first half of the inputs also carry a large
    residual channel 0 that makes class 0 certain in float32 (a probability of exactly 1)."""
    components = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    acts = torch.zeros(n, 3)
    acts[:, 1:] = torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) + 0.5
    acts[: n // 2, 0] = 1.0
    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[30.0, 1.0, 2.0], [0.0, 0.0, 0.0]]))
        head.bias.zero_()
    return head, acts, _Bank(components)


def test_ablation_does_not_depend_on_the_order_of_the_inputs():
    head, acts, bank = _confident_first_half()
    with torch.no_grad():
        assert bool((torch.softmax(head(acts[:8]), 1)[:, 0] == 1.0).all())  # float32 saturates
    forward = concept_importance(head, acts, bank, 0, method="ablation", seed=0, progress=False)
    backward = concept_importance(head, acts.flip(0), bank, 0, method="ablation", seed=0,
                                  progress=False)
    responsive = concept_importance(head, acts[8:], bank, 0, method="ablation", seed=0,
                                    progress=False)
    np.testing.assert_array_equal(backward.per_input, forward.per_input[::-1])
    np.testing.assert_array_equal(forward.per_input[8:], responsive.per_input)
    # the confident inputs: the float64 drop of the probability, by hand
    weight = head.weight.detach().double()
    full = acts.double() @ weight.T
    codes = bank.encode(acts).double()
    for j in range(2):
        removed = full - codes[:, j:j + 1] * weight[:, j + 1][None]
        drop = torch.softmax(full, 1)[:, 0] - torch.softmax(removed, 1)[:, 0]
        np.testing.assert_allclose(forward.per_input[:, j], drop.numpy(), rtol=1e-5, atol=1e-18)
    assert (forward.per_input[:8] > 0).all()


def test_a_probability_saturated_in_float64_is_refused_naming_the_logit():
    head, acts, bank = _confident_first_half()
    with torch.no_grad():
        head.weight[0, 0] = 1000.0
    with pytest.raises(ValueError, match=r'saturated.*score="logit".*importance_kwargs'):
        concept_importance(head, acts[:8], bank, 0, method="ablation", seed=0, progress=False)
    logit = concept_importance(head, acts[:8], bank, 0, method="ablation", seed=0,
                               progress=False, score="logit")
    # the logit's drop is u_j w_j, up to float32 rounding of a logit of about 1000
    np.testing.assert_allclose(logit.per_input, bank.encode(acts[:8]).numpy() * [1.0, 2.0],
                               atol=4 * np.finfo(np.float32).eps * 1004)


def test_a_class_no_input_responds_to_is_still_refused_on_all_inputs():
    acts = torch.rand(12, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="exactly the same.*on all 12 inputs"):
        concept_importance(_linear([0.0, 0.0, 0.0], 3.0), acts, _IdentityBank(3), 1,
                           method="occlusion", progress=False)


# --- 4. bfloat16 heads ---------------------------------------------------------------------

METHOD_KWARGS = {"sobol": {"n_designs": 64}, "closed_form": {}, "gradient_input": {},
                 "integrated_gradients": {"steps": 8}, "occlusion": {}, "ablation": {},
                 "rise": {"n_samples": 64}}


@pytest.mark.parametrize("method", sorted(METHOD_KWARGS))
def test_a_bfloat16_head_gives_the_float32_importances_to_its_precision(method):
    gen = torch.Generator().manual_seed(0)
    acts = torch.rand(6, 4, generator=gen) + 0.5
    head = nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, -0.5, 2.0, 0.25], [0.5, 1.5, -1.0, 0.75],
                                        [0.0, 0.25, 0.5, -2.0]]))
        head.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    # bfloat16-exact inputs and weights: the two heads differ by their arithmetic only
    acts = acts.to(torch.bfloat16).float()
    reference = concept_importance(head, acts, _IdentityBank(4), 1, method=method, seed=0,
                                   progress=False, **METHOD_KWARGS[method])
    half = copy.deepcopy(head).to(torch.bfloat16)
    result = concept_importance(half, acts.to(torch.bfloat16),
                                _IdentityBank(4, torch.bfloat16), 1, method=method, seed=0,
                                progress=False, **METHOD_KWARGS[method])
    scale = float(np.abs(reference.per_input).max())
    eps = float(torch.finfo(torch.bfloat16).eps)
    np.testing.assert_allclose(result.per_input, reference.per_input, atol=8 * eps * scale)


def test_sobol_indices_reads_a_bfloat16_function():
    weights = torch.tensor([1.0, 2.0, 3.0])
    exact = (weights ** 2 / (weights ** 2).sum()).numpy()
    as_bf16 = sobol_indices(lambda x: (torch.as_tensor(x, dtype=torch.float32) @ weights).to(
        torch.bfloat16), 3, n_designs=256, seed=0)
    as_f32 = sobol_indices(lambda x: torch.as_tensor(x, dtype=torch.float32) @ weights, 3,
                           n_designs=256, seed=0)
    np.testing.assert_allclose(as_bf16, as_f32, atol=0.01)
    np.testing.assert_allclose(as_bf16, exact, atol=0.01)
    values = torch.tensor([1.0, 1.0 / 3.0, -2.5e30]).to(torch.bfloat16)
    np.testing.assert_array_equal(to_numpy(values), values.float().numpy())


def test_sobol_indices_says_what_an_unconvertible_output_is():
    with pytest.raises(TypeError, match="does not convert to a float64 numpy array"):
        sobol_indices(lambda x: np.array(["a"] * len(x)), 2, n_designs=8, seed=0)


# --- 6. n_bootstrap without confidence ------------------------------------------------------

def _linear_func(x):
    return np.asarray(x) @ np.array([1.0, 2.0, 3.0])


@pytest.mark.parametrize("value, error, match", [
    (5000, TypeError, "`n_bootstrap`.*`confidence`.*sobol_indices_with_ci"),
    (-3, ValueError, "`n_bootstrap` must be >= 2"),
    ("abc", TypeError, "`n_bootstrap` must be an integer"),
])
def test_n_bootstrap_without_confidence_is_refused(value, error, match):
    with pytest.raises(error, match=match):
        sobol_indices(_linear_func, 3, n_designs=64, seed=0, n_bootstrap=value)


def test_n_bootstrap_with_confidence_still_reaches_the_interval():
    with pytest.warns(DeprecationWarning):
        old = sobol_indices(_linear_func, 3, n_designs=64, seed=0, confidence=0.9,
                            n_bootstrap=50)
    new = sobol_indices_with_ci(_linear_func, 3, n_designs=64, seed=0, confidence=0.9,
                                n_bootstrap=50)
    np.testing.assert_array_equal(old.ci_low, new.ci_low)
    np.testing.assert_array_equal(old.ci_high, new.ci_high)
    # the default call is unchanged
    np.testing.assert_array_equal(sobol_indices(_linear_func, 3, n_designs=64, seed=0),
                                  new.indices)
