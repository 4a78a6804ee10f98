"""Fixtures of the command-line tests."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def images(tmp_path):
    """A folder of three random 40 x 40 PNG images."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder
