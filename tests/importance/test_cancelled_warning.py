"""concept_importance on importances that cancel: the explainer refuses them; the function
itself returns them (a caller may want the per-input values) with a warning that says why."""
import warnings

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit.concepts import PCAConcepts
from conceptkit.importance import concept_importance

IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_centred_codes_with_a_pooled_linear_head_are_warned_about():
    ex = conceptkit.ConceptExplainer(two_block_cnn(), "block2", method="ice", progress=False,
                                     factorizer=PCAConcepts(3), seed=0)
    bank = ex.discover(IMAGES)
    acts = ex.activations(IMAGES)
    with pytest.warns(RuntimeWarning, match=r"importances that cancel\. method='gradient_input'"
                                            r".*PCAConcepts's codes are centred.*method='sobol'"):
        result = concept_importance(ex.h, acts, bank, 1, method="gradient_input", seed=0,
                                    progress=False)
    means, peak = np.abs(result.importances).max(), np.abs(result.per_input).max()
    assert peak > 0 and means < 1e-3 * peak  # what the warning is about, returned as computed


def test_importances_that_do_not_cancel_are_not_warned_about():
    ex = conceptkit.ConceptExplainer(two_block_cnn(), "block2", method="ice", progress=False,
                                     n_concepts=3, seed=0)
    bank = ex.discover(IMAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        concept_importance(ex.h, ex.activations(IMAGES), bank, 1, method="gradient_input",
                           seed=0, progress=False)


def test_the_explainer_says_it_once_as_an_error():
    ex = conceptkit.ConceptExplainer(two_block_cnn(), "block2", method="ice", progress=False,
                                     importance="gradient_input", factorizer=PCAConcepts(3), seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"importance='gradient_input'.*pixel_ablation"):
            ex.fit(IMAGES, 1)
    assert not [w for w in caught if "cancel" in str(w.message)]
