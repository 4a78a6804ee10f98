"""MACO feature visualisation: it drives its concept's coefficient past the class's best crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptkit import ConceptExplainer
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.naming import visualize_concept
from conceptkit.naming._maco import (
    _random_crops,
    colour_matrix,
    crop_coefficients,
    magnitude_spectrum,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def explained():
    train = make_concept_dataset(30, seed=0, split="train")
    rows = train.class_indices(0)
    cc = ConceptExplainer(reference_model(), "block4", n_concepts=10, method="craft", seed=0,
                          progress=False, importance="gradient_input").fit(train.images[rows], 0)
    return cc


def test_visualisation_beats_the_best_crops(explained):
    cc = explained
    model = cc.model_at_layer.model
    concept = int(cc.ranking[0])
    crops, _ = cc.top_examples(concept, 10, image_size=64)
    with torch.no_grad():
        crop_codes = crop_coefficients(model, cc.bank, crops)[:, concept]
    best = float(cc.bank.codes[:, concept].max())
    # the bank's own codes, up to the resizing of the exemplars
    assert float(crop_codes.max()) == pytest.approx(best, rel=1e-2)
    vis = cc.visualize(concept, steps=64, seed=0, progress=False)
    assert cc.visualizations[concept] is vis
    assert vis.image.shape == (3, 112, 112) and vis.transparency.shape == (112, 112)
    # the visualisation seen as it was optimised: random crops of it, at the model's input size
    with torch.no_grad():
        seen = _random_crops(vis.image, 32, (0.5, 0.7), 64, torch.Generator().manual_seed(1))
        codes = crop_coefficients(model, cc.bank, seen)[:, concept]
    assert float(codes.mean()) > best, (float(codes.mean()), best)
    assert vis.objective[-16:].mean() > 1.5 * vis.objective[:4].mean()
    assert float(vis.transparency.max()) == 1.0 and float(vis.transparency.min()) >= 0.0
    masked = vis.masked()
    assert masked.shape == vis.image.shape and float(masked.max()) <= 1.0


def test_seeded_and_leaves_the_model_as_found(explained, snapshot):
    cc = explained
    model = cc.model_at_layer.model
    model.train()
    before = snapshot(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = cc.images[:6]
    a = visualize_concept(model, cc.bank, 1, images, steps=3, image_size=64, seed=3, progress=False)
    b = visualize_concept(model, cc.bank, 1, images, steps=3, image_size=64, seed=3, progress=False)
    c = visualize_concept(model, cc.bank, 1, images, steps=3, image_size=64, seed=4, progress=False)
    assert torch.equal(a.image, b.image) and torch.equal(a.transparency, b.transparency)
    assert not torch.equal(a.image, c.image)
    # lr= is the step's name, as in train_cbm and TopKSAE; learning_rate= is its old name
    with pytest.warns(DeprecationWarning, match=r"`learning_rate` of visualize_concept\(\)"):
        d = visualize_concept(model, cc.bank, 1, images, steps=3, image_size=64, seed=3,
                              progress=False, learning_rate=0.5)
    e = visualize_concept(model, cc.bank, 1, images, steps=3, image_size=64, seed=3,
                          progress=False, lr=0.5)
    assert torch.equal(d.image, e.image) and not torch.equal(a.image, e.image)
    assert e.params["lr"] == 0.5 and a.params["lr"] == 1.0
    assert snapshot(model) == before
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    model.eval()


def test_spectrum_and_colours_come_from_the_images():
    """The fixed magnitude is the images' own mean spectrum; the colour matrix recorrelates the
    decorrelated channels back to the images' colour covariance (up to its scale)."""
    rng = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 32, 32, generator=rng)
    images[:, 1] = 0.5 * images[:, 0] + 0.5 * images[:, 1]       # correlated colours
    colours = colour_matrix(images)
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    cov = torch.cov(pixels)
    rebuilt = colours.double() @ colours.double().T
    np.testing.assert_allclose((rebuilt / rebuilt.max()).numpy(), (cov / cov.max()).numpy(),
                               atol=1e-5)
    magnitude = magnitude_spectrum(images, 32, torch.eye(3))
    centred = images - images.mean(dim=(0, 2, 3), keepdim=True)
    expected = torch.fft.rfft2(centred).abs().mean(0)
    torch.testing.assert_close(magnitude, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"concept": 10}, "concept"),
    ({"crop_fraction": (0.7, 0.5)}, "crop_fraction"),
    ({"steps": 0}, "steps"),
    ({"preprocess": "normalise"}, "preprocess"),
])
def test_bad_arguments_are_named(explained, kwargs, match):
    cc = explained
    args = {"concept": 0, "steps": 2, "image_size": 32}
    args.update(kwargs)
    concept = args.pop("concept")
    with pytest.raises((TypeError, ValueError), match=match):
        visualize_concept(cc.model_at_layer.model, cc.bank, concept, cc.images[:4], progress=False,
                          **args)
    with pytest.raises(TypeError, match="bank"):
        visualize_concept(cc.model_at_layer.model, "bank", 0, cc.images[:4])


def test_flat_images_are_refused_and_the_explanation_passes_input_size_on(explained):
    cc = explained
    flat = torch.full((2, 3, 32, 32), 0.5)
    with pytest.raises(ValueError, match="no variation"):  # a uniform grey picture before
        visualize_concept(cc.model_at_layer.model, cc.bank, 0, flat, steps=2, image_size=32,
                          progress=False)
    # the docstring passes extra keywords on: input_size was given twice before (TypeError)
    vis = cc.visualize(0, steps=2, image_size=32, input_size=48, progress=False)
    assert vis.params["input_size"] == 48


def test_signed_coefficients_of_a_top_k_autoencoder():
    """Kept concepts keep their code (the encoder's pre-activation); an inactive one gets its
    pre-activation minus the smallest code kept in its row: at most 0, with the encoder's
    gradient, so raising it is what brings the concept in."""
    from conceptkit.concepts import TopKSAE, bank_from_activations
    from conceptkit.extraction import Provenance
    from conceptkit.naming._maco import signed_coefficients

    rng = np.random.default_rng(0)
    A = rng.normal(size=(300, 8)).astype(np.float32)
    sae = TopKSAE(5, top_k=2, epochs=3, random_state=0).fit(A)
    bank = bank_from_activations(sae, A, Provenance("image", np.arange(300), np.zeros((300, 4)),
                                                    (8, 8)))
    x = torch.tensor(A[:6], requires_grad=True)
    signed = signed_coefficients(bank, x)
    codes = torch.as_tensor(bank.encode(A[:6]))
    pre = (x.detach() - torch.as_tensor(sae.bias_)) @ torch.as_tensor(sae.encoder_weight_).T \
        + torch.as_tensor(sae.encoder_bias_)
    on = codes > 0
    torch.testing.assert_close(signed[on].detach(), codes[on])
    smallest = torch.where(on, codes, torch.inf).amin(1, keepdim=True)
    expected_off = (pre - smallest).expand_as(pre)[~on]
    torch.testing.assert_close(signed[~on].detach(), expected_off)
    assert (signed[~on] <= 1e-6).all()
    row, col = map(int, torch.nonzero(~on)[0])
    grad = torch.autograd.grad(signed[row, col], x)[0][row]
    torch.testing.assert_close(grad, torch.as_tensor(sae.encoder_weight_[col]))
