"""Concept importance: closed forms, fast path = generic path, CRAFT reproduction, properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import qmc
from torch import nn

from conceptkit.importance import METHODS, ConceptImportance, concept_importance


class OrthoBank:
    """A concept bank with orthonormal components: ``encode`` recovers planted codes exactly."""

    def __init__(self, components: torch.Tensor):
        self.components = components

    def encode(self, activations):
        activations = torch.as_tensor(activations)
        return torch.einsum("nc...,kc->nk...", activations, self.components)


def orthonormal(k: int, channels: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(channels, k, generator=gen))[0].T.contiguous()


def planted(n=40, k=6, channels=16, size=3, seed=0):
    """Codes ``U`` (n, k, size, size) >= 0, orthonormal ``W`` (k, C), activations ``U W``."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, k, size, size, generator=gen) * torch.linspace(0.5, 2.0, k)[:, None, None]
    components = orthonormal(k, channels, seed)
    activations = torch.einsum("nkhw,kc->nchw", codes, components)
    return codes, components, activations


def pooled_linear(channels: int, n_classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, n_classes))


def exact_beta(codes, components, head, class_id):
    """beta_ij = mean over positions of U_ij times (W w_c)_j for GAP followed by Linear."""
    row = head[-1].weight[class_id].detach().double()
    return (codes.double().mean((2, 3)) * (components.double() @ row)).numpy()


class ConceptGatedHead(nn.Module):
    """A nonlinear head on squashed pooled codes ``z = tanh(GAP(A) W^T)``.

    ``y_c = sum_j w_cj z_j + sum_j (w_cj z_j)(w_c,j-1 z_j-1)``: ``weights[c, j]`` sets how strongly
    concept ``j`` drives class ``c``, with pairwise interactions; a zero weight means that ``h``
    ignores the concept (up to the float error of the projections).
    """

    def __init__(self, components: torch.Tensor, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("components", components)
        self.weights = nn.Parameter(weights)

    def forward(self, x):
        pooled = x.mean((2, 3)) if x.ndim == 4 else x
        weighted = torch.tanh(pooled @ self.components.T)[:, None, :] * self.weights
        return weighted.sum(-1) + (weighted * weighted.roll(1, dims=-1)).sum(-1)


def run(head, acts, bank, class_id=1, method="sobol", **kwargs):
    kwargs.setdefault("progress", False)
    return concept_importance(head, acts, bank, class_id, method, **kwargs)


# --- exactness of the affine machinery -------------------------------------------------------

@pytest.mark.parametrize("shared_design", [False, True])
@pytest.mark.parametrize("estimator", ["jansen", "glen"])
def test_fast_path_equals_generic_path(shared_design, estimator):
    codes, components, acts = planted(n=12, k=5, channels=8)
    head, bank = pooled_linear(8), OrthoBank(components)
    options = dict(seed=3, shared_design=shared_design, estimator=estimator, n_designs=16)
    fast = run(head, acts, bank, fast_path=True, **options)
    generic = run(head, acts, bank, fast_path=False, **options)
    assert fast.params["fast_path"] is True and generic.params["fast_path"] is False
    assert np.abs(fast.per_input - generic.per_input).max() <= 1e-5
    auto = run(head, acts, bank, **options)
    assert auto.params["fast_path"] is True
    np.testing.assert_array_equal(auto.per_input, fast.per_input)


def test_fast_path_equals_generic_path_for_first_order_and_2d_cuts():
    codes, components, _ = planted(n=10, k=4, channels=8)
    acts = torch.einsum("nk,kc->nc", codes.mean((2, 3)), components)
    torch.manual_seed(0)
    head, bank = nn.Linear(8, 3), OrthoBank(components)
    fast = run(head, acts, bank, seed=0, order="first", estimator="saltelli", fast_path=True)
    generic = run(head, acts, bank, seed=0, order="first", estimator="saltelli", fast_path=False)
    assert np.abs(fast.per_input - generic.per_input).max() <= 1e-5


def test_closed_form_is_beta_squared_share():
    codes, components, acts = planted()
    head, bank = pooled_linear(16), OrthoBank(components)
    beta = exact_beta(codes, components, head, 1)
    result = run(head, acts, bank, method="closed_form")
    np.testing.assert_allclose(result.per_input, beta ** 2 / (beta ** 2).sum(1, keepdims=True),
                               atol=1e-6)


class ClampedLinear(nn.Module):
    """Affine while the class score stays within +-2, constant outside: affine on ordinary
    inputs only."""

    def __init__(self, channels: int):
        super().__init__()
        self.head = pooled_linear(channels)

    def forward(self, x):
        return torch.clamp(self.head(x), min=-2.0, max=2.0)


def test_an_input_the_affinity_probe_missed_is_not_given_the_affine_importances():
    # the probe draws at most 8 of the 40 inputs; the last one saturates the head (its codes
    # are 10,000 times larger), so the head is constant there and no concept matters for it
    codes, components, acts = planted()
    acts = acts * 0.05
    acts[-1] *= 10_000
    head, bank = ClampedLinear(16), OrthoBank(components)
    with torch.no_grad():
        scores = head(acts)[:, 1]
    assert scores[-1].abs() == 2.0 and scores[:-1].abs().max() < 2.0
    from conceptkit.importance._attribution import Seeds

    seed = next(s for s in range(20)   # a seed whose probe does not draw the last input
                if 39 not in Seeds(s).probe_rng().choice(40, size=8, replace=False))
    result = run(head, acts, bank, seed=seed)
    assert result.params["fast_path"] is False          # it was True, with affine importances
    generic = run(head, acts, bank, seed=seed, fast_path=False)
    np.testing.assert_array_equal(result.per_input, generic.per_input)
    # the saturated input's importances are not the affine ones (beta^2 shares)
    beta = exact_beta(codes * 0.05, components, head.head, 1)[-1] * 10_000
    assert not np.allclose(result.per_input[-1], beta ** 2 / (beta ** 2).sum(), atol=0.05)
    with pytest.raises(ValueError, match="affine"):     # "exact", on a head that is not affine
        run(head, acts, bank, method="closed_form", seed=seed)


def test_gradient_input_occlusion_ig_equal_beta_for_affine_head():
    codes, components, acts = planted()
    head, bank = pooled_linear(16), OrthoBank(components)
    beta = exact_beta(codes, components, head, 1)
    for method in ("gradient_input", "occlusion", "integrated_gradients"):
        result = run(head, acts, bank, method=method)
        np.testing.assert_allclose(result.per_input, beta, atol=2e-5, err_msg=method)


def test_rise_estimates_beta_for_affine_head():
    codes, components, acts = planted(n=20)
    head, bank = pooled_linear(16), OrthoBank(components)
    beta = exact_beta(codes, components, head, 1)
    result = run(head, acts, bank, method="rise", n_samples=4000, seed=0)
    assert np.abs(result.per_input - beta).max() < 0.1 * np.abs(beta).max()
    assert np.abs(result.importances - beta.mean(0)).max() < 0.02 * np.abs(beta).max()


def test_sobol_accuracy_against_closed_form_per_input_vs_craft_design():
    """k = 25, 100 inputs, 32 designs: independent scrambles beat CRAFT's shared Halton design."""
    n, k, channels = 100, 25, 64
    gen = torch.Generator().manual_seed(0)
    codes = torch.empty(n, k, 3, 3).exponential_(generator=gen)
    components = orthonormal(k, channels, 0)
    acts = torch.einsum("nkhw,kc->nchw", codes, components)
    head, bank = pooled_linear(channels, 10), OrthoBank(components)
    exact = run(head, acts, bank, 2, method="closed_form").importances
    per_input = run(head, acts, bank, 2, seed=0).importances
    craft = run(head, acts, bank, 2, shared_design=True, sampler="halton_unscrambled").importances
    error_per_input = np.abs(per_input - exact).mean()
    error_craft = np.abs(craft - exact).mean()
    assert error_per_input <= 0.02
    assert error_per_input < error_craft / 2


# --- CRAFT reproduction ------------------------------------------------------------------------

def craft_style_importance(head, codes, components, class_id, n_designs=32):
    """CRAFT's loop: one unscrambled Halton design, masks on codes, per image Jansen (numpy)."""
    k = codes.shape[1]
    points = qmc.Halton(2 * k, scramble=False).random(n_designs).astype(np.float32)
    a, b = points[:, :k], points[:, k:]
    replicated = np.concatenate([np.where(np.eye(k, dtype=bool)[i], b, a) for i in range(k)])
    masks = torch.from_numpy(np.concatenate([a, b, replicated]))
    out = []
    with torch.no_grad():
        for u in codes:
            perturbed = u[None] * masks[:, :, None, None]
            y = head(torch.einsum("mkhw,kc->mchw", perturbed, components))[:, class_id].double()
            f_a, f_c = y[:n_designs], y[2 * n_designs:].reshape(k, n_designs)
            variance = f_a.var()                       # unbiased, as CRAFT
            out.append((((f_a - f_c) ** 2).sum(1) / (2 * n_designs * variance)).numpy())
    return np.mean(out, axis=0)


def test_shared_halton_design_reproduces_craft():
    codes, components, acts = planted(n=8, k=5, channels=8)
    torch.manual_seed(1)
    head = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4))
    reference = craft_style_importance(head, codes, components, 2)
    ours = run(head, acts, OrthoBank(components), 2, shared_design=True,
               sampler="halton_unscrambled", fast_path=False)
    np.testing.assert_allclose(ours.importances, reference, atol=1e-5)


# --- properties on nonlinear heads ---------------------------------------------------------------

def gated_setup(weights_row, n=30, k=5, channels=12, seed=0):
    codes, components, acts = planted(n=n, k=k, channels=channels, seed=seed)
    weights = torch.zeros(3, k)
    weights[1] = torch.tensor(weights_row)
    weights[0] = 0.3
    head = ConceptGatedHead(components, weights)
    return head, acts, OrthoBank(components)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"closed_form"}))
def test_nonlinear_head_ranks_planted_dominant_concept_first(method):
    head, acts, bank = gated_setup([0.2, 0.1, 3.0, 0.15, 0.1])
    result = run(head, acts, bank, method=method, seed=0)
    assert result.ranking[0] == 2
    if method == "sobol":
        assert result.params["fast_path"] is False


def test_ignored_concept_gets_zero():
    head, acts, bank = gated_setup([0.5, 1.0, 0.0, 0.8, 0.3])
    occlusion = run(head, acts, bank, method="occlusion")
    assert np.abs(occlusion.per_input[:, 2]).max() < 1e-6
    assert np.all(np.abs(occlusion.per_input[:, [0, 1, 3, 4]]).max(0) > 1e-3)
    for method in ("sobol", "gradient_input", "integrated_gradients"):
        result = run(head, acts, bank, method=method, seed=0)
        assert np.abs(result.per_input[:, 2]).max() < 1e-6, method
        assert result.importances[[0, 1, 3, 4]].min() > 1e-3, method


def test_integrated_gradients_completeness_on_nonlinear_head():
    head, acts, bank = gated_setup([1.0, -2.0, 3.0, 0.5, 1.5])
    result = run(head, acts, bank, method="integrated_gradients", steps=50)
    with torch.no_grad():
        full = head(acts)[:, 1].double().numpy()
        empty = head(torch.zeros_like(acts[:1]))[0, 1].double().item()
    gap = full - empty
    np.testing.assert_allclose(result.per_input.sum(1), gap, atol=2e-3 * np.abs(gap).max())
    coarse = run(head, acts, bank, method="integrated_gradients", steps=4)
    assert np.abs(coarse.per_input.sum(1) - gap).max() > np.abs(result.per_input.sum(1) - gap).max()


@pytest.mark.parametrize("method", ["closed_form", "gradient_input", "occlusion",
                                    "integrated_gradients"])
def test_deterministic_methods_are_permutation_equivariant(method):
    head, acts, bank = gated_setup([0.5, 1.0, 2.0, 0.8, 0.3])
    if method == "closed_form":
        codes, components, acts = planted(k=5, channels=12)
        head, bank = pooled_linear(12), OrthoBank(components)
    perm = np.array([3, 0, 4, 2, 1])
    permuted_bank = OrthoBank(bank.components[perm])
    base = run(head, acts, bank, method=method)
    permuted = run(head, acts, permuted_bank, method=method)
    np.testing.assert_allclose(permuted.per_input, base.per_input[:, perm], atol=1e-5)


def test_sobol_is_permutation_equivariant_in_distribution():
    head, acts, bank = gated_setup([0.5, 1.0, 2.0, 0.8, 0.3], n=60)
    perm = np.array([3, 0, 4, 2, 1])
    base = run(head, acts, bank, seed=0, n_designs=64)
    permuted = run(head, acts, OrthoBank(bank.components[perm]), seed=1, n_designs=64)
    np.testing.assert_allclose(permuted.importances, base.importances[perm], atol=0.02)


@pytest.mark.parametrize("method", ["sobol", "rise"])
def test_seeded_results_are_reproducible(method):
    head, acts, bank = gated_setup([0.5, 1.0, 2.0, 0.8, 0.3], n=10)
    extra = {"n_samples": 64} if method == "rise" else {}
    first = run(head, acts, bank, method=method, seed=5, **extra)
    again = run(head, acts, bank, method=method, seed=5, **extra)
    other = run(head, acts, bank, method=method, seed=6, **extra)
    np.testing.assert_array_equal(first.per_input, again.per_input)
    assert not np.array_equal(first.per_input, other.per_input)


def test_chunking_does_not_change_results():
    head, acts, bank = gated_setup([0.5, 1.0, 2.0, 0.8, 0.3], n=10)
    whole = run(head, acts, bank, seed=0)
    small = run(head, acts, bank, seed=0, batch_size=7)
    tiny_budget = run(head, acts, bank, seed=0, memory_budget=12 * 4 * 9 * 5)
    np.testing.assert_allclose(small.per_input, whole.per_input, atol=1e-6)
    np.testing.assert_allclose(tiny_budget.per_input, whole.per_input, atol=1e-6)


def test_conv_head_and_numpy_inputs():
    codes, components, acts = planted(n=6, k=4, channels=8)
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))

    class NumpyBank(OrthoBank):
        def encode(self, activations):
            activations = torch.as_tensor(activations)
            return np.einsum("nchw,kc->nkhw", activations.numpy(), self.components)

    bank = NumpyBank(components.numpy())
    result = run(head, acts.numpy(), bank, 0, seed=0, n_designs=8)
    assert result.per_input.shape == (6, 4) and np.all(np.isfinite(result.per_input))
    assert result.params["fast_path"] is False
    assert np.all(result.per_input >= -1e-9)


# --- result object and model state -------------------------------------------------------------

def test_result_interval_ranking_and_json():
    codes, components, acts = planted()
    head, bank = pooled_linear(16), OrthoBank(components)
    result = run(head, acts, bank, method="gradient_input", confidence=0.9)
    assert isinstance(result, ConceptImportance)
    np.testing.assert_allclose(result.importances, result.per_input.mean(0))
    assert np.all(result.ci_low < result.importances) and np.all(result.importances < result.ci_high)
    wider = run(head, acts, bank, method="gradient_input", confidence=0.99)
    assert np.all(wider.ci_high - wider.ci_low > result.ci_high - result.ci_low)
    assert list(result.ranking) == list(np.argsort(-result.importances))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["method"] == "gradient_input" and data["class_id"] == 1
    assert data["ranking"] == [int(i) for i in result.ranking]
    single = run(head, acts[:1], bank, method="occlusion")
    assert np.all(np.isnan(single.ci_low))
    assert json.loads(json.dumps(single.to_dict()))["ci_low"][0] is None
    assert run(head, acts, bank, method="occlusion", confidence=None).ci_low is None


def test_model_flags_are_restored_and_eval_mode_is_used():
    codes, components, acts = planted(n=6, k=4, channels=8)
    torch.manual_seed(0)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3))
    head.train()
    head[-1].bias.requires_grad_(False)
    bank = OrthoBank(components)
    first = run(head, acts, bank, method="gradient_input")
    second = run(head, acts, bank, method="gradient_input")
    np.testing.assert_array_equal(first.per_input, second.per_input)   # dropout was off
    assert all(module.training for module in head.modules())
    assert head[-1].weight.requires_grad and not head[-1].bias.requires_grad
    assert run(head, acts, bank, seed=0).params["fast_path"] is True


# --- errors --------------------------------------------------------------------------------------

def test_errors_name_the_argument():
    codes, components, acts = planted(n=4, k=3, channels=8)
    head, bank = pooled_linear(8, n_classes=5), OrthoBank(components)
    with pytest.raises(ValueError, match=r"class_id.*\[0, 4\].*5 classes"):
        run(head, acts, bank, 5)
    with pytest.raises(TypeError, match="class_id"):
        run(head, acts, bank, 1.5)
    with pytest.raises(ValueError, match="method.*'sobol'"):
        run(head, acts, bank, method="shapley")
    with pytest.raises(TypeError, match="steps"):
        run(head, acts, bank, method="occlusion", steps=3)
    with pytest.raises(ValueError, match="steps"):
        run(head, acts, bank, method="integrated_gradients", steps=0)
    with pytest.raises(ValueError, match=r"\(n, C\) or \(n, C, h, w\)"):
        run(head, acts[0], bank)
    with pytest.raises(ValueError, match="channels"):
        run(head, acts[:, :4], bank)
    with pytest.raises(ValueError, match="empty"):
        run(head, acts[:0], bank)
    bad = acts.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        run(head, bad, bank)
    with pytest.raises(TypeError, match="encode"):
        run(head, acts, components)
    with pytest.raises(ValueError, match="power of two"):
        run(head, acts, bank, n_designs=24)
    with pytest.raises(ValueError, match="estimator"):
        run(head, acts, bank, estimator="sobol")
    with pytest.raises(ValueError, match="fast_path"):
        run(head, acts, bank, fast_path="yes")
    with pytest.raises(ValueError, match="confidence"):
        run(head, acts, bank, confidence=1.0)
    with pytest.raises(ValueError, match="`h` must return logits"):
        run(lambda x: x.mean((1, 2, 3)), acts, bank)
    with pytest.raises(ValueError, match="`h` failed"):
        run(nn.Linear(8, 3), acts, bank)
    with pytest.raises(TypeError, match="`h`"):
        run("head", acts, bank)


def test_settings_another_method_would_ignore_are_refused():
    codes, components, acts = planted(n=4, k=3, channels=8)
    head, bank = pooled_linear(8, n_classes=5), OrthoBank(components)
    # each ran and returned a result before: a typo or a Sobol setting silently ignored
    for method, kwargs in (("occlusion", {"n_designs": 64}), ("rise", {"sampler": "sobl"}),
                           ("integrated_gradients", {"estimator": "bogus"}),
                           ("gradient_input", {"fast_path": "maybe"}),
                           ("closed_form", {"shared_design": True})):
        with pytest.raises(TypeError, match="Sobol settings"):
            run(head, acts, bank, method=method, **kwargs)
    # their defaults, as every caller passes them, are fine
    run(head, acts, bank, method="occlusion", n_designs=32, sampler="sobol")
    # RISE with one mask gave exactly 0 for every concept
    with pytest.raises(ValueError, match="n_samples"):
        run(head, acts, bank, method="rise", n_samples=1)
    with pytest.raises(ValueError, match="seed"):
        run(head, acts, bank, seed=2**40)


def test_the_explainer_checks_its_importance_options_when_built():
    from conceptkit import ConceptExplainer
    from conceptkit.datasets import reference_model

    model = reference_model()
    for importance, kwargs, error, match in (
            ("sobol", {"n_designs": 8}, TypeError, "may not set \\['n_designs'\\]"),
            ("sobol", {"seed": 1}, TypeError, "may not set \\['seed'\\]"),
            ("sobol", {"sampler": "sobl"}, ValueError, "sampler"),
            ("rise", {"sampler": "halton"}, TypeError, "Sobol settings"),
            ("occlusion", {"steps": 3}, TypeError, "unexpected keyword"),
            ("integrated_gradients", {"steps": 0}, ValueError, "steps")):
        with pytest.raises(error, match=match):  # at fit, after the discovery, before
            ConceptExplainer(model, "block4", importance=importance, importance_kwargs=kwargs)


def test_nonlinear_or_non_differentiable_heads_are_refused_where_needed():
    head, acts, bank = gated_setup([0.5, 1.0, 2.0, 0.8, 0.3], n=4)
    with pytest.raises(ValueError, match="affine"):
        run(head, acts, bank, method="closed_form")
    with pytest.raises(ValueError, match="affine"):
        run(head, acts, bank, fast_path=True)

    def frozen(x):
        with torch.no_grad():
            return head(x)

    with pytest.raises(ValueError, match="not differentiable"):
        run(frozen, acts, bank, method="gradient_input")
    assert run(frozen, acts, bank, method="occlusion").per_input.shape == (4, 5)


def test_large_offset_does_not_hide_a_nonlinear_head():
    codes, components, acts = planted(n=10, k=4, channels=8)
    torch.manual_seed(0)
    inner = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3), nn.Tanh())

    def offset_head(x):
        return 1000.0 + 0.05 * inner(3 * x)

    bank = OrthoBank(components)
    assert run(offset_head, acts, bank, seed=0).params["fast_path"] is False
    with pytest.raises(ValueError, match="affine"):
        run(offset_head, acts, bank, method="closed_form")
    assert run(lambda x: 1000.0 + inner[:3](x), acts, bank, seed=0).params["fast_path"] is True


def test_affine_head_without_gradients_uses_forward_coefficients():
    codes, components, acts = planted(n=10, k=4, channels=8)
    head = pooled_linear(8)

    def detached(x):
        return head(x.detach())

    bank = OrthoBank(components)
    result = run(detached, acts, bank, method="closed_form")
    beta = exact_beta(codes, components, head, 1)
    np.testing.assert_allclose(result.per_input, beta ** 2 / (beta ** 2).sum(1, keepdims=True),
                               atol=1e-5)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_with_the_project_concept_bank():
    """End to end with conceptkit's own ConceptBank (NMF codes per position, as CRAFT/ICE)."""
    concepts = pytest.importorskip("conceptkit.concepts")
    from conceptkit.extraction import Provenance

    codes, components, acts = planted(n=24, k=4, channels=10)
    acts = acts.abs()
    rows = acts.permute(0, 2, 3, 1).reshape(-1, 10)
    provenance = Provenance(kind="image", image_ids=np.arange(len(rows)),
                            boxes=np.zeros((len(rows), 4)), source_size=(8, 8))
    bank = concepts.bank_from_activations(concepts.NMF(4, random_state=0), rows, provenance)
    head = pooled_linear(10)
    fast = run(head, acts, bank, seed=0, fast_path=True)
    generic = run(head, acts, bank, seed=0, fast_path=False)
    assert np.abs(fast.per_input - generic.per_input).max() <= 1e-5
    exact = run(head, acts, bank, method="closed_form")
    assert np.abs(fast.importances - exact.importances).mean() < 0.02
    gradient = run(head, acts, bank, method="gradient_input")
    occluded = run(head, acts, bank, method="occlusion")
    np.testing.assert_allclose(gradient.per_input, occluded.per_input, atol=1e-5)


def test_integrated_gradients_refuses_a_head_whose_values_are_nan_on_its_path():
    """A head whose value is NaN where its gradient is finite (here: on activations scaled to
    between 0.2 and 0.6 of their size, which only integrated gradients' path reaches; the
    sensitivity probe sees scales 0 and 1) gave finite importances from the gradients alone;
    the values are checked too."""
    codes, components, activations = planted(n=6, k=3, channels=8)
    linear = pooled_linear(8)
    peak = activations.abs().amax(dim=(1, 2, 3))

    def head(x):
        out = linear(x)
        ratio = (x.abs().amax(dim=(1, 2, 3)) / peak[: len(x)])[:, None]
        inside = (ratio > 0.2) & (ratio < 0.6)
        return torch.where(inside, torch.full_like(out, float("nan")), out)

    with pytest.raises(ValueError, match="NaN or Inf values"):
        concept_importance(head, activations, OrthoBank(components), class_id=0,
                           method="integrated_gradients", batch_size=6)


@pytest.mark.parametrize("method", ["sobol", "rise"])
def test_seed_none_records_the_seed_drawn_so_the_run_can_be_repeated(method):
    codes, components, activations = planted(n=4, k=3, channels=8)
    head, bank = pooled_linear(8), OrthoBank(components)
    kwargs = {"n_designs": 32, "fast_path": False} if method == "sobol" else {}
    first = concept_importance(head, activations, bank, class_id=1, method=method, seed=None,
                               **kwargs)
    seed = first.params["seed"]
    assert isinstance(seed, int) and 0 <= seed <= 2**32 - 1
    again = concept_importance(head, activations, bank, class_id=1, method=method, seed=seed,
                               **kwargs)
    np.testing.assert_array_equal(again.per_input, first.per_input)


def test_a_head_that_scores_all_and_none_alike_but_reads_single_concepts_is_explained():
    """``y = (z_0 - z_1)^2`` on pooled codes: removing every concept and removing none give the
    same score when z_0 = z_1, yet each concept alone moves it. The sensitivity check refused
    such a head as one the activations "do not reach"; it now tries single concepts first."""
    k, channels = 2, 6
    components = torch.eye(k, channels)  # exact projections: "all" and "none" tie bit for bit
    codes = torch.ones(5, k, 2, 2)
    activations = torch.einsum("nkhw,kc->nchw", codes, components)

    def head(x):
        z = torch.einsum("nchw,kc->nk", x, components) / 4
        return torch.stack([(z[:, 0] - z[:, 1]) ** 2, z.sum(1)], dim=1)

    result = concept_importance(head, activations, OrthoBank(components), class_id=0,
                                method="occlusion", progress=False)
    # removing either concept alone raises y from 0 to 1: occlusion's importance is -1 each
    np.testing.assert_allclose(result.importances, [-1.0, -1.0], atol=1e-6)
