"""Found by the sixth review (fuzzing the public API): naming by classes refuses images of 0-255
values as every other image entry point does, and ``activation_auc`` checks its inputs.

A tiny CNN, CPU only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _shared import two_block_cnn
from sklearn.metrics import roc_auc_score

import conceptkit
from conceptkit.naming import activation_auc, name_by_classes

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]


@pytest.fixture(scope="module")
def fitted():
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cc = conceptkit.ConceptExplainer(two_block_cnn(), "block2", 3, seed=0, progress=False,
                                     importance="gradient_input").fit(images, 0)
    return cc, images


# ---------------------------------------------------------------------------------------------
# Finding 1: 0-255 images (before: accepted, and the names and scores were those of other
# activations)
# ---------------------------------------------------------------------------------------------

def test_name_by_classes_refuses_0_255_images(fitted):
    cc, images = fitted
    with pytest.raises(ValueError, match=r"^`images` must hold pixel colours in \[0, 1\]; got "
                                         r"values in \[.*\]: they look like 0-255 values: "
                                         r"divide by 255"):
        name_by_classes(cc, images * 255)
    with pytest.raises(ValueError, match=r"^`images` must hold pixel colours in \[0, 1\]; .* "
                                         r"they look normalised"):
        name_by_classes(cc, images - 0.5)


def test_name_by_classes_of_the_fitted_images_is_their_stored_naming(fitted):
    cc, images = fitted
    given = name_by_classes(cc, images, min_score=None)
    stored = name_by_classes(cc, min_score=None)   # the explanation's own activations
    assert [e.name for e in given] == [e.name for e in stored]
    np.testing.assert_allclose([e.score for e in given], [e.score for e in stored], rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Finding 5: activation_auc's inputs (before: None for 8 values and 5 labels, an IndexError, or
# NaN for NaN activations)
# ---------------------------------------------------------------------------------------------

def test_activation_auc_refuses_inputs_of_other_lengths():
    values = np.linspace(0, 1, 8)
    for positive in (np.ones(5, bool), np.array([1, 0, 1, 0, 1], bool)):
        with pytest.raises(ValueError, match=r"^`positive` must hold one flag per image of "
                                             r"`activations` \(8\); got 5\.$"):
            activation_auc(values, positive)


def test_activation_auc_refuses_non_finite_activations_and_other_shapes():
    positive = np.arange(8) % 2 == 0
    with pytest.raises(ValueError, match=r"^`activations` contains NaN or Inf values"):
        activation_auc(np.full(8, np.nan), positive)
    with pytest.raises(ValueError, match=r"^`activations` must be 1-D, one value per image; got "
                                         r"shape \(2, 4\)\.$"):
        activation_auc(np.zeros((2, 4)), positive)
    with pytest.raises(ValueError, match=r"^`positive` must be 1-D"):
        activation_auc(np.zeros(8), positive[None])
    with pytest.raises(TypeError, match=r"^`activations` must be a 1-D array of numbers; got"):
        activation_auc(["a"] * 8, positive)


def test_activation_auc_takes_booleans_or_0_1_only():
    values = np.linspace(0, 1, 8)
    with pytest.raises(ValueError, match=r"^`positive` must be booleans or 0 / 1 .* got values "
                                         r"such as \[2\]\.$"):
        activation_auc(values, np.array([0, 1, 2, 0, 1, 0, 1, 0]))
    flags = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    assert activation_auc(values, flags) == activation_auc(values, flags.astype(bool))
    assert activation_auc(values, flags) == pytest.approx(roc_auc_score(flags, values))
    # tensors and lists are read as arrays
    assert activation_auc(torch.as_tensor(values), torch.as_tensor(flags.astype(bool))) == \
        pytest.approx(roc_auc_score(flags, values))
    assert activation_auc(list(values), list(flags)) == pytest.approx(roc_auc_score(flags, values))
    assert activation_auc(values, np.zeros(8, bool)) is None
