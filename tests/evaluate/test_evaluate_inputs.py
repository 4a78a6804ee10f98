"""What a review of ``conceptkit.evaluate`` found: inputs that gave a wrong or meaningless
result without a word now give the right one or a clear error."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _evaluate_planted import (
    PART_NAMES,
    ColourMeanNet,
    PlantedExplanation,
    planted_images,
    planted_maps,
)
from torch import nn

from conceptkit.evaluate import evaluate, faithfulness, localisation, reliance


@pytest.fixture(scope="module")
def world():
    images, masks = planted_images(12, seed=0)
    return images, masks, planted_maps(masks)


class Normalised(nn.Module):
    """ColourMeanNet behind a normalisation: it takes ``2x - 1`` of images in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.net = ColourMeanNet()

    def forward(self, x):
        return self.net((x + 1) / 2)


def normalise(x):
    return 2 * x - 1


def test_faithfulness_paints_parts_out_of_the_images_the_model_was_explained_on(world):
    # The explanation was fitted with a preprocess; faithfulness (like evaluate) uses it unless
    # told otherwise, so the reliance is that of the model on its own inputs.
    images, masks, maps = world
    explained = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3])
    explained.model_at_layer = SimpleNamespace(preprocess=normalise)
    model = Normalised()
    result = faithfulness(explained, model, images, masks, PART_NAMES, measure="logit",
                          progress=False)
    right = reliance(model, images, masks, 0, preprocess=normalise, progress=False)
    wrong = reliance(model, images, masks, 0, progress=False)
    np.testing.assert_allclose(result.reliance.expected_logit, right.expected_logit)
    assert not np.allclose(right.expected_logit, wrong.expected_logit)
    # the deletion curves start from the model's score on its own inputs: both at the same point
    assert result.deletion.part_curve[0] == pytest.approx(result.deletion.concept_curve[0])


def test_a_localisation_of_other_images_or_parts_is_refused(world):
    images, masks, maps = world
    explained = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3])
    fewer = localisation(maps[:5], images[:5], masks[:5])
    with pytest.raises(ValueError, match=r"`localisation` covers \(5, 3\) .* `masks` has \(12, 3\)"):
        faithfulness(explained, ColourMeanNet(), images, masks, localisation=fewer,
                     deletion=False, progress=False)
    more_parts = torch.cat([masks, masks[:, :1]], 1)
    other = localisation(maps, images, more_parts)
    with pytest.raises(ValueError, match=r"covers \(12, 4\)"):
        faithfulness(explained, ColourMeanNet(), images, masks, localisation=other,
                     deletion=False, progress=False)


class NaNAfterFirstCall(nn.Module):
    """Finite logits for the first batch (the images as given), NaN for every later one."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = ColourMeanNet(), 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        return out if self.calls == 1 else out * float("nan")


def test_nan_scores_of_the_model_are_an_error_not_absent_parts(world):
    # NaN drops used to read as "part absent" (a drop of 0) and the means came out 0
    images, masks, _ = world
    with pytest.raises(ValueError, match=r"NaN or infinite logits for (\d+) of \1 images"):
        reliance(NaNAfterFirstCall(), images, masks, 0, progress=False)


def test_images_are_cast_to_the_models_dtype_and_must_be_pixels(world):
    images, masks, _ = world
    model = ColourMeanNet()
    as_float = reliance(model, images, masks, 0, progress=False)
    as_double = reliance(model, images.double(), masks, 0, progress=False)
    np.testing.assert_allclose(as_double.expected, as_float.expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"`images`.*\[0, 1\]"):
        reliance(model, images * 255, masks, 0, progress=False)


def test_a_misspelt_measure_is_refused_by_every_reliance_reader(world):
    images, masks, _ = world
    measured = reliance(ColourMeanNet(), images, masks, 0, progress=False)
    for read in (measured.values, measured.ranking, measured.most_relied,
                 measured.most_relied_parts, measured.significant, measured.relies_on_a_part):
        with pytest.raises(ValueError, match="measure"):
            read("probabilty")


def test_no_deletion_curve_without_a_part_to_remove(world):
    # with no part shown there is no part curve: the area between was "better than perfect"
    images, masks, maps = world
    result = faithfulness(PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3]), ColourMeanNet(),
                          images, torch.zeros_like(masks), progress=False)
    assert result.deletion is None
    assert any("no deletion curves" in note for note in result.notes)


def _data(images, masks, class_concepts):
    return {"images": images, "labels": np.zeros(images.shape[0], dtype=np.int64),
            "masks": masks, "part_names": PART_NAMES, "class_concepts": class_concepts}


def test_evaluate_refuses_an_explanation_keyed_by_another_class(world):
    images, masks, maps = world
    explained = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3], class_id=0)
    with pytest.raises(ValueError, match="maps class 3 to an explanation of class 0"):
        evaluate({3: explained}, (ColourMeanNet(), _data(images, masks, None)), progress=False)


@pytest.mark.parametrize("class_concepts, match", [
    ([[0, 3]], r"`data.class_concepts\[0\]` holds part indices \[3\]; .* \[0, 2\]"),
    ([[-1]], r"holds part indices \[-1\]"),
    ([["red"]], r"`data.class_concepts` must list"),
])
def test_evaluate_checks_the_designed_parts(world, class_concepts, match):
    images, masks, maps = world
    explained = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3], class_id=0)
    with pytest.raises((ValueError, TypeError), match=match):
        evaluate(explained, (ColourMeanNet(), _data(images, masks, class_concepts)),
                 deletion=False, progress=False)
    row = evaluate(explained, (ColourMeanNet(), _data(images, masks, [[0, 2]])),
                   deletion=False, progress=False).table[0]
    assert row["designed_causal"] == ["red square", "blue square"]


def test_a_localisation_setting_that_differs_is_refused_naming_both_values(world):
    # the message read "was computed with quantile=0.9, not quantile": the given value was lost
    images, masks, maps = world
    explained = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3])
    located = localisation(maps, images, masks, quantile=0.9)
    with pytest.raises(ValueError, match=r"was computed with quantile=0\.9, not 0\.8: it would "
                                         r"not be used"):
        faithfulness(explained, ColourMeanNet(), images, masks, localisation=located,
                     quantile=0.8, deletion=False, progress=False)
