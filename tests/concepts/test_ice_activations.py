"""ICE on feature maps already computed: the same bank as from the images, settings honoured."""

import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit.concepts import ICE
from conceptkit.extraction import ActivationExtractor


def _images(n=6):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_fit_activations_equals_fit_on_images():
    model, images = two_block_cnn(), _images()
    ice = ICE(3, seed=0, progress=False)
    from_images = ice.fit(model, "block2", images)
    maps = ActivationExtractor(model, "block2", progress=False)(images)
    from_maps = ice.fit_activations(maps, "block2", image_size=(16, 16))
    torch.testing.assert_close(from_maps.components, from_images.components)
    assert (from_maps.provenance.boxes == from_images.provenance.boxes).all()


def test_pipeline_ice_honours_keep_activations():
    model, images = two_block_cnn(), _images()
    kept = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, method="ice", seed=0,
                                       progress=False).discover(images)
    dropped = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, method="ice", seed=0,
                                          progress=False,
                                          method_kwargs={"keep_activations": False}
                                          ).discover(images)
    assert kept.activations is not None and dropped.activations is None
    torch.testing.assert_close(dropped.components, kept.components)


def test_discover_checks_the_activations_it_is_given():
    """``discover(images, activations=...)`` ignored them for CRAFT and ACE, and took ICE
    activations of other images (another count, another layer's shape) without a word."""
    import pytest

    model, images = two_block_cnn(), _images()
    maps = ActivationExtractor(model, "block2", progress=False)(images)
    ice = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, method="ice", seed=0,
                                      progress=False)
    torch.testing.assert_close(ice.discover(images, activations=maps).components,
                               ice.discover(images).components)
    for wrong in (maps[:2], maps[:, :2], maps.mean((2, 3))):
        with pytest.raises(ValueError, match="feature maps of `images`"):
            ice.discover(images, activations=wrong)
    craft = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, method="craft", seed=0,
                                        progress=False)
    with pytest.raises(ValueError, match="method='ice' only"):
        craft.discover(images, activations=maps)
