"""ConceptManager takes a model bundle as ConceptExplainer does: its layer and class names."""

from __future__ import annotations

import pytest

import conceptkit
from conceptkit.datasets import make_concept_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = {"n_concepts": 3, "seed": 0, "progress": False, "importance": "gradient_input"}


@pytest.fixture(scope="module")
def data():
    d = make_concept_dataset(4, seed=0)
    keep = d.labels < 2  # two classes, four images each
    return d.images[keep], d.labels[keep]


def test_a_bundle_gives_the_manager_its_layer_and_class_names(data):
    bundle = conceptkit.models.load("reference")
    manager = conceptkit.ConceptManager(bundle, **OPTIONS)  # no layer: the bundle's
    assert manager.explainer.layer == bundle.layer == "block4"
    fitted = manager.fit(*data)
    assert fitted is manager.classes_  # fit returns the dict it keeps (docs/naming.md)
    assert {c: cc.class_name for c, cc in fitted.items()} == {0: bundle.class_names[0],
                                                              1: bundle.class_names[1]}
    explained = conceptkit.ConceptExplainer(bundle, **OPTIONS).fit(data[0][data[1] == 1], 1)
    assert fitted[1].class_name == explained.class_name


def test_class_names_given_to_the_manager_win_over_the_bundles(data):
    bundle = conceptkit.models.load("reference")
    manager = conceptkit.ConceptManager(bundle, "block4", class_names={1: "mine"}, **OPTIONS)
    fitted = manager.fit(*data)
    assert fitted[1].class_name == "mine" and fitted[0].class_name == "class 0"


def test_a_plain_model_without_a_layer_gets_the_list_of_likely_layers():
    from conceptkit.datasets import reference_model

    with pytest.raises(ValueError, match="`layer` is required.*block4"):
        conceptkit.ConceptManager(reference_model(), n_concepts=3, progress=False)
