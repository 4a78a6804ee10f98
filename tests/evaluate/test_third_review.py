"""Third review of conceptkit.evaluate: the model evaluate() measures, deletion curves that run one
model, single-image significance, precomputed results that agree with the other arguments, map
shrinking, and clear errors."""

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

from conceptkit.evaluate import Reliance, evaluate, faithfulness, localisation, reliance


@pytest.fixture(scope="module")
def world():
    images, masks = planted_images(12, seed=0)
    return ColourMeanNet(), images, masks, planted_maps(masks)


class CountingNet(ColourMeanNet):
    """ColourMeanNet that counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def other_net() -> ColourMeanNet:
    """ColourMeanNet with class 0 reading blue instead of red: other weights, other scores."""
    net = ColourMeanNet()
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[0.0, 1.0, 3.0], [3.0, 1.0, 0.0]]))
    return net


class Bank:
    """Concepts = the colour channels of ColourMeanNet's first layer."""

    components = torch.eye(3)

    @staticmethod
    def encode(acts):
        return acts


class Handle:
    """A model_at_layer: the model cut after its first layer."""

    def __init__(self, model, preprocess=None, tokens="patches", head=None):
        self.model, self.preprocess, self.tokens = model, preprocess, tokens
        self.maps_head = head or torch.nn.Sequential(model.pool, torch.nn.Flatten(), model.fc)

    def activations(self, images, with_context=False):
        acts = self.model.features(images).detach()
        return (acts, None) if with_context else acts


def with_model(explanation, handle):
    explanation.bank, explanation.model_at_layer, explanation.activations = Bank(), handle, None
    return explanation


# ---------------------------------------------------------------- 1. evaluate's model
class PlantedWorld:
    def __init__(self):
        self.models_made = 0

    def sample(self, n_per_class, seed=0, split="test"):
        images, masks = planted_images(2 * n_per_class, seed=seed)
        return SimpleNamespace(images=images, masks=masks, labels=torch.arange(2 * n_per_class) % 2,
                               concept_names=list(PART_NAMES))

    def model(self):
        self.models_made += 1
        return ColourMeanNet()


def test_evaluate_measures_the_explanations_own_model_not_the_worlds():
    world = PlantedWorld()
    data = world.sample(6)
    rows = data.labels.numpy() == 0
    own = other_net()
    explanation = with_model(PlantedExplanation(planted_maps(data.masks[rows]),
                                                [0.9, 0.5, 0.1, 0.3]), Handle(own))
    result = evaluate(explanation, world, n_per_class=6, measure="logit", deletion=False,
                      progress=False)
    measured = result.details[0].reliance
    # the reliance is the explanation's model's (class 0 reads blue), not the world's (red)
    expected = reliance(own, data.images[rows], data.masks[rows], 0, progress=False)
    np.testing.assert_allclose(measured.base_logit, expected.base_logit, atol=1e-6)
    assert measured.ranking("logit")[0] == 2 and result.table[0]["most_relied_part"] == "blue square"
    assert world.models_made == 0
    assert result.settings["model"] == "the explanation's own (ColourMeanNet)"
    # an explanation without a model is measured on world.model(), and says so
    plain = PlantedExplanation(planted_maps(data.masks[rows]), [0.9, 0.5, 0.1, 0.3])
    result = evaluate(plain, world, n_per_class=6, deletion=False, progress=False)
    assert result.settings["model"].startswith("world.model() (ColourMeanNet")
    assert result.table[0]["most_relied_part"] == "red square"


def test_evaluate_refuses_a_pair_whose_model_is_not_the_explanations():
    world = PlantedWorld()
    data = world.sample(6)
    rows = data.labels.numpy() == 0
    own = other_net()
    explanation = with_model(PlantedExplanation(planted_maps(data.masks[rows]),
                                                [0.9, 0.5, 0.1, 0.3]), Handle(own))
    with pytest.raises(ValueError, match=r"model of `world`.*not the model the explanation"):
        evaluate(explanation, (ColourMeanNet(), data), deletion=False, progress=False)
    # the same weights in another object are the same model
    twin = other_net()
    result = evaluate(explanation, (twin, data), deletion=False, progress=False)
    assert result.settings["model"] == "given with the data (ColourMeanNet)"


def test_evaluate_refuses_a_loaded_explanation_without_its_model(tmp_path):
    import conceptkit
    from conceptkit.datasets import load_world

    shapes = load_world("shapes")
    model = shapes.model()
    data = shapes.sample(4, seed=0, split="test")
    rows = data.labels == 0
    fitted = conceptkit.ConceptExplainer(model, shapes.layer, n_concepts=3, seed=0,
                                         progress=False).fit(data.images[rows], 0)
    loaded = conceptkit.load(fitted.save(tmp_path / "c0.safetensors"))
    with pytest.raises(ValueError, match=r"no model.*world.model\(\) has the weights it was "
                                         r"fitted with.*attach"):
        evaluate(loaded, shapes, n_per_class=4, deletion=False, progress=False)
    with pytest.raises(ValueError, match="other weights.*attach"):
        evaluate(loaded, (shapes.model(pretrained=False), data), deletion=False,
                 progress=False)


# ---------------------------------------------------------------- 2. one model for both curves
def test_activation_removal_refuses_another_model_or_preprocessing(world):
    _, images, masks, _ = world
    own = ColourMeanNet()
    explanation = with_model(PlantedExplanation(masks.float(), [0.2, 0.7, 0.4]), Handle(own))
    with pytest.raises(ValueError, match=r"`model` is not the explanation's model"):
        faithfulness(explanation, other_net(), images, masks, removal="activations",
                     progress=False)
    with pytest.raises(ValueError, match=r"`preprocess` differs from the explanation's"):
        faithfulness(explanation, own, images, masks, removal="activations",
                     preprocess=lambda x: x * 0.5, progress=False)
    result = faithfulness(explanation, own, images, masks, removal="activations",
                          measure="logit", progress=False)
    assert result.deletion.concept_curve[0] == pytest.approx(result.deletion.part_curve[0])
    assert not any("start from different" in note for note in result.notes)


def test_curves_that_start_apart_get_a_note(world):
    _, images, masks, _ = world
    own = ColourMeanNet()
    shifted = torch.nn.Linear(3, 2)
    with torch.no_grad():
        shifted.weight.copy_(own.fc.weight)
        shifted.bias.copy_(own.fc.bias + 1.0)   # a head that is not the model's rest
    head = torch.nn.Sequential(own.pool, torch.nn.Flatten(), shifted)
    explanation = with_model(PlantedExplanation(masks.float(), [0.2, 0.7, 0.4]),
                             Handle(own, head=head))
    result = faithfulness(explanation, own, images, masks, removal="activations",
                          measure="logit", progress=False)
    assert result.deletion.concept_curve[0] == pytest.approx(result.deletion.part_curve[0] + 1.0,
                                                             abs=1e-5)
    assert any("start from different class scores" in note for note in result.notes)


# ---------------------------------------------------------------- 3. one image tells nothing
def test_one_image_tells_no_drop_from_zero(world):
    _, images, masks, _ = world
    one = reliance(ColourMeanNet(), images[:1], masks[:1], 0, progress=False)
    assert one.expected_logit[0] > 0.05 and one.present[0, 0]  # a real drop of red ...
    assert not one.significant().any()                           # ... but one image
    assert not one.significant("logit").any()
    assert not one.relies_on_a_part("logit")
    two = reliance(ColourMeanNet(), images[:6], masks[:6], 0, progress=False)
    assert two.significant("logit")[0]   # the red square's drop, over 6 images


# ---------------------------------------------------------------- 4. precomputed results
def test_a_given_reliance_sets_the_fill_of_the_deletion_curves(world):
    model, images, masks, maps = world
    zero = reliance(model, images, masks, 0, "zero", progress=False)
    explanation = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3])
    reused = faithfulness(explanation, model, images, masks, reliance=zero, measure="logit",
                          progress=False)
    fresh = faithfulness(explanation, model, images, masks, fill="zero", measure="logit",
                         progress=False)
    np.testing.assert_allclose(reused.deletion.part_curve, fresh.deletion.part_curve)
    np.testing.assert_allclose(reused.deletion.concept_curve, fresh.deletion.concept_curve)
    median = faithfulness(explanation, model, images, masks, measure="logit", progress=False)
    assert median.deletion.part_curve[1] != pytest.approx(reused.deletion.part_curve[1])
    with pytest.raises(ValueError, match=r"`fill` \('median'\) differs.*`reliance`.*\('zero'\)"):
        faithfulness(explanation, model, images, masks, reliance=zero, fill="median",
                     progress=False)
    blurred = reliance(model, images, masks, 0, "blur", blur_sigma=2.0, progress=False)
    with pytest.raises(ValueError, match="blur.*sigma 3.*differs"):
        faithfulness(explanation, model, images, masks, reliance=blurred, blur_sigma=3.0,
                     progress=False)


def test_a_given_localisation_sets_its_settings_and_refuses_others(world):
    model, images, masks, maps = world
    # graded maps (a faint positive haze around each part): quantiles 0.5 and 0.9 cut apart
    haze = 0.01 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    explanation = PlantedExplanation(maps + haze, [0.9, 0.5, 0.1, 0.3])
    loc = localisation(explanation, images, masks, tolerance=0, quantile=0.5)
    reused = faithfulness(explanation, model, images, masks, localisation=loc, measure="logit",
                          progress=False)
    fresh = faithfulness(explanation, model, images, masks, tolerance=0, quantile=0.5,
                         measure="logit", progress=False)
    default = faithfulness(explanation, model, images, masks, measure="logit", progress=False)
    # the concepts' regions are cut at the localisation's quantile (0.5), not 0.9
    np.testing.assert_allclose(reused.deletion.concept_curve, fresh.deletion.concept_curve)
    assert not np.allclose(reused.deletion.concept_curve, default.deletion.concept_curve)
    for kwargs, name in (({"quantile": 0.9}, "quantile"), ({"tolerance": 2}, "tolerance"),
                         ({"kind": "pixel"}, "kind"), ({"min_images": 1}, "min_images"),
                         ({"assign_threshold": 0.2}, "assign_threshold")):
        with pytest.raises(ValueError, match=rf"`{name}`=.*`localisation` passed"):
            faithfulness(explanation, model, images, masks, localisation=loc, progress=False,
                         **kwargs)
    # the same settings as the localisation's are accepted
    faithfulness(explanation, model, images, masks, localisation=loc, quantile=0.5,
                 tolerance=0, min_images=3, kind="auto", deletion=False, progress=False)


def test_a_class_id_other_than_the_explanations_is_refused(world):
    model, images, masks, maps = world
    explanation = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3], class_id=0)
    with pytest.raises(ValueError, match=r"`class_id` is 1 but `result` explains class 0"):
        faithfulness(explanation, model, images, masks, class_id=1, progress=False)
    assert faithfulness(explanation, model, images, masks, class_id=0, deletion=False,
                        progress=False).class_id == 0


# ---------------------------------------------------------------- 6. shrinking maps
def test_maps_larger_than_the_masks_are_shrunk_by_area_keeping_their_peaks():
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    masks[0, 0, 4, 4] = True
    maps = torch.zeros(1, 1, 64, 64)
    maps[0, 0, 16, 16] = 1.0    # in mask pixel (4, 4), between bilinear's sample points
    maps[0, 0, 40, 40] = 0.5    # a weaker peak elsewhere
    loc = localisation(maps, None, masks, tolerance=0)
    assert loc.pointing_game[0, 0] == 1.0
    assert loc.relevance_mass[0, 0] == pytest.approx(1.0 / 1.5)
    assert loc.maps[0, 0, 4, 4] == pytest.approx(1.0 / 16)
    assert float(loc.maps.sum()) == pytest.approx(1.5 / 16)   # mass kept (4 x 4 blocks)


# ---------------------------------------------------------------- 7. no part shown
def test_with_no_part_shown_no_part_is_the_most_relied_on(world):
    model, images, masks, maps = world
    data = {"images": images, "labels": np.zeros(12, dtype=np.int64),
            "masks": torch.zeros_like(masks)}
    result = evaluate(PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3]), (model, data),
                      progress=False)
    assert result.table[0]["most_relied_part"] is None
    assert "| 0 class 0 | none (" in result.to_markdown()


# ---------------------------------------------------------------- 8. cls tokens, up front
def test_activation_removal_on_cls_tokens_is_refused_before_measuring(world):
    _, images, masks, maps = world
    model = CountingNet()
    explanation = with_model(PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3]),
                             Handle(model, tokens="cls"))
    with pytest.raises(ValueError, match=r"`removal`='activations'.*tokens='cls'.*"
                                         r"removal='pixels'"):
        faithfulness(explanation, model, images, masks, removal="activations", progress=False)
    assert model.calls == 0


# ---------------------------------------------------------------- 9. confidence
@pytest.mark.parametrize("confidence", [0, 1, 1.0, -0.5, 2])
def test_confidence_must_be_strictly_between_0_and_1(world, confidence):
    _, images, masks, _ = world
    measured = reliance(ColourMeanNet(), images, masks, 0, progress=False)
    for read in (measured.significant, measured.most_relied_parts, measured.relies_on_a_part):
        with pytest.raises(ValueError, match="`confidence` must be strictly between 0 and 1"):
            read(confidence=confidence)


# ---------------------------------------------------------------- 10. clear errors
def test_clear_errors_for_bad_maps_results_and_tiny_blurs(world):
    masks = torch.zeros(4, 2, 8, 8, dtype=torch.bool)
    masks[:, 0, :4] = True
    with pytest.raises(ValueError, match="`result` holds no concept map"):
        localisation(torch.rand(4, 0, 8, 8), None, masks)
    with pytest.raises(TypeError, match="`result` must be an explanation.*got list"):
        localisation([[1]], None, masks)
    flat = torch.rand(2, 3, 1, 8)
    flat_masks = torch.zeros(2, 1, 1, 8, dtype=torch.bool)
    flat_masks[:, 0, :, :4] = True
    with pytest.raises(ValueError, match=r"`fill`=\"blur\" needs images of at least 2 x 2"):
        reliance(ColourMeanNet(), flat, flat_masks, 0, fill="blur", progress=False)
    # the other fills work on such images
    assert reliance(ColourMeanNet(), flat, flat_masks, 0, fill="median",
                    progress=False).present.all()
    _, images, full_masks, _ = world
    with pytest.raises(ValueError, match="`blur_sigma`.*`fill` is 'median'"):
        reliance(ColourMeanNet(), images, full_masks, 0, fill="median", blur_sigma=2.0,
                 progress=False)


def test_a_hand_made_reliance_with_an_unknown_fill_asks_for_it(world):
    model, images, masks, maps = world
    measured = reliance(model, images, masks, 0, progress=False)
    hand = Reliance(**{name: getattr(measured, name) for name in
                       ("per_image", "mean", "expected", "per_image_logit", "mean_logit",
                        "expected_logit", "base_probability", "base_logit", "present",
                        "class_id", "part_names")}, fill="my_fill")
    explanation = PlantedExplanation(maps, [0.9, 0.5, 0.1, 0.3])
    with pytest.raises(ValueError, match="fill 'my_fill', which it does not keep"):
        faithfulness(explanation, model, images, masks, reliance=hand, progress=False)
    faithfulness(explanation, model, images, masks, reliance=hand, deletion=False,
                 progress=False)
