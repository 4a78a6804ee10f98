"""A model that ends in a softmax: where the class probability is read as the softmax of the
output, it would be taken twice (every drop flattened, silently); refused instead."""
import pytest
import torch
from torch import nn

import conceptkit
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.importance import concept_importance

DATA = make_concept_dataset(4, seed=0)
IMAGES = DATA.images[DATA.labels == 2]


class WithSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = reference_model()

    def forward(self, x):
        return torch.softmax(self.inner(x), dim=1)


def explainer(model, **kwargs):
    layer = "inner.block4" if isinstance(model, WithSoftmax) else "block4"
    return conceptkit.ConceptExplainer(model, layer, n_concepts=3, seed=0,
                                       progress=False, **kwargs)


def test_pixel_ablation_refuses_a_model_that_returns_probabilities():
    with pytest.raises(ValueError, match=r"the model returns probabilities.*without its final "
                                         r"softmax"):
        explainer(WithSoftmax()).fit(IMAGES, 2)


def test_concept_importance_on_probabilities_refuses_a_softmax_head():
    ex = explainer(WithSoftmax(), importance="gradient_input")
    bank = ex.discover(IMAGES)
    with pytest.raises(ValueError, match=r"`h` returns probabilities"):
        concept_importance(ex.h, ex.activations(IMAGES), bank, 2, method="ablation", seed=0,
                           progress=False)
    # the logit score reads the output as it is: allowed (the importance of the probability)
    concept_importance(ex.h, ex.activations(IMAGES), bank, 2, method="gradient_input", seed=0,
                       progress=False)


def test_a_model_that_returns_logits_is_not_refused():
    result = explainer(reference_model()).fit(IMAGES, 2)
    assert result.importances.shape == (3,)
