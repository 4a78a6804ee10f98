"""Fixes from the fifth review of conceptkit.evaluate, on a user's hand-made world: a model that
returns probabilities, an explanation of one's own (an ``images`` attribute, no ``class_id``), a
hand-made Localisation without maps, the pair given the wrong way round, the part-level NaN note,
a World of one's own, the AUC of a map with no positive value, and notebook 03's own-data loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.evaluate import evaluate, faithfulness, localisation, reliance

SIDE = 16
#: the three parts: a red, a green and a blue square, each in its own place
SQUARES = {0: (slice(1, 6), slice(1, 6)), 1: (slice(1, 6), slice(10, 15)),
           2: (slice(10, 15), slice(5, 10))}
COLOURS = {0: (1.0, 0.0, 0.0), 1: (0.0, 1.0, 0.0), 2: (0.0, 0.0, 1.0)}


def squares(n: int = 8, absent: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images with the three squares (``absent``: image -> parts left out) and their masks."""
    absent = absent or {}
    images = torch.full((n, 3, SIDE, SIDE), 0.5)
    masks = torch.zeros(n, 3, SIDE, SIDE, dtype=torch.bool)
    for i in range(n):
        for p, (rows, cols) in SQUARES.items():
            if p in absent.get(i, ()):
                continue
            images[i, :, rows, cols] = torch.tensor(COLOURS[p])[:, None, None]
            masks[i, p, rows, cols] = True
    return images, masks


class RedGreenNet(nn.Module):
    """Two classes: logit 0 is 0, logit 1 is ``4 (red of square 0 - 0.5) + 2 (green of square 1
    - 0.5)``; the blue square is ignored. ``probabilities=True`` ends in a softmax."""

    def __init__(self, probabilities: bool = False):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(1))
        self.probabilities = probabilities
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        red = x[:, 0, 1:6, 1:6].mean((1, 2))
        green = x[:, 1, 1:6, 10:15].mean((1, 2))
        z1 = 4.0 * (red - 0.5) + 2.0 * (green - 0.5) + self.offset
        z = torch.stack([torch.zeros_like(z1), z1], 1)
        return z.softmax(1) if self.probabilities else z


class Planted:
    """A user's explanation: given maps and importances."""

    def __init__(self, maps, importances, class_id=1):
        self.maps = torch.as_tensor(maps, dtype=torch.float32)
        self.importances = np.asarray(importances, dtype=float)
        self.class_id = class_id

    def concept_maps(self, images, kind="auto"):
        return self.maps


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------- 1. probabilities, not logits
def test_a_model_that_returns_probabilities_is_refused():
    images, masks = squares(8, absent={1: [1]})
    # the logits give the drops of the definition: image 0, red painted out with the grey
    # median: z1 from 3 to 1
    logits = reliance(RedGreenNet(), images, masks, 1, progress=False)
    assert logits.per_image[0, 0] == pytest.approx(sigmoid(3) - sigmoid(1), abs=1e-6)
    np.testing.assert_allclose(logits.expected, [0.24143, 0.06280, 0.0], atol=1e-4)
    # the same model ending in a softmax used to give [0.109, 0.027, 0] without a word
    with pytest.raises(ValueError, match=r"`model` returns probabilities \(rows sum to 1\); "
                                         r"conceptkit.evaluate needs logits: pass the model "
                                         r"without its softmax"):
        reliance(RedGreenNet(probabilities=True), images, masks, 1, progress=False)
    data = {"images": images, "labels": np.ones(8, int), "masks": masks}
    with pytest.raises(ValueError, match="returns probabilities"):
        evaluate(Planted(masks.float(), [0.5, 0.2, 0.0]),
                 (RedGreenNet(probabilities=True), data), progress=False)
    # logits that are >= 0 without summing to 1, or summing to 1 with a negative one, are logits
    for shift in (torch.tensor([[0.2, 0.3]]), torch.tensor([[-1.0, 2.0]])):
        class Fixed(nn.Module):
            def forward(self, x, shift=shift):
                return shift.expand(x.shape[0], 2) + 0 * x[:, :1, 0, 0]

        assert reliance(Fixed(), images, masks, 1, progress=False).expected.tolist() == [0, 0, 0]


# ---------------------------------------------------------------- 2. the fitted path
class KeepsImages:
    """A user's explanation that keeps the images it was made from, and computes the maps of
    any images it is given (colour detectors); it has no maps for ``images=None``."""

    def __init__(self, images, importances, class_id=1):
        self.images = images
        self.importances = np.asarray(importances, dtype=float)
        self.class_id = class_id
        self.asked = []

    def concept_maps(self, images, kind="auto"):
        self.asked.append(None if images is None else tuple(images.shape))
        return torch.stack([(images[:, j] - images[:, [c for c in range(3) if c != j]].amax(1))
                            .clamp(min=0) for j in range(3)], 1)


def test_an_explanation_of_ones_own_is_asked_for_the_maps_of_the_images():
    images, masks = squares(6)
    explanation = KeepsImages(images, [0.5, 0.2, 0.0])
    result = localisation(explanation, images, masks)  # was: concept_maps(None) -> TypeError
    assert explanation.asked == [(6, 3, SIDE, SIDE)]
    np.testing.assert_array_equal(result.pointing_game, np.eye(3))
    assert result.concept_parts.tolist() == [0, 1, 2]
    # and through faithfulness (the deletion curves use the same maps; their painted images,
    # where the model gives every image the logits [0, 1], are not taken for probabilities)
    f = faithfulness(explanation, RedGreenNet(), images, masks, progress=False)
    assert f.concept_parts.tolist() == [0, 1, 2] and f.spearman == pytest.approx(1.0)


def test_class_concepts_still_use_their_fitted_path():
    from conceptkit.evaluate._inputs import fitted_on, is_class_concepts

    images, _ = squares(4)
    ClassConcepts = type("ClassConcepts", (), {"__module__": "conceptkit.pipeline._result"})
    Subclass = type("MyConcepts", (ClassConcepts,), {"__module__": "mine"})
    mine = type("ClassConcepts", (), {"__module__": "mine"})  # a namesake of the user's
    for cls, own in ((ClassConcepts, True), (Subclass, True), (mine, False)):
        explanation = cls()
        explanation.images = images
        assert is_class_concepts(explanation) is own
        assert fitted_on(explanation, images.clone()) is own
        assert fitted_on(explanation, images * 0.5) is False
        assert fitted_on(explanation, None) is False


# ---------------------------------------------------------------- 3. a localisation without maps
def test_a_hand_made_localisation_without_maps_is_refused_before_measuring():
    images, masks = squares(6)
    explanation = Planted(masks.float(), [0.5, 0.2, 0.0])
    located = dataclasses.replace(localisation(masks.float(), None, masks), maps=None)
    model = RedGreenNet()
    with pytest.raises(ValueError, match=r"`localisation` has no maps.*Pass deletion=False, or a "
                                         r"localisation that has maps"):
        faithfulness(explanation, model, images, masks, localisation=located, progress=False)
    assert model.calls == 0  # before anything was measured
    f = faithfulness(explanation, model, images, masks, localisation=located, deletion=False,
                     progress=False)
    assert f.deletion is None and f.spearman == pytest.approx(1.0)


# ---------------------------------------------------------------- 4, 5. evaluate's arguments
def test_an_explanation_without_class_id_is_told_to_set_it():
    images, masks = squares(6)
    data = {"images": images, "labels": np.ones(6, int), "masks": masks}

    class NoClass:
        importances = np.array([0.5, 0.2, 0.0])

        def concept_maps(self, images, kind="auto"):
            return masks.float()

    with pytest.raises(TypeError, match=r"`explanation` has no `class_id`; set it or pass "
                                        r"\{class_id: explanation\}"):
        evaluate(NoClass(), (RedGreenNet(), data), progress=False)
    result = evaluate({1: NoClass()}, (RedGreenNet(), data), deletion=False, progress=False)
    assert result.table[0]["class_id"] == 1 and result.table[0]["most_relied_part"] == "part 0"


def test_a_pair_given_data_first_is_told_model_first():
    images, masks = squares(6)
    data = {"images": images, "labels": np.ones(6, int), "masks": masks}
    explanation = Planted(masks.float(), [0.5, 0.2, 0.0])
    with pytest.raises(TypeError, match=r"`world` must be \(model, data\), model first; got "
                                        r"\(data, model\): \(dict, RedGreenNet\)"):
        evaluate(explanation, (data, RedGreenNet()), progress=False)
    with pytest.raises(TypeError, match=r"`world` must be \(model, data\), its first item the "
                                        r"model"):
        evaluate(explanation, (data, data), progress=False)


# ---------------------------------------------------------------- 6. the part-level note
def test_the_part_level_note_names_the_constant_vector():
    images, masks = squares(8, absent={1: [1]})
    model = RedGreenNet()
    # three concepts on three parts, all equally important: the part importances are constant,
    # the part reliances are not (0.241, 0.063, 0)
    f = faithfulness(Planted(masks.float(), [0.3, 0.3, 0.3]), model, images, masks,
                     deletion=False, progress=False)
    assert f.concept_parts.tolist() == [0, 1, 2]
    assert ("part-level faithfulness is undefined (NaN): every shown part has the same "
            "importance (0.3, the summed importance of the concepts sitting on it).") in f.notes
    # importances that differ, reliances floored to 0 everywhere: the reliance is constant
    f = faithfulness(Planted(masks.float(), [0.5, 0.2, 0.0]), model, images, masks,
                     deletion=False, reliance_floor=1.0, progress=False)
    assert ("part-level faithfulness is undefined (NaN): the shown parts are equally relied on "
            "(+0 each (within `reliance_floor` 1 of 0)).") in f.notes
    # no concept on any part
    nowhere = torch.zeros_like(masks, dtype=torch.float32)
    nowhere[:, :, 8, 0] = 1.0
    f = faithfulness(Planted(nowhere, [0.5, 0.2, 0.0]), model, images, masks, deletion=False,
                     progress=False)
    assert f.concept_parts.tolist() == [-1, -1, -1]
    assert ("part-level faithfulness is undefined (NaN): no concept sits on a shown part (every "
            "shown part's importance is 0).") in f.notes


# ---------------------------------------------------------------- 7. a World of one's own
def test_a_world_of_ones_own_is_told_the_sample_contract_and_its_counts_recorded():
    images, masks = squares(12, absent={1: [1], 3: [0]})
    labels = np.array([1] * 8 + [0] * 4)
    data = {"images": images, "labels": labels, "masks": masks}
    model = RedGreenNet()

    class Mine:
        def __init__(self):
            self.calls = []

        def sample(self, n_per_class, seed=0, split="test"):
            self.calls.append((n_per_class, seed, split))
            return data

        def model(self):
            return model

    world = Mine()
    explanation = Planted(masks[labels == 1].float(), [0.5, 0.2, 0.0])
    result = evaluate(explanation, world, n_per_class=4, deletion=False, progress=False)
    assert world.calls == [(4, 0, "test")]
    # four asked, eight given: the settings say what was evaluated
    assert result.settings["n_per_class"] == 4 and result.settings["n_images"] == 8
    assert result.table[0]["n_images"] == 8
    both = {0: Planted(masks[labels == 0].float(), [0.5, 0.2, 0.0], class_id=0), 1: explanation}
    result = evaluate(both, world, n_per_class=4, deletion=False, progress=False)
    assert result.settings["n_images"] == {"0": 4, "1": 8}
    json.dumps(result.to_dict())

    class NoSeed:
        def sample(self, n):
            return data

        def model(self):
            return model

    with pytest.raises(TypeError, match=r"`world.sample` must be sample\(n_per_class, seed=\.\.\., "
                                        r"split=\.\.\.\) returning an object \(or dict\) with "
                                        r"`images`.*this world's is sample\(n\)"):
        evaluate(explanation, NoSeed(), progress=False)

    class Triple(NoSeed):
        def sample(self, n, seed=0, split="test"):
            return images, labels, masks

    with pytest.raises(TypeError, match=r"`world.sample` returned data without `images` or "
                                        r"`labels` or `masks`; it must be sample\(n_per_class"):
        evaluate(explanation, Triple(), progress=False)


# ---------------------------------------------------------------- 8. AUC of an absent concept
def test_the_auc_of_a_map_with_no_positive_value_is_chance():
    _, masks = squares(4)
    maps = -2.0 + masks.float()[:, :1]  # negative everywhere, "less negative" on the red part
    located = localisation(maps, None, masks)
    # the concept is absent from every image: no point, no mass, no region, and chance AUC
    assert located.pointing_game[0, 0] == 0.0 and located.relevance_mass[0, 0] == 0.0
    assert located.iou[0, 0] == 0.0
    np.testing.assert_array_equal(located.auc[0], [0.5, 0.5, 0.5])  # was 1.0 on the red part
    # a map positive in some images keeps its AUC there; the others score 0.5
    maps[:2] += 2.0  # images 0, 1: 1 on the red part, 0 elsewhere
    located = localisation(maps, None, masks)
    np.testing.assert_array_equal(located.per_image["auc"][:, 0, 0], [1.0, 1.0, 0.5, 0.5])
    assert located.auc[0, 0] == pytest.approx(0.75)
    # a map that is 0 everywhere (the default maps are >= 0) scored 0.5 before as now
    zero = localisation(torch.zeros(4, 1, SIDE, SIDE), None, masks)
    np.testing.assert_array_equal(zero.auc[0], [0.5, 0.5, 0.5])


# ---------------------------------------------------------------- 9. notebook 03's own-data loop
def test_notebook_03_own_data_loop_prints_an_undefined_spearman():
    path = Path(__file__).resolve().parents[2] / "notebooks" / "03_evaluate.ipynb"
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    (source,) = ["".join(c["source"]) for c in cells
                 if c["cell_type"] == "code" and "own data, class" in "".join(c["source"])]
    loop = source[source.index("for row in own.table:"):]
    rows = [{"class_id": 0, "most_relied_part": "red", "top_part": "background",
             "spearman": None},
            {"class_id": 1, "most_relied_part": "red", "top_part": "red", "spearman": 0.5}]
    printed = []
    exec(loop, {"own": SimpleNamespace(table=rows), "print": printed.append})  # noqa: S102
    assert printed == [
        "own data, class 0: most relied-on red, top concept on background, spearman n/a",
        "own data, class 1: most relied-on red, top concept on red, spearman 0.50"]
