"""A call repeats from what it records, and fails the same way whatever ran before it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import conceptkit
from conceptkit.datasets import load_world, make_concept_dataset, reference_model
from conceptkit.extraction import ImageSizeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_seed_none_draws_one_seed_for_everything_and_records_it():
    data = make_concept_dataset(n_per_class=6, seed=0)
    images = data.images[data.labels == 2][:6]
    model = reference_model()

    def fit(seed):
        return conceptkit.ConceptExplainer(model, "block4", n_concepts=3, seed=seed,
                                           importance="sobol", n_designs=4,
                                           progress=False).fit(images, 2)

    first = fit(None)
    seed = first.params["seed"]
    assert isinstance(seed, int)
    assert first.bank.params["seed"] == seed == first.importance.params["seed"]
    again = fit(seed)
    torch.testing.assert_close(again.components, first.components, rtol=0, atol=0)
    np.testing.assert_array_equal(again.importances, first.importances)


def test_images_too_small_are_refused_alike_after_an_earlier_fit():
    world = load_world("shapes")
    vit = world.model(arch="vit")
    data = world.sample(n_per_class=4, seed=0)
    big = data.images[data.labels == 1][:4]
    small = F.interpolate(big, size=(32, 32), mode="bilinear", align_corners=False)
    explainer = conceptkit.ConceptExplainer(vit, "blocks.2", n_concepts=3, seed=0, progress=False)
    explainer.fit(big, 1)
    with pytest.raises(ImageSizeError, match="too small"):
        explainer.fit(small, 1)  # was a raw AssertionError from inside the model


def test_channels_last_and_grey_images_get_the_fix_in_the_error():
    images = make_concept_dataset(n_per_class=2, seed=0).images[:4]
    explainer = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=2, seed=0,
                                            progress=False)
    with pytest.raises(ValueError, match=r"channels-last.*images\.permute\(0, 3, 1, 2\)"):
        explainer.fit(images.permute(0, 2, 3, 1).contiguous(), 0)
    with pytest.raises(ValueError, match=r"one channel.*images\.expand\(-1, 3, -1, -1\)"):
        explainer.fit(images[:, :1], 0)
