"""Inputs and models at the edges of what the pipeline accepts: images too small for the model,
an in-place operation right after the cut, models returning a dict or a tuple, a model torch.fx
cannot trace, and data-less (meta) tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import conceptkit
from conceptkit import concepts, importance
from conceptkit.extraction import Provenance, select_output, split_model

IMAGES = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _features(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
                         nn.Conv2d(6, 6, 3), nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 3)).eval()


def _explain(model, layer, **kwargs):
    return conceptkit.ConceptExplainer(model, layer, n_concepts=2, method="ice", seed=0,
                                       progress=False, **kwargs).fit(IMAGES, 1)


@pytest.mark.parametrize("side", [1, 3])
def test_images_too_small_for_the_model_name_the_minimum(side):
    # conv 3x3 (no padding) after a 2x pool: the model needs 6x6 images
    with pytest.raises(ValueError, match=rf"`images` of {side}x{side} pixels .* at least 6x6 pixels"):
        conceptkit.ConceptExplainer(_features(), "1", n_concepts=2, progress=False).fit(
            torch.rand(3, 3, side, side), 0)


def test_a_model_of_one_fixed_size_is_not_said_to_want_larger_images():
    """A ViT with a fixed position embedding refuses larger images as well as smaller ones: the
    error does not call 48 px images "too small"; scale-matched maps (which enlarge the images)
    say that the enlarged size is what the model refuses, and which kinds work."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3).eval()
    with pytest.raises(ValueError, match=r"`images` of 48x48 pixels do not fit .* No square size "
                                         r"from 48 to 4096 pixels runs either: the model may "
                                         r"take one fixed input size"):
        conceptkit.ConceptExplainer(vit, "blocks.0", n_concepts=2, progress=False).fit(
            torch.rand(3, 3, 48, 48), 0)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cc = conceptkit.ConceptExplainer(vit, "blocks.0", n_concepts=2, method="craft", patch_size=16,
                                     tokens="patches", seed=0,
                                     progress=False).fit(images, 0)
    message = (r"scale-matched maps run the model on the images enlarged 2 times \(32x32 -> "
               r"64x64 pixels\), and this model does not take that size \(AssertionError: .*\)\. "
               r"Use kind='coefficient' or kind='pixel'")
    for new_images in (None, images[:2].clone()):  # the fitted images' cached path, and new ones
        with pytest.raises(ValueError, match=message):
            cc.concept_maps(new_images, kind="scale_matched")
    assert cc.concept_maps(kind="coefficient").shape == (4, 2, 32, 32)


def test_scale_matched_maps_of_an_explanation_without_crops_say_why():
    # ICE was fitted on no crops: a bare KeyError 'patch_size' before
    cc = _explain(_features(), "1")
    for images in (None, IMAGES[:2].clone()):
        with pytest.raises(ValueError, match=r"kind='scale_matched' enlarges the images by image "
                                             r"side / crop side.*method='ice'.*kind='pixel'"):
            cc.concept_maps(images, kind="scale_matched")


def test_an_inplace_operation_after_the_cut_leaves_the_activations_alone():
    model = _features(inplace=True)
    g, h = split_model(model, "0")  # h starts with ReLU(inplace=True)
    acts = g(IMAGES)
    before = acts.clone()
    assert (before < 0).any()
    torch.testing.assert_close(h(acts), model(IMAGES))
    torch.testing.assert_close(acts, before, rtol=0, atol=0)
    # the pipeline at that layer gives what the same model without in-place ReLUs gives
    kwargs = {"factorizer": concepts.SemiNMF(2, random_state=0)}
    got = _explain(model, "0", **kwargs)
    expected = _explain(_features(inplace=False), "0", **kwargs)
    np.testing.assert_array_equal(got.importances, expected.importances)
    np.testing.assert_array_equal(got.bank.components.numpy(), expected.bank.components.numpy())


class _DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _features()

    def forward(self, x):
        logits = self.net(x)
        return {"aux": logits.sum(1), "logits": logits}


class _TupleModel(_DictModel):
    def forward(self, x):
        logits = self.net(x)
        return logits, logits.sum(1)


@pytest.mark.parametrize("model,key", [(_DictModel, "logits"), (_TupleModel, 0)])
def test_models_returning_several_outputs_need_and_accept_an_output_selector(model, key):
    with pytest.raises(ValueError, match=rf"`output`: .* with output={key!r}"):
        _explain(model(), "net.4")
    got = _explain(model(), "net.4", output=key)
    expected = _explain(_features(), "4")
    np.testing.assert_array_equal(got.importances, expected.importances)
    with pytest.raises(ValueError, match="`output` 'nope' is not"):
        _explain(model(), "net.4", output="nope")
    # the low-level route: the error of concept_importance names the selector too
    _, h = split_model(model(), "net.4")
    acts = conceptkit.extraction.extract(model(), "net.4", IMAGES, progress=False)
    bank = expected.bank
    with pytest.raises(ValueError, match="`h` .*select_output"):
        importance.concept_importance(h, acts, bank, 1, n_designs=4, progress=False)
    selected = importance.concept_importance(select_output(h, key), acts, bank, 1, n_designs=4,
                                             seed=0, progress=False)
    assert selected.importances.shape == (2,)


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, the replay split is used."""

    def __init__(self):
        super().__init__()
        self.net = _features()

    def forward(self, x):
        if float(x.abs().sum()) >= 0:  # always true, but fx cannot know
            x = self.net[:5](x)
        return self.net[5:](x)


def test_an_untraceable_model_is_explained_through_the_replay_split():
    got = _explain(_Untraceable(), "net.4")
    expected = _explain(_features(), "4")
    np.testing.assert_allclose(got.importances, expected.importances, rtol=1e-5, atol=1e-7)


def test_meta_tensors_are_refused_by_name():
    rows = np.abs(np.random.default_rng(0).normal(size=(20, 6)))
    provenance = Provenance("image", np.arange(20), np.tile([0, 0, 4, 4], (20, 1)), (4, 4))
    bank = concepts.bank_from_activations(concepts.NMF(2, random_state=0), rows, provenance)
    meta = torch.empty(4, 6, device="meta")
    for call in (lambda: bank.encode(meta), lambda: bank.encode(torch.empty(2, 6, 3, 3, device="meta")),
                 lambda: importance.concept_importance(nn.Linear(6, 3), meta, bank, 0, progress=False),
                 lambda: bank.factorizer.transform(meta)):
        with pytest.raises(ValueError, match=r"`(activations|A)` is on the 'meta' device"):
            call()


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError),
                                         ("0", TypeError)])
def test_a_seed_numpy_cannot_take_is_refused_when_the_explainer_is_built(seed, error):
    from conceptkit.datasets import reference_model

    with pytest.raises(error, match="`seed`"):
        conceptkit.ConceptExplainer(reference_model(), "block4", seed=seed)
    assert conceptkit.ConceptExplainer(reference_model(), "block4", seed=2**32 - 1).seed == 2**32 - 1
