"""Fixtures of the map tests."""
import pytest
import torch
from _shared import small_cnn

from conceptkit.concepts import ICE


@pytest.fixture(scope="module")
def cnn():
    """A small CNN in eval mode, four 16 px images and ICE's 3 concepts at `block2`."""
    model = small_cnn().eval()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    bank = ICE(3, seed=0, progress=False).fit(model, "block2", images)
    return model, images, bank
