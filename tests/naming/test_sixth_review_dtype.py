"""Found by the sixth review (fuzzing the public API): MACO and naming by classes run a float64
model (before: a torch dtype error deep inside the model), MACO runs under ``torch.no_grad()``
(before: "can't retain_grad on Tensor that has requires_grad=False"), and MACO refuses images of
0-255 values (before: accepted, their colour statistics skewed the visualisation silently).

A tiny CNN, CPU only.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit.naming import name_by_classes, visualize_concept

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

MACO = {"steps": 3, "image_size": 32, "seed": 0, "progress": False}


@pytest.fixture(scope="module")
def fitted():
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = two_block_cnn()
    cc = conceptkit.ConceptExplainer(model, "block2", 3, seed=0, progress=False,
                                     importance="gradient_input").fit(images, 0)
    return cc, model, copy.deepcopy(model).double(), images


# ---------------------------------------------------------------------------------------------
# Finding 1: a float64 model (before: "Input type (torch.FloatTensor) and weight type
# (torch.DoubleTensor) should be the same" in MACO, "mat1 and mat2 must have the same dtype" in
# name_by_classes)
# ---------------------------------------------------------------------------------------------

def test_maco_of_a_float64_model_is_that_of_the_float32_model(fitted):
    cc, model, model64, images = fitted
    single = visualize_concept(model, cc.bank, 0, images, **MACO)
    double = visualize_concept(model64, cc.bank, 0, images, **MACO)
    assert next(model64.parameters()).dtype == torch.float64  # left as found
    assert double.image.dtype == torch.float32 and double.image.shape == (3, 32, 32)
    # the same optimisation: the first step's objective agrees to float32 precision
    assert double.objective[0] == pytest.approx(single.objective[0], rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(double.objective, single.objective, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(double.image.numpy(), single.image.numpy(), atol=1e-3)


def test_name_by_classes_of_a_float64_model_is_that_of_the_float32_model(fitted):
    cc, model, model64, images = fitted
    single = name_by_classes(cc.bank, images, model=model, min_score=None)
    double = name_by_classes(cc.bank, images, model=model64, min_score=None)
    assert [e.name for e in double] == [e.name for e in single]
    np.testing.assert_allclose([e.score for e in double], [e.score for e in single],
                               rtol=1e-4, atol=1e-6)


def test_logit_gains_of_a_float64_head_keep_float64_logits():
    from conceptkit.naming._classes import logit_gains

    head = torch.nn.Linear(4, 2).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64))
        head.bias.zero_()
    acts = torch.ones(3, 4)
    codes = torch.full((3, 1), 1 + 1e-9, dtype=torch.float64)  # beyond float32's precision
    components = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    gains = logit_gains(head, acts, codes, components)
    # a concept's gain is its code times its direction through the head, in float64
    np.testing.assert_allclose(gains, [[1 + 1e-9, 0.0]], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Finding 2: MACO under torch.no_grad() (before: "can't retain_grad on Tensor that has
# requires_grad=False")
# ---------------------------------------------------------------------------------------------

def test_maco_under_no_grad_is_maco_outside_it(fitted):
    cc, model, _, images = fitted
    outside = visualize_concept(model, cc.bank, 0, images, **MACO)
    with torch.no_grad():
        inside = visualize_concept(model, cc.bank, 0, images, **MACO)
        assert not torch.is_grad_enabled()  # the caller's mode, restored
    np.testing.assert_array_equal(inside.objective, outside.objective)
    assert torch.equal(inside.image, outside.image)
    assert torch.equal(inside.transparency, outside.transparency)
    assert float(inside.transparency.max()) == 1.0  # the gradients did flow


def test_class_concepts_visualize_under_no_grad(fitted):
    cc, _, _, _ = fitted
    outside = visualize_concept(cc.model_at_layer.model, cc.bank, 1, cc.images, **MACO)
    with torch.no_grad():
        inside = cc.visualize(1, steps=3, image_size=32, seed=0, progress=False)
    np.testing.assert_array_equal(inside.objective, outside.objective)


# ---------------------------------------------------------------------------------------------
# Finding 3: 0-255 images (before: accepted; their colour covariance and spectrum 255 and
# 65025 times too large drove the visualisation silently)
# ---------------------------------------------------------------------------------------------

def test_maco_refuses_0_255_images(fitted):
    cc, model, _, images = fitted
    with pytest.raises(ValueError, match=r"^`images` must hold pixel colours in \[0, 1\]; got "
                                         r"values in \[.*\]: they look like 0-255 values: "
                                         r"divide by 255"):
        visualize_concept(model, cc.bank, 0, images * 255, **MACO)
    with pytest.raises(ValueError, match=r"^`images` must hold pixel colours in \[0, 1\]; .* "
                                         r"they look normalised"):
        visualize_concept(model, cc.bank, 0, images - 0.5, **MACO)
