"""Wrapped, scripted and oddly built models: DataParallel, DistributedDataParallel-style and
torch.compile wrappers are looked through (the results equal the bare model's), TorchScript is
refused with an error that says what to pass, a module used at two places is named as such, and
images too small for the model name the smallest size that runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import conceptkit
from conceptkit.extraction import ActivationExtractor, layer_names, split_model
from conceptkit.extraction._layers import get_layer


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("block1", nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
    model.add_module("block2", nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(8, 3))
    return model.eval()


IMAGES = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _explain(model, layer):
    return conceptkit.ConceptExplainer(model, layer, n_concepts=2, method="ice", seed=0,
                                       progress=False).fit(IMAGES, 1)


WRAPPERS = {"DataParallel": nn.DataParallel, "compile": torch.compile}


@pytest.mark.parametrize("wrap", sorted(WRAPPERS))
@pytest.mark.parametrize("layer", ["block2", "prefixed"])
def test_wrapped_models_are_explained_as_the_model_they_wrap(wrap, layer, monkeypatch):
    model = _model()
    wrapped = WRAPPERS[wrap](model)
    if wrap == "compile":  # the wrapped model runs as it is: nothing is ever compiled

        def never(*args, **kwargs):
            raise AssertionError("the torch.compile wrapper was called")

        monkeypatch.setattr(type(wrapped), "forward", never)
    prefix = "module." if wrap == "DataParallel" else "_orig_mod."
    name = prefix + "block2" if layer == "prefixed" else "block2"
    assert get_layer(wrapped, name) == ("block2", model.block2)
    assert layer_names(wrapped) == layer_names(model)
    expected, got = _explain(model, "block2"), _explain(wrapped, name)
    np.testing.assert_array_equal(got.importances, expected.importances)
    np.testing.assert_array_equal(got.bank.components.numpy(), expected.bank.components.numpy())
    g, h = split_model(wrapped, name, example_input=IMAGES)
    torch.testing.assert_close(h(g(IMAGES)), model(IMAGES))


def test_torchscript_models_are_refused_with_the_fix():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        scripted = torch.jit.script(_model())
        traced = torch.jit.trace(_model(), IMAGES[:1])
    for model in (scripted, traced):
        for call in (lambda m: split_model(m, "block2"),
                     lambda m: ActivationExtractor(m, "block2", progress=False),
                     lambda m: conceptkit.ConceptExplainer(m, "block2", progress=False)):
            with pytest.raises(TypeError, match="`model` is a TorchScript module.*load_state_dict"):
                call(model)


def test_a_module_used_twice_is_named_as_such():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    for layer in ("1", "3", relu):
        with pytest.raises(ValueError, match=r"one module object used twice .*\['1', '3'\]"):
            split_model(model, layer)
    with pytest.raises(ValueError, match="used twice"):
        ActivationExtractor(model, "3", progress=False)
    g, h = split_model(model, "2")  # the other layers cut as usual
    torch.testing.assert_close(h(g(IMAGES)), model(IMAGES))


def test_images_too_small_name_the_smallest_size():
    model = _model()
    with pytest.raises(ValueError, match=r"`inputs` of 1x1 pixels .* at least 2x2 pixels"):
        ActivationExtractor(model, "block2", progress=False)(torch.rand(2, 3, 1, 1))
    # a 3x3 convolution without padding after two 2x pools needs 12x12 images in total
    deep = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"`example_input` of 7x7 pixels .* at least 12x12 pixels"):
        split_model(deep, "1", example_input=torch.rand(2, 3, 7, 7))
