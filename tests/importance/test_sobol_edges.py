"""Sobol indices at the edges of floating point: an output constant up to the rounding of the
precision it was computed in has indices 0, and outputs around 1e160 give the indices of the
same function around 1 (the squares are taken after standardising)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptkit import importance


def _linear(x):
    return x[:, 0] + 0.3 * x[:, 1]


def test_an_output_constant_up_to_float32_rounding_has_zero_indices():
    def rounding(x):  # 1000 plus one float32 ulp for half of the points
        return (np.float32(1000) + np.float32(6.103515625e-05) * (x[:, 0] > 0.5)).astype(np.float32)

    assert len(np.unique(rounding(np.random.default_rng(0).random((64, 3))))) == 2
    with pytest.warns(RuntimeWarning, match="constant"):
        np.testing.assert_array_equal(importance.sobol_indices(rounding, 3, 64, seed=0), 0.0)
    # the same values, computed in float64, vary by 6e-5 at 1000: a real (tiny) effect
    exact = importance.sobol_indices(lambda x: rounding(x).astype(np.float64) * 1.0, 3, 64, seed=0)
    assert exact[0] > 0.9
    # a torch float32 output is judged in float32 too
    with pytest.warns(RuntimeWarning, match="constant"):
        torch_out = importance.sobol_indices(lambda x: torch.from_numpy(rounding(x)), 3, 64,
                                             seed=0)
    np.testing.assert_array_equal(torch_out, 0.0)


@pytest.mark.parametrize("scale", [1e160, 1e300, 1e-300])
def test_huge_and_tiny_outputs_give_the_indices_of_the_function(scale):
    reference = importance.sobol_indices(_linear, 3, 128, seed=0)
    scaled = importance.sobol_indices(lambda x: scale * _linear(x), 3, 128, seed=0)
    np.testing.assert_allclose(scaled, reference, rtol=1e-12, atol=1e-15)
    assert reference[0] > 0.8 and reference[2] == 0.0
    with_ci = importance.sobol_indices_with_ci(lambda x: scale * _linear(x), 3, 128, seed=0,
                                               confidence=0.9, n_bootstrap=20)
    assert np.isfinite(with_ci.ci_low).all() and np.isfinite(with_ci.ci_high).all()
    assert with_ci.ci_low[0] > 0.5


@pytest.mark.parametrize("sampler", ["sobol", "halton", "random"])
def test_a_design_too_large_for_memory_names_n_designs(sampler):
    with pytest.raises(MemoryError, match="lower `n_designs`"):
        importance.sobol_indices(_linear, 3, 2**40, sampler=sampler, seed=0)
