"""CRAFT's recursion (sub-concepts of a concept at an earlier layer) on a planted model.

The planted model makes the truth explicit. Images are 4x4 grids of pure red, green, blue or
black tiles. ``stem`` and ``early`` are identity 1x1 convolutions + ReLU, so the early channels
are the red, green and blue detectors. ``late`` channel 0 (the parent concept) is
``red + 2 * green`` and ignores blue. The parent bank at ``late`` has the identity as its
dictionary, so its concept 0 is exactly that channel. Decomposing concept 0 at ``early`` must
therefore find the three colour directions, give green the largest importance, red a smaller
one and blue none; on inputs where the parent code is ``f = mean_p(r + 2 g)``, the exact total
Sobol index of sub-concept ``j`` is ``c_j^2 / sum c^2`` with ``c_j`` its contribution to ``f``.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import conceptkit
from conceptkit.concepts import NMF, ConceptBank
from conceptkit.concepts._base import factorizer_from_state
from conceptkit.extraction import ActivationExtractor, CutError, crops
from conceptkit.pipeline._recursion import (
    ConceptTree,
    decompose_concept,
    plot_subconcepts,
    subconcept_examples,
)
from conceptkit.pipeline._recursion_path import ParentCode

RED, GREEN, BLUE = np.eye(3)
PARENT_WEIGHTS = np.array([1.0, 2.0, 0.0])   # late channel 0 = red + 2 green
SIDE, PATCH, STRIDE = 32, 16, 8


def _identity_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels)[:, :, None, None])
        conv.bias.zero_()
    return conv


def _late_conv() -> nn.Conv2d:
    conv = nn.Conv2d(3, 4, 1)
    weights = torch.tensor([PARENT_WEIGHTS.tolist(), [0, 0, 1], [1, 0, 1], [0, 1, 1]],
                           dtype=torch.float32)
    with torch.no_grad():
        conv.weight.copy_(weights[:, :, None, None])
        conv.bias.zero_()
    return conv


class Tripwire(nn.Module):
    """Raises on its ``trip_at``-th call (counting from 1); a pass-through otherwise."""

    def __init__(self, trip_at: int | None = None):
        super().__init__()
        self.trip_at, self.calls = trip_at, 0

    def forward(self, x):
        self.calls += 1
        if self.trip_at is not None and self.calls >= self.trip_at:
            raise RuntimeError("tripwire")
        return x


def planted_model(tripwire: Tripwire | None = None, where: str = "late") -> nn.Sequential:
    extra = {name: [tripwire] if tripwire is not None and name == where else []
             for name in ("stem", "late")}
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(_identity_conv(3), nn.ReLU(), *extra["stem"]),
        early=nn.Sequential(_identity_conv(3), nn.ReLU()),
        late=nn.Sequential(_late_conv(), nn.ReLU(), *extra["late"]),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(4, 2)))


class PlantedCustom(nn.Module):
    """The planted network with its own forward (traced by torch.fx, ``late`` traced through)."""

    def __init__(self, skip: bool = False):
        super().__init__()
        base = planted_model()
        self.stem, self.early, self.late, self.fc = base.stem, base.early, base.late, base.fc
        self.skip = skip

    def forward(self, x):
        s = self.stem(x)
        e = self.early(s)
        return self.fc(self.late(e + s if self.skip else e).mean((2, 3)))


class PlantedUntraceable(PlantedCustom):
    """Same network; the data-dependent branch makes torch.fx fail, so the model is replayed."""

    def forward(self, x):
        s = self.stem(x)
        if float(s.sum()) < -1:   # never true (ReLU output), but untraceable
            s = -s
        e = self.early(s)
        return self.fc(self.late(e + s if self.skip else e).mean((2, 3)))


def tile_images(n: int, seed: int = 0, colours: tuple[int, ...] = (0, 1, 2, 3)) -> torch.Tensor:
    """4x4 grids of tiles, each red, green, blue or black with an intensity in [0.5, 1]."""
    rng = np.random.default_rng(seed)
    palette = np.array([RED, GREEN, BLUE, np.zeros(3)], dtype=np.float32)
    tile = SIDE // 4
    out = np.zeros((n, 3, SIDE, SIDE), dtype=np.float32)
    for i in range(n):
        for a in range(4):
            for b in range(4):
                colour = palette[rng.choice(colours)] * rng.uniform(0.5, 1.0)
                out[i, :, a * tile:(a + 1) * tile, b * tile:(b + 1) * tile] = colour[:, None, None]
    return torch.from_numpy(out)


def identity_bank(model: nn.Module, images: torch.Tensor, layer: str = "late") -> ConceptBank:
    """A CRAFT-style bank whose concept ``c`` is exactly channel ``c`` of ``layer``."""
    crop_set = crops(images, PATCH, STRIDE)
    acts = ActivationExtractor(model, layer, reduce="mean", progress=False)(crop_set)
    channels = acts.shape[1]
    factorizer = factorizer_from_state("NMF", NMF(channels).get_params(),
                                       {"components_": np.eye(channels, dtype=np.float32)}, {})
    return ConceptBank(components=factorizer.components_, codes=factorizer.transform(acts),
                       provenance=crop_set.provenance, layer=layer, method="craft",
                       params={"patch_size": PATCH}, factorizer=factorizer, activations=acts)


@pytest.fixture(scope="module")
def images():
    return tile_images(24)


@pytest.fixture(scope="module")
def bank(images):
    return identity_bank(planted_model(), images)


def run(model, bank, images, **kwargs):
    options = dict(n_concepts=3, n_inputs=32, seed=0, progress=False)
    options.update(kwargs)
    return decompose_concept(model, bank, images, 0, "early", **options)


def colour_of(components: np.ndarray) -> np.ndarray:
    """Which planted colour (0 red, 1 green, 2 blue) each sub-concept is, checked unambiguous."""
    unit = components / np.linalg.norm(components, axis=1, keepdims=True)
    cosines = unit @ np.eye(3)
    colours = cosines.argmax(1)
    assert sorted(colours) == [0, 1, 2], cosines
    assert cosines.max(1).min() > 0.99, cosines   # each sub-concept is one colour detector
    return colours


def contributions(tree: ConceptTree, model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """``c_ij``: sub-concept ``j``'s share of the parent code ``f = mean_p(r + 2 g)`` on input ``i``,
    computed independently of the library's importance code."""
    inputs = crops(images, PATCH, STRIDE).batch(tree.input_rows)
    acts = ActivationExtractor(model, "early", progress=False)(inputs)
    codes = tree.sub_bank.encode(acts).numpy()                     # (m, k, h, w)
    weights = tree.sub_bank.components.numpy() @ PARENT_WEIGHTS    # (k,)
    return codes.mean(axis=(2, 3)) * weights


# ---------------------------------------------------------------------------------------------
# The planted truth
# ---------------------------------------------------------------------------------------------

def test_planted_subconcepts_and_sobol_importance(bank, images):
    model = planted_model()
    tree = run(model, bank, images)
    # The inputs are the bank's 32 rows with the highest parent code.
    expected_rows = np.argsort(-bank.codes[:, 0].numpy(), kind="stable")[:32]
    assert sorted(tree.input_rows) == sorted(expected_rows)
    np.testing.assert_array_equal(tree.image_ids, bank.provenance.image_ids[tree.input_rows])
    assert tree.layer == "late" and tree.sub_layer == "early" and tree.depth == 1

    colours = colour_of(tree.sub_bank.components.numpy())
    by_colour = {int(c): float(tree.importance.importances[j]) for j, c in enumerate(colours)}
    assert by_colour[1] > by_colour[0] > by_colour[2]       # green > red > blue
    assert by_colour[2] < 1e-3 and by_colour[1] > 0.6
    # Exact total Sobol indices of the (affine) parent code: c^2 / sum c^2, averaged over inputs.
    c = contributions(tree, model, images)
    exact = (c ** 2 / (c ** 2).sum(1, keepdims=True)).mean(0)
    np.testing.assert_allclose(tree.importance.importances, exact, atol=0.08)
    assert [child.importance_for_parent for child in tree.children] == list(tree.importance.importances)


def test_closed_form_and_gradient_input_match_the_planted_contributions(bank, images):
    model = planted_model()
    closed = run(model, bank, images, importance="closed_form")
    c = contributions(closed, model, images)
    np.testing.assert_allclose(closed.importance.per_input, c ** 2 / (c ** 2).sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    # Gradient x input of a linear parent code is each sub-concept's contribution c_ij: this
    # differentiates through the parent bank's encoding.
    grads = run(model, bank, images, importance="gradient_input")
    np.testing.assert_allclose(grads.importance.per_input, contributions(grads, model, images),
                               rtol=1e-3, atol=1e-5)


def test_ice_finds_the_same_colours(bank, images):
    tree = run(planted_model(), bank, images, method="ice")
    assert tree.sub_bank.method == "ice" and tree.sub_bank.provenance.kind == "position"
    colours = colour_of(tree.sub_bank.components.numpy())
    by_colour = {int(c): float(tree.importance.importances[j]) for j, c in enumerate(colours)}
    assert by_colour[1] > by_colour[0] > by_colour[2]


def test_inputs_are_cut_back_through_the_provenance(bank, images):
    """Crops and segments come back exactly as the bank saw them (their pooled activations are
    the bank's rows); a 1-pixel ICE cell comes back as a flat image of that pixel's colour."""
    from conceptkit.concepts import ACE, ICE
    from conceptkit.pipeline._recursion import _node_inputs

    model = planted_model()
    ace = ACE(3, n_segments=(16,), min_cluster_size=0, seed=0, progress=False).fit(
        model, "late", images[:8])
    for parent, source in ((bank, images), (ace, images[:8])):
        tree = decompose_concept(model, parent, source, 0, "early", n_concepts=2, n_inputs=6,
                                 n_designs=8, seed=0, progress=False)
        inputs = _node_inputs(tree, source)
        assert inputs.shape == (tree.input_rows.size, 3, SIDE, SIDE)
        pooled = ActivationExtractor(model, "late", reduce="mean", progress=False)(inputs)
        np.testing.assert_allclose(pooled.numpy(), parent.activations[tree.input_rows].numpy(),
                                   rtol=1e-5, atol=1e-6)
    ice = ICE(3, seed=0, progress=False).fit(model, "late", images[:4])
    tree = decompose_concept(model, ice, images[:4], 0, "early", n_concepts=2, n_inputs=6,
                             n_designs=8, seed=0, progress=False)
    inputs = _node_inputs(tree, images[:4])
    prov = ice.provenance
    for row, image in zip(tree.input_rows, inputs):
        y0, x0, _, _ = prov.boxes[row]
        pixel = images[prov.image_ids[row], :, y0, x0]
        np.testing.assert_allclose(image.numpy(), pixel[:, None, None].expand_as(image).numpy(),
                                   atol=1e-6)


def test_parent_code_is_the_planted_channel_on_every_path(bank, images):
    """f(A_early) = encode(pool(late(A)))[0] = mean(r + 2 g), whether the path is a Sequential
    graph cut, an fx graph cut of a custom forward, or a replay of an untraceable model."""
    x = images[:5]
    truth = (x[:, 0] + 2 * x[:, 1]).mean(dim=(1, 2))
    for cls, replayed in ((planted_model, False), (PlantedCustom, False),
                          (PlantedUntraceable, True)):
        model = cls()
        acts = ActivationExtractor(model, "early", progress=False)(x)
        code = ParentCode(model, "early", bank, 0, x[:1], acts[:1])
        assert (code.mid is None) == replayed
        with torch.no_grad():
            got = code(acts)
        assert got.shape == (5, 1)
        np.testing.assert_allclose(got[:, 0].numpy(), truth.numpy(), rtol=1e-5, atol=1e-6)


def test_fx_and_replayed_models_give_the_same_tree(bank, images):
    reference = run(planted_model(), bank, images)
    for model in (PlantedCustom(), PlantedUntraceable()):
        tree = run(model, bank, images)
        np.testing.assert_allclose(tree.importance.per_input, reference.importance.per_input,
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [PlantedCustom, PlantedUntraceable])
def test_skip_connection_across_the_layer_is_refused(cls, images):
    model = cls(skip=True)
    bank = identity_bank(model, images)
    with pytest.raises(CutError, match="not a valid cut"):
        run(model, bank, images)


# ---------------------------------------------------------------------------------------------
# Tree, depth, serialisation, determinism
# ---------------------------------------------------------------------------------------------

def test_depth_two_tree_shape_and_json(bank, images):
    model = planted_model()
    tree = run(model, bank, images, depth=2, n_inputs=12, n_designs=8)
    assert tree.depth == 2 and len(tree.children) == 3
    for child in tree.children:
        assert child.layer == "early" and child.sub_layer == "stem"  # picked automatically
        assert child.parent is tree and child.bank is tree.sub_bank
        if child.note is None:
            assert len(child.children) == 3 and child.importance.per_input.shape == (child.input_rows.size, 3)
        for grandchild in child.children:
            assert grandchild.children == [] and grandchild.sub_bank is None
            assert grandchild.image_ids.max() < images.shape[0]
    assert sum(len(child.children) for child in tree.children) >= 6
    assert len(list(tree.nodes())) == 1 + 3 + sum(len(c.children) for c in tree.children)

    summary = tree.to_dict(n_images=5)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["layer"] == "late" and summary["sub_layer"] == "early"
    assert summary["sub_importance"]["importances"] == pytest.approx(list(tree.importance.importances))
    assert [c["importance"] for c in summary["children"]] == pytest.approx(list(tree.importance.importances))
    assert summary["children"][0]["top_image_ids"] == [int(i) for i in tree.children[0].image_ids[:5]]
    assert summary["children"][0]["sub_layer"] == "stem"
    text = tree.render()
    assert len(text.splitlines()) == len(list(tree.nodes()))
    assert "concept 0 @ late" in text.splitlines()[0] and "@ stem" in text

    explicit = run(model, bank, images, depth=2, n_inputs=12, n_designs=8, child_layers=["stem"])
    assert explicit.to_dict(n_images=5) == summary


def test_same_seed_same_tree(bank, images):
    first = run(planted_model(), bank, images, depth=2, n_inputs=8, n_designs=8)
    second = run(planted_model(), bank, images, depth=2, n_inputs=8, n_designs=8)
    for a, b in zip(first.nodes(), second.nodes()):
        np.testing.assert_array_equal(a.input_rows, b.input_rows)
        if a.sub_bank is not None:
            np.testing.assert_array_equal(a.sub_bank.components.numpy(), b.sub_bank.components.numpy())
            np.testing.assert_array_equal(a.importance.per_input, b.importance.per_input)


def test_subconcept_examples_show_their_colour(bank, images):
    tree = run(planted_model(), bank, images)
    examples = subconcept_examples(tree, images, n_exemplars=6)
    colours = colour_of(tree.sub_bank.components.numpy())
    assert len(examples) == 3
    for block, colour in zip(examples, colours):
        assert block.shape[0] == 6 and block.shape[1] == 3
        mean = block.mean(dim=(0, 2, 3))
        assert int(mean.argmax()) == colour   # the top crops of the green sub-concept are green
    figure = plot_subconcepts(tree, images, n_exemplars=4)
    assert len(figure.axes) == 3
    with pytest.raises(ValueError, match="leaf"):
        subconcept_examples(tree.children[0], images)


def test_class_concepts_subconcepts(images):
    model = planted_model()
    explanation = conceptkit.ConceptExplainer(model, "late", n_concepts=3, seed=0, progress=False,
                                              method="craft", patch_size=PATCH).fit(images, 0)
    top = int(explanation.ranking[0])
    tree = explanation.subconcepts(top, "early", n_concepts=3, n_inputs=8, n_designs=8)
    direct = decompose_concept(model, explanation.bank, images, top, "early", n_concepts=3,
                               n_inputs=8, n_designs=8, seed=0, progress=False)
    assert tree.layer == "late" and tree.concept == top
    np.testing.assert_array_equal(tree.importance.per_input, direct.importance.per_input)


# ---------------------------------------------------------------------------------------------
# Model hygiene and bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, trip_at", [("late", 1), ("late", 6), ("stem", 6), ("stem", 17)])
def test_model_left_as_found_when_an_error_is_raised_midway(where, trip_at, images, snapshot):
    """The tripwire fires in the order check, in the parent-code check or the importance
    (late), or in the sub-concept discovery of the first or second level (stem)."""
    tripwire = Tripwire()
    model = planted_model(tripwire, where)
    bank = identity_bank(model, images)
    model.train()
    model.early[0].weight.requires_grad_(False)
    before = snapshot(model)
    tripwire.calls, tripwire.trip_at = 0, trip_at
    with pytest.raises(RuntimeError, match="tripwire"):
        run(model, bank, images, depth=2, n_inputs=8, n_designs=8)
    assert snapshot(model) == before
    assert all(m.training for m in model.modules())
    tripwire.trip_at = None
    run(model, bank, images, n_inputs=8, n_designs=8)
    assert snapshot(model) == before


def test_bad_inputs(bank, images):
    model = planted_model()
    cases = [   # (positional overrides, keyword arguments, error, message)
        (dict(layer="eerly"), {}, ValueError, "Close names"),
        (dict(layer="late"), {}, ValueError, "must run before"),
        (dict(concept=4), {}, ValueError, "`concept`"),
        ({}, dict(n_inputs=1), ValueError, "`n_inputs`"),
        ({}, dict(depth=0), ValueError, "`depth`"),
        ({}, dict(depth=2, child_layers=["stem", "stem"]), ValueError, "`child_layers`"),
        ({}, dict(depth=2, child_layers="stem"), TypeError, "`child_layers`"),
        ({}, dict(depth=2, child_layers=["late"]), ValueError, "`child_layers\\[0\\]`"),
        (dict(layer="stem"), dict(depth=2), ValueError, "child_layers"),
        ({}, dict(method="ace"), ValueError, "`method`"),
        ({}, dict(importance="shap"), ValueError, "`importance`"),
        ({}, dict(n_concepts=0), ValueError, "`n_concepts`"),
        ({}, dict(preprocess=3), TypeError, "`preprocess`"),
        ({}, dict(seed=-1), ValueError, "`seed`"),
        ({}, dict(seed=0.5), TypeError, "`seed`"),
        (dict(images=images[:, :, :16, :16]), {}, ValueError, "`images`"),
        (dict(images=images[:3]), {}, ValueError, "`images`"),
        (dict(bank="bank"), {}, TypeError, "`bank`"),
        (dict(model="model"), {}, TypeError, "`model`"),
    ]
    for positional, keywords, error, message in cases:
        args = dict(model=model, bank=bank, images=images, concept=0, layer="early")
        args.update(positional)
        with pytest.raises(error, match=message):
            decompose_concept(*args.values(), **{"progress": False, **keywords})
    # A layer after the parent's: the bank at `early`, decomposed at `late`.
    early_bank = identity_bank(model, images, layer="early")
    with pytest.raises(ValueError, match="`layer` 'late' must run before `bank.layer` 'early'"):
        decompose_concept(model, early_bank, images, 0, "late", progress=False)
    # A concept absent from every input (no blue in these images).
    no_blue = tile_images(6, colours=(0, 1, 3))
    with pytest.raises(ValueError, match="present"):
        decompose_concept(model, identity_bank(model, no_blue), no_blue, 1, "early", progress=False)


# ---------------------------------------------------------------------------------------------
# End to end on the reference dataset and CNN
# ---------------------------------------------------------------------------------------------

def test_reference_cnn_end_to_end():
    """~15 s of CPU time (2 threads), so it runs with the fast tests."""
    from conceptkit.datasets import make_concept_dataset, reference_model

    model = reference_model()
    data = make_concept_dataset(12, seed=0, split="val")
    class_images = data.images[data.labels == 0]
    explanation = conceptkit.ConceptExplainer(model, "block3", n_concepts=4, seed=0,
                                              progress=False).fit(class_images, 0)
    tree = explanation.subconcepts(int(explanation.ranking[0]), "block2", n_concepts=3,
                                   n_inputs=16, n_designs=8, depth=2)
    assert tree.depth == 2 and tree.sub_layer == "block2"
    assert {child.sub_layer for child in tree.children if child.note is None} == {"block1"}
    for node in tree.nodes():
        if node.importance is not None:
            values = node.importance.importances
            assert np.isfinite(values).all() and (values >= 0).all()   # total Sobol indices
            assert values.max() > 0
    json.dumps(tree.to_dict())
