"""TCAV at a layer followed only by pooling and an affine head is degenerate: the class logit's
gradient is the head's weight row for every input, so every directional derivative of a CAV has
one sign and scores are 0 or 1. With the sign-count statistic (CLASSIC_TCAV) conceptkit warns and
says which layer helps; the default statistic (magnitudes) does not degenerate and does not warn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

from conceptkit.extraction import ActivationExtractor, split_model
from conceptkit.importance import CLASSIC_TCAV, tcav


def activations(model, layer, images):
    return ActivationExtractor(model, layer, progress=False)(images)


def run(layer: str, **protocol):
    model = two_block_cnn()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 32, 32, generator=g)
    dark = torch.rand(10, 3, 32, 32, generator=g) * 0.3  # a "dark" concept
    pool = torch.rand(60, 3, 32, 32, generator=g)
    _, h = split_model(model, layer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tcav(h, activations(model, layer, images),
                      {"dark": activations(model, layer, dark)},
                      activations(model, layer, pool), class_id=1, n_runs=10, seed=0,
                      progress=False, **protocol)
    return result, [w for w in caught if "degenerate TCAV" in str(w.message)]


def test_pooling_and_affine_head_warns_and_names_the_fix():
    result, caught = run("block2", **CLASSIC_TCAV)  # block2 -> global average pooling -> Linear
    assert np.isin(result.scores, (0.0, 1.0)).all()
    assert np.isin(result.random_scores, (0.0, 1.0)).all()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "every TCAV score is 0 or 1" in message and "Use an earlier layer" in message
    assert result.notes and "note: degenerate TCAV" in result.summary()
    assert result.to_dict()["notes"] == list(result.notes)


def test_the_default_statistic_does_not_degenerate_there():
    result, caught = run("block2", baseline="random")  # magnitudes, one concept set
    assert np.isin(result.scores, (0.0, 1.0)).all()      # the sign counts still are 0 or 1 ...
    assert not caught                                    # ... but magnitudes are tested: no
    assert not [n for n in result.notes if "degenerate" in n]  # degenerate note
    assert len(np.unique(np.round(result.magnitudes, 12))) > 2


class ProductHead(torch.nn.Module):
    """A non-linear rest of the network: logit = (pooled . u) * (pooled . w), whose gradient
    u (pooled . w) + w (pooled . u) turns with the input."""

    def __init__(self, channels: int):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.u = torch.randn(channels, generator=g)
        self.w = torch.randn(channels, generator=g)

    def forward(self, maps):
        pooled = maps.mean(dim=(2, 3))
        logit = (pooled @ self.u) * (pooled @ self.w)
        return torch.stack([-logit, logit], dim=1)


def test_a_non_linear_rest_does_not_warn():
    rng = np.random.default_rng(0)
    acts = torch.from_numpy(rng.normal(size=(40, 8, 4, 4)).astype(np.float32))
    concept = torch.from_numpy(rng.normal(1.0, 1.0, size=(15, 8, 4, 4)).astype(np.float32))
    pool = torch.from_numpy(rng.normal(size=(60, 8, 4, 4)).astype(np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tcav(ProductHead(8), acts, {"shifted": concept}, pool, class_id=1, n_runs=10,
                      seed=0, progress=False, **CLASSIC_TCAV)
    assert not [w for w in caught if "degenerate TCAV" in str(w.message)]
    assert not [n for n in result.notes if "degenerate" in n]
    assert not np.isin(np.concatenate([result.scores.ravel(), result.random_scores]),
                       (0.0, 1.0)).all()


@pytest.mark.parametrize("n_inputs", [1])
def test_a_single_input_is_not_called_degenerate(n_inputs):
    from conceptkit.importance._tcav import same_sign_notes

    assert same_sign_notes(np.ones((2, 10)), np.zeros(10), n_inputs) == []
    assert same_sign_notes(np.ones((2, 10)), np.zeros(10), 2) != []
