"""TCAV on a class whose logit does not depend on the layer: the result must say so."""

import warnings

import numpy as np
import pytest
import torch

from conceptkit.importance import tcav

D = 6


def sets(seed):
    g = np.random.default_rng(seed)

    def draw(shift=0.0):
        return (g.normal(size=(20, D)) + shift).astype(np.float32)
    return draw(), {"a": draw(2.0), "b": draw(-1.0)}, [draw() for _ in range(10)]


def head(dead_class):
    torch.manual_seed(0)
    h = torch.nn.Sequential(torch.nn.Linear(D, 3), torch.nn.ReLU())
    with torch.no_grad():
        h[0].bias[dead_class] = -100.0  # a dead ReLU: that logit is 0 whatever the input
    return h


@pytest.mark.parametrize("statistic", ["magnitude", "sign_count"])
def test_a_zero_class_gradient_is_noted_and_warned(statistic):
    inputs, concepts, randoms = sets(0)
    with pytest.warns(UserWarning, match="gradient of class 0's logit at this layer is zero"):
        result = tcav(head(0), inputs, concepts, randoms, 0, seed=0, progress=False,
                      statistic=statistic)
    assert not result.magnitudes.any() and not result.scores.any()
    assert not result.significant.any()
    assert len(result.notes) == 1
    assert "zero for all 20 class inputs" in result.notes[0]
    assert "same sign" not in result.notes[0]  # not the sign-count note's explanation


def test_a_live_class_gets_no_zero_gradient_note():
    inputs, concepts, randoms = sets(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gradient of class")
        result = tcav(head(0), inputs, concepts, randoms, 1, seed=0, progress=False)
    assert result.magnitudes.any()
    assert not any("is zero for all" in note for note in result.notes)
