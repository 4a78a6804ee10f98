"""The atlas and the manager at their edges: CRAFT on images, a loaded atlas with its model, a
refit that fails, classes left out said aloud, arguments that do not apply refused."""

from __future__ import annotations

import numpy as np
import pytest

import conceptkit
from conceptkit import ConceptAtlas, ConceptManager
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.extraction import ActivationExtractor, write_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    world = make_concept_dataset(4, seed=5, split="test")
    return world.images, world.labels.numpy()


def _atlas(**kwargs):
    kwargs.setdefault("importance", "closed_form")
    return ConceptAtlas(reference_model(), "block4", 4, seed=0, progress=False, **kwargs)


def test_a_craft_atlas_fits_on_images(data):
    """The atlas handed its activations to discover(), which CRAFT never reads (refused now)."""
    images, labels = data
    atlas = _atlas(method="craft").fit(images, labels)
    assert atlas.importance.shape == (len(np.unique(labels)), 4)


def test_a_loaded_atlas_with_its_model_reports_saves_and_explains_new_images(data, tmp_path):
    images, labels = data
    atlas = _atlas().fit(images, labels)
    path = atlas.save(tmp_path / "a.safetensors", n_exemplars=3)
    loaded = ConceptAtlas.load(path, model=reference_model())
    assert loaded.report(tmp_path / "report").exists()        # failed: "holds no activations"
    again = conceptkit.load(loaded.save(tmp_path / "b.safetensors", n_exemplars=2))
    np.testing.assert_array_equal(again.importance.values, atlas.importance.values)
    assert again.saved_exemplars_[0][0].shape[0] == 2           # n_exemplars was ignored
    a, b, _ = atlas.most_confused_pairs(1)[0]
    new = images[labels == a]
    assert loaded.explain_confusion(a, b, images=new, min_images=2).per_image.shape[0] >= 2
    with pytest.raises(RuntimeError, match="pass new `images`"):
        loaded.explain_confusion(a, b)
    with pytest.raises(RuntimeError, match="loaded without its model"):
        conceptkit.load(path).fit(images, labels)


def test_a_refit_that_fails_leaves_the_atlas_as_it_was(data, tmp_path):
    images, labels = data
    atlas = _atlas().fit(images, labels)
    before = atlas.importance.values.copy()
    model = reference_model()
    extractor = ActivationExtractor(model, "block4", batch_size=32, progress=False)
    store = write_store(extractor, images, tmp_path / "store", chunk_size=8, layout="maps",
                        progress=False)
    with pytest.raises(ValueError, match="labels"):
        atlas.fit(store, np.full(len(images), 50))  # a class the model does not have
    np.testing.assert_array_equal(atlas.importance.values, before)
    assert atlas.data_.images is not None
    with pytest.raises(ValueError, match="store_options"):
        atlas.fit(images, labels, store_options={"max_iter": 3})
    with pytest.raises(ValueError, match="method='ice'"):
        _atlas(method="craft").fit(store, labels)


def test_labels_past_the_models_outputs_are_refused_before_the_fit(data):
    images, labels = data
    wrong = labels.copy()
    wrong[0] = 50
    with pytest.raises(ValueError, match="class 50, but the model has 6 outputs"):
        _atlas().fit(images, wrong)
    lonely = labels.copy()
    same = np.flatnonzero(labels == labels[0])
    lonely[same[1:]] = labels[labels != labels[0]][0]  # class labels[0] keeps one image
    with pytest.warns(UserWarning, match=rf"class\(es\) \[{labels[0]}\]: one image each"):
        _atlas().fit(images, lonely)


def test_the_manager_replaces_its_classes_and_says_what_it_left_out(data):
    images, labels = data
    manager = ConceptManager(reference_model(), "block4", n_concepts=3, seed=0, progress=False,
                             importance="sobol", n_designs=8)
    first = labels == labels[0]
    manager.fit(images[first], labels[first])
    other = np.isin(labels, np.unique(labels)[1:3])
    sub_labels = labels[other].copy()
    sub_labels[0] = 5  # one image of class 5: below min_images
    with pytest.warns(UserWarning, match=r"left out 1 class\(es\)"):
        fitted = manager.fit(images[other], sub_labels)
    # the first fit's class is gone: only this fit's classes (class 5 left out, and said)
    assert set(fitted) == set(sub_labels.tolist()) - {5}
    with pytest.raises(ValueError, match=r"`classes` \[99\] have no image"):
        manager.fit(images[other], labels[other], classes=[99])
    with pytest.raises(ValueError, match=">= 0"):
        manager.fit(images[other], -np.ones(int(other.sum()), dtype=int))
