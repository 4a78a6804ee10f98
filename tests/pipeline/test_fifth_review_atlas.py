"""Found by the fifth (newcomer) review: ConceptAtlas takes a bundle's default layer, as
ConceptExplainer and ConceptManager do; the atlas, the manager and the atlas's results print as
short readable lines; a mistyped manager option names the manager's options."""

from __future__ import annotations

import re

import pytest

import conceptkit
from conceptkit import ConceptAtlas, ConceptManager
from conceptkit.datasets import make_concept_dataset, reference_model

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    return make_concept_dataset(n_per_class=4, seed=0)


@pytest.fixture(scope="module")
def atlas(data):
    atlas = ConceptAtlas(conceptkit.models.load("reference"), n_concepts=3, seed=0,
                         progress=False, max_inputs_per_class=4)
    return atlas.fit(data.images, data.labels)


def _short(text: str) -> None:
    assert "\n" not in text and len(text) < 300
    assert "array([" not in text and "tensor([" not in text and " object at 0x" not in text


def test_the_atlas_takes_the_bundle_default_layer(atlas):
    # before: "ConceptAtlas.__init__() missing 1 required positional argument: 'layer'"
    assert atlas.layer == "block4" == conceptkit.models.load("reference").layer
    with pytest.raises(ValueError, match=r"`layer` is required for ReferenceCNN"):
        ConceptAtlas(reference_model(), n_concepts=3)


def test_atlas_reprs(atlas, data, tmp_path):
    fresh = ConceptAtlas(reference_model(), "block3", n_concepts=5, progress=False)
    assert repr(fresh) == ("ConceptAtlas(ReferenceCNN at 'block3', n_concepts=5, method='ice', "
                           "importance='auto'; not fitted)")
    assert repr(atlas) == ("ConceptAtlas(reference CNN at 'block4', n_concepts=3, method='ice', "
                           "importance='pixel_ablation'; fitted on 24 images of 6 classes)")
    loaded = conceptkit.load(atlas.save(tmp_path / "atlas.safetensors"))
    assert repr(loaded).startswith("ConceptAtlas('block4', loaded without its model, "
                                   "n_concepts=3")
    importance = atlas.importance
    text = repr(importance)
    _short(text)
    n_important = int(importance.important().sum())
    assert text.startswith(f"AtlasImportance(method='pixel_ablation', 6 classes x 3 concepts, "
                           f"classes=[0, 1, 2, 3, 4, 5], {n_important} important")
    found = atlas.top_images(1, 3)
    text = repr(found)
    _short(text)
    assert text.startswith(f"ConceptSearch(concept 1, 3 images, image_ids="
                           f"[{', '.join(str(int(i)) for i in found.image_ids)}]")
    assert "images=tensor(3, 3, 64, 64) float32" in text
    a, b = atlas.most_confused_pairs(1)[0][:2]
    why = atlas.explain_confusion(a, b)
    text = repr(why)
    _short(text)
    top = why.concepts[0]
    assert text.startswith(f"ConfusionExplanation(class {a} -> class {b}, "
                           f"{len(why.image_ids)} images ({why.n_confused} classified as {b})")
    assert f"concept {top} {why.contributions[top]:+.3g}" in text


def test_manager_repr_and_mistyped_options(data):
    manager = ConceptManager(reference_model(), "block4", n_concepts=3, seed=0, progress=False,
                             importance="gradient_input")
    assert repr(manager) == ("ConceptManager(ReferenceCNN at 'block4', n_concepts=3, "
                             "method='ice', importance='gradient_input', min_images=2; "
                             "not fitted)")
    manager.fit(data.images[:12], data.labels[:12])
    assert repr(manager).endswith("; fitted: 3 classes [0, 1, 2])")
    # before: "ConceptExplainer.__init__() got an unexpected keyword argument 'n_concept'"
    with pytest.raises(TypeError, match=re.escape(
            "ConceptManager got unknown argument(s) ['n_concept'] (did you mean `n_concepts`?); "
            "it takes model, layer, class_names, min_images and the ConceptExplainer options "
            "n_concepts, method")):
        ConceptManager(reference_model(), "block4", n_concept=3)
