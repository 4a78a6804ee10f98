"""Pixel ablation on a confident model: a class probability of exactly 1 in float64 cannot
drop, so its importances are zeros with zero-width intervals. It is said (a warning, and a note
of the explanation naming ``importance_kwargs={"score": "logit"}``), and the logit it names
does measure the concepts."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import conceptkit
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.pipeline import pixel_ablation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOGIT_FIX = r'importance_kwargs=\{"score": "logit"\}'


@pytest.fixture(scope="module")
def confident():
    """The reference model with its last layer times 60 (the same predictions) and six images
    of class 2, on most of which the class probability is exactly 1 in float64."""
    torch.manual_seed(0)
    model = copy.deepcopy(reference_model())
    with torch.no_grad():
        model.fc.weight.mul_(60)
        model.fc.bias.mul_(60)
    data = make_concept_dataset(n_per_class=6, image_size=32, seed=0)
    images = data.images[data.labels == 2][:6]
    with torch.no_grad():
        probability = torch.softmax(model(images).double(), 1)[:, 2].numpy()
    return model, images, probability


def test_pixel_ablation_warns_when_the_probability_is_saturated(confident):
    model, images, probability = confident
    saturated = np.flatnonzero((probability == 0.0) | (probability == 1.0))
    assert 2 * saturated.size > len(images)
    maps = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match=r'exactly 0 or 1 in float64 on '
                                            rf'{saturated.size} of the 6 images.*{LOGIT_FIX}'):
        result = pixel_ablation(model, images, maps, 2, progress=False, n_segments=None)
    assert result.params["saturated"] == saturated.tolist()
    # the drops of the saturated images are (next to) nothing: no measurement
    assert np.abs(result.per_input[saturated]).max() < 1e-100
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        logit = pixel_ablation(model, images, maps, 2, progress=False, n_segments=None,
                               score="logit")
    assert "saturated" not in logit.params
    assert np.abs(logit.per_input[saturated]).max() > 0.1


def test_pixel_ablation_warns_when_no_painting_moves_the_probability():
    class Blind(torch.nn.Module):   # ignores its input: every drop is exactly 0
        def forward(self, x):
            return torch.tensor([[0.5, 1.0, -0.5]]).expand(x.shape[0], 3)

    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(4, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match=rf"every drop is exactly 0.*{LOGIT_FIX}"):
        result = pixel_ablation(Blind(), images, maps, 1, progress=False, n_segments=None)
    np.testing.assert_array_equal(result.per_input, 0.0)
    assert result.params["saturated"] == []


def test_the_explanation_notes_a_saturated_probability_and_the_logit_fixes_it(confident):
    model, images, probability = confident
    saturated = int(((probability == 0.0) | (probability == 1.0)).sum())
    explainer = conceptkit.ConceptExplainer(model, "block4", n_concepts=3, seed=0,
                                            progress=False)
    with pytest.warns(RuntimeWarning, match="softmax is saturated"):
        result = explainer.fit(images, 2)
    notes = [note for note in result.notes() if "saturated" in note]
    assert len(notes) == 1
    assert f"on {saturated} of these 6 images" in notes[0]
    assert 'importance_kwargs={"score": "logit"}' in notes[0]
    fixed = conceptkit.ConceptExplainer(model, "block4", n_concepts=3, seed=0, progress=False,
                                        importance_kwargs={"score": "logit"}).fit(images, 2)
    assert fixed.importance.params["score"] == "logit"
    assert not any("saturated" in note for note in fixed.notes())
    assert np.abs(fixed.importances).max() > 0.1
