"""Fixtures of the command-line tests."""

import numpy as np
import pytest
from PIL import Image

from conceptkit.datasets import make_concept_dataset


@pytest.fixture
def images(tmp_path):
    """A folder of three random 40 x 40 PNG images."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def shape_images(tmp_path_factory):
    """Six 64 px images of class 2 of the ground-truth dataset, ``photo_00.png`` ... ``photo_05.png``."""
    data = make_concept_dataset(6, seed=0)
    folder = tmp_path_factory.mktemp("shapes")
    for i, image in enumerate(data.images[data.labels == 2]):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i:02d}.png")
    return folder
