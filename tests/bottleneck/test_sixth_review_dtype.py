"""Found by the sixth review (fuzzing the public API): a label-free CBM fits and predicts with a
float64 backbone (before: "Input type (torch.FloatTensor) and weight type (torch.DoubleTensor)
should be the same" from inside the backbone).

The reference dataset's images, a tiny CNN backbone, a stand-in CLIP, CPU only.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _shared import FakeClip, two_block_cnn

from conceptkit.bottleneck import LabelFreeCBM
from conceptkit.bottleneck._label_free import backbone_features
from conceptkit.datasets import make_concept_dataset
from conceptkit.extraction import split_model

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

CONCEPTS = ["red", "green", "blue", "disk", "ring"]


@pytest.fixture(scope="module")
def backbones():
    data = make_concept_dataset(n_per_class=6, seed=0)
    g, _ = split_model(two_block_cnn(), "flatten")
    return data, g, copy.deepcopy(g).double()


def _cbm(backbone, data):
    return LabelFreeCBM(backbone, FakeClip(), CONCEPTS, list(data.class_names), proj_steps=5,
                        nnz_per_class=1, seed=0, progress=False, clip_cutoff=-1,
                        interpretability_cutoff=-1)


def test_backbone_features_of_a_float64_backbone(backbones):
    data, g, g64 = backbones
    single = backbone_features(g, data.images, batch_size=16, device=torch.device("cpu"),
                               progress=False)
    double = backbone_features(g64, data.images, batch_size=16, device=torch.device("cpu"),
                               progress=False)
    assert next(g64.parameters()).dtype == torch.float64  # left as found
    assert double.dtype == torch.float32 and double.shape == single.shape
    np.testing.assert_allclose(double.numpy(), single.numpy(), rtol=1e-4, atol=1e-5)


def test_label_free_cbm_of_a_float64_backbone_is_that_of_the_float32_one(backbones):
    data, g, g64 = backbones
    single = _cbm(g, data).fit(data.images, data.labels)
    double = _cbm(g64, data).fit(data.images, data.labels)
    assert double.concepts_ == single.concepts_
    assert bool((single.weight_ != 0).any())  # a head was fitted, not all zeros
    np.testing.assert_allclose(double.weight_.numpy(), single.weight_.numpy(), rtol=1e-3,
                               atol=1e-4)
    assert torch.equal(double.predict(data.images), single.predict(data.images))
