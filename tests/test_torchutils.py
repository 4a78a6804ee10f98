"""The cache keys of a model's weights: every dtype a model may hold, and NaN weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conceptkit._torchutils import same_state, weights_state

KINDS = {
    "complex": lambda: torch.tensor([1 + 1j, 2 - 1j]),
    "sparse": lambda: torch.eye(3).to_sparse(),
    "sparse_csr": lambda: torch.eye(3).to_sparse_csr(),
    "quantized": lambda: torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.qint8),
    "bool": lambda: torch.tensor([True, False]),
    "float8": lambda: torch.ones(3).to(torch.float8_e4m3fn),
    "meta": lambda: torch.empty(3, device="meta"),
    "nan": lambda: torch.tensor([float("nan"), 1.0, float("inf")]),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_weights_state_takes_every_kind_of_buffer_and_equals_itself(kind):
    module = nn.Module()
    module.register_buffer("b", KINDS[kind]())
    state = weights_state(module)  # was a RuntimeError for complex, float8 and quantized
    assert same_state(state, weights_state(module))  # NaN weights no longer defeat the cache


def test_weights_state_sees_an_edit_through_data():
    layer = nn.Linear(3, 2)
    before = weights_state(layer)
    layer.weight.data.mul_(-1.0)  # bypasses the version counter
    assert not same_state(before, weights_state(layer))
    complex_layer = nn.Module()
    complex_layer.register_buffer("b", torch.tensor([1 + 1j, 2 - 1j]))
    before = weights_state(complex_layer)
    complex_layer.b.data.mul_(2.0)
    assert not same_state(before, weights_state(complex_layer))


def test_values_state_sees_edits_the_version_counter_misses():
    from conceptkit._torchutils import values_state

    tensor = torch.rand(3, 4, 5)
    state = values_state(tensor)
    assert values_state(tensor.clone()) == state
    tensor.numpy()[0, 0, 0] += 1.0  # through numpy: _version stays
    assert values_state(tensor) != state
    state = values_state(tensor)
    tensor.data.mul_(0.5)
    assert values_state(tensor) != state
    view = tensor.transpose(0, 2)  # not contiguous: a float64 checksum
    state = values_state(view)
    view.data.add_(1.0)
    assert values_state(view) != state
    assert values_state(None) is None
