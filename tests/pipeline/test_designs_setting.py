"""`n_designs` counts Sobol designs: given with a method that draws none, it would be ignored,
so it is refused (or, where `importance="auto"` resolves to pixels only at fit, said aloud)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import conceptkit
from conceptkit import ConceptAtlas
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.pipeline import decompose_concept

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    world = make_concept_dataset(4, seed=5, split="test")
    return world.images, world.labels.numpy()


@pytest.mark.parametrize("importance", ["pixel_ablation", "gradient_input", "closed_form"])
def test_designs_with_a_method_that_draws_none_are_refused(importance):
    with pytest.raises(TypeError, match=rf"`n_designs`.*importance='{importance}' draws none"):
        conceptkit.ConceptExplainer(reference_model(), "block4", importance=importance,
                                    n_designs=8)


def test_designs_reach_sobol_and_default_to_32(data):
    images, labels = data
    rows = labels == labels[0]
    kwargs = dict(n_concepts=3, importance="sobol", seed=0, progress=False)
    given = conceptkit.ConceptExplainer(reference_model(), "block4", n_designs=8,
                                        **kwargs).fit(images[rows], int(labels[0]))
    default = conceptkit.ConceptExplainer(reference_model(), "block4",
                                          **kwargs).fit(images[rows], int(labels[0]))
    assert given.importance.params["n_designs"] == given.params["n_designs"] == 8
    assert default.importance.params["n_designs"] == default.params["n_designs"] == 32
    # different designs, different estimates: the setting was used
    assert not np.allclose(given.importances, default.importances)


def test_a_pixel_explanation_records_no_designs(data):
    images, labels = data
    rows = labels == labels[0]
    result = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=3, seed=0,
                                         progress=False).fit(images[rows], int(labels[0]))
    assert result.params["importance"] == "pixel_ablation"
    assert result.params["n_designs"] is None


def test_decompose_concept_refuses_designs_it_would_not_draw(data):
    images, labels = data
    rows = labels == labels[0]
    parent = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=3, seed=0,
                                         progress=False).fit(images[rows], int(labels[0]))
    with pytest.raises(TypeError, match=r"`n_designs`.*'gradient_input' draws none"):
        decompose_concept(reference_model(), parent.bank, images[rows], 0, "block2",
                          importance="gradient_input", n_designs=8, progress=False)


def test_an_atlas_refuses_designs_with_a_method_that_draws_none():
    with pytest.raises(TypeError, match=r"`n_designs`.*'closed_form' draws none"):
        ConceptAtlas(reference_model(), "block4", 4, importance="closed_form", n_designs=8)


def test_an_auto_atlas_on_images_says_its_designs_went_unused(data):
    images, labels = data
    with pytest.warns(UserWarning, match=r"`n_designs` went unused"):
        atlas = ConceptAtlas(reference_model(), "block4", 4, seed=0, progress=False,
                             n_designs=8, max_inputs_per_class=4).fit(images, labels)
    assert atlas.importance.method == "pixel_ablation"
    assert atlas.importance.params["n_designs"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ConceptAtlas(reference_model(), "block4", 4, seed=0, progress=False,
                     max_inputs_per_class=4).fit(images, labels)


def test_an_importance_changed_after_the_explainer_was_made_gets_its_designs(data):
    """Settings may change after the explainer is made: switching to Sobol used the stored
    None (a TypeError after the factorization), and switching away recorded designs not drawn."""
    images, labels = data
    rows = labels == labels[0]
    explainer = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=3, seed=0,
                                            progress=False)
    explainer.importance = "sobol"
    result = explainer.fit(images[rows], int(labels[0]))
    assert result.params["n_designs"] == result.importance.params["n_designs"] == 32
    explainer = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=3, seed=0,
                                            importance="sobol", n_designs=8, progress=False)
    explainer.importance = "gradient_input"
    assert explainer.fit(images[rows], int(labels[0])).params["n_designs"] is None
