"""Fifth review of maps and recursion: the parent code recursion differentiates is checked on
the inputs it decomposes, the public map functions refuse bad input in their own words, empty
Grad-CAM maps are said, and pixel ablation's thresholds and regions hold no copy of all maps.

Tiny planted models throughout (a few milliseconds a forward pass), CPU only.
"""

from __future__ import annotations

import tracemalloc
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.concepts import ICE, NMF, ConceptBank
from conceptkit.concepts._base import factorizer_from_state
from conceptkit.extraction import ActivationExtractor, Provenance
from conceptkit.importance import ConceptImportance
from conceptkit.maps import (
    dominant_maps,
    gradient_maps,
    pixel_maps,
    scale_matched_maps,
    upsample,
)
from conceptkit.pipeline._pixel import (
    _threshold_rows,
    concept_regions,
    grow_to_segments,
    superpixels,
)
from conceptkit.pipeline._recursion import (
    ConceptTree,
    _concept_rows,
    _cut_inputs,
    _rewarn,
    decompose_concept,
)


def _conv1x1(weights: list[list[float]], bias: list[float]) -> nn.Conv2d:
    w = torch.tensor(weights, dtype=torch.float32)
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])
        conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return conv


def _identity(channels: int = 3) -> nn.Conv2d:
    return _conv1x1(np.eye(channels).tolist(), [0.0] * channels)


def edge_model(stride: int = 1) -> nn.Sequential:
    """``late`` = ReLU(centre - mean of the 8 neighbours - 0.001) per colour channel (replicate
    padding): 0 on any flat image, positive on the inside of a colour's edges. ``early`` averages
    ``stride`` x ``stride`` pixels, so each ICE cell of ``late`` covers that many."""
    edge = nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate")
    with torch.no_grad():
        weight = torch.zeros(3, 3, 3, 3)
        for c in range(3):
            weight[c, c] = -1 / 8
            weight[c, c, 1, 1] = 1.0
        edge.weight.copy_(weight)
        edge.bias.fill_(-0.001)
    early = [_identity(), nn.ReLU()] + ([nn.AvgPool2d(stride)] if stride > 1 else [])
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(_identity(), nn.ReLU()), early=nn.Sequential(*early),
        late=nn.Sequential(edge, nn.ReLU()), pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(), fc=nn.Linear(3, 2)))


def square_images(start: int, stop: int) -> torch.Tensor:
    """Four 16-px black images, each with one square of a pure colour."""
    images = torch.zeros(4, 3, 16, 16)
    for i in range(4):
        images[i, i % 3, start:stop, start:stop] = 1.0
    return images


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught if "ConvergenceWarning" not in type(w.message).__name__]


# ---------------------------------------------------------------------------------------------
# Finding 1: the parent code on the resized inputs
# ---------------------------------------------------------------------------------------------

def test_recursion_refuses_a_concept_whose_resized_inputs_have_no_code():
    """Every 1-pixel ICE cell of ``late`` resized to the image is a flat colour, whose edge code
    is 0: nothing can be decomposed, and the tree says so instead of 0.000 importances."""
    torch.manual_seed(0)
    model, images = edge_model(), square_images(4, 12)
    bank = ICE(2, seed=0, progress=False).fit(model, "late", images)
    rows = _concept_rows(bank, 0, 8)
    assert rows.size == 8 and bool((bank.codes[rows, 0] > 0).all())   # the rows have the concept
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = decompose_concept(model, bank, images, 0, "early", n_concepts=2, n_inputs=8,
                                 method="ice", importance="gradient_input", seed=0,
                                 progress=False)
    assert tree.children == [] and tree.sub_bank is None and tree.importance is None
    assert tree.input_rows.size == 0 and tree.image_ids.size == 0
    assert "its code is 0 on 8 of its 8 top inputs" in tree.note
    assert "0 input(s) left, at least 2 are needed" in tree.note
    texts = _messages(caught)
    assert len(texts) == 1 and texts[0].startswith("decompose_concept: concept 0 at `late` was "
                                                   "not decomposed")
    assert "class" not in texts[0]
    assert "0.000" not in tree.render() and "not decomposed" in tree.render()


def test_recursion_decomposes_only_the_inputs_that_keep_the_parent_code():
    """With 2 x 2-pixel cells, the cells across the square's edge keep an edge once resized and
    the others are flat: the kept inputs are exactly those with a positive parent code,
    computed here from the model itself."""
    torch.manual_seed(0)
    model, images = edge_model(stride=2), square_images(5, 11)
    bank = ICE(2, seed=0, progress=False).fit(model, "late", images)
    rows = _concept_rows(bank, 0, 16)
    pooled = ActivationExtractor(model, "late", reduce="mean", progress=False)(
        _cut_inputs(images, bank, rows))
    codes = np.asarray(bank.encode(pooled))[:, 0]
    expected = rows[codes > 0]
    assert 2 <= expected.size < rows.size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = decompose_concept(model, bank, images, 0, "early", n_concepts=2, n_inputs=16,
                                 method="ice", importance="gradient_input", seed=0,
                                 progress=False)
    np.testing.assert_array_equal(tree.input_rows, expected)
    np.testing.assert_array_equal(tree.image_ids, bank.provenance.image_ids[expected])
    dropped = rows.size - expected.size
    assert tree.note == (f"decomposed on {expected.size} of its {rows.size} top inputs: its code "
                         f"is 0 on {dropped} of its {rows.size} top inputs once each is resized "
                         f"to the image (its row's code is positive, the resized input's is "
                         f"not), so no sub-concept can change it there")
    assert tree.importance.per_input.shape == (expected.size, 2)
    assert np.any(tree.importance.per_input)        # measured on inputs where the code moves
    assert len(tree.sub_bank.provenance.image_ids) == expected.size * 8 * 8
    # half or more kept: noted, not warned
    assert not [t for t in _messages(caught) if t.startswith("decompose_concept")]


def test_all_zero_sub_concept_importances_are_said_in_the_recursions_words():
    """A score that no sub-concept moves: the warning names the parent concept's code, not a
    class, and the tree shows the importances as not measured."""
    bank = ConceptBank(components=torch.eye(3), codes=torch.ones(4, 3),
                       provenance=Provenance("image", np.arange(4), np.zeros((4, 4)), (8, 8)),
                       layer="late", method="craft", params={}, factorizer=None)
    root = ConceptTree(concept=1, layer="late", bank=bank, input_rows=np.arange(4),
                       image_ids=np.arange(4))
    zeros = np.zeros((4, 2))
    root.sub_layer, root.importance = "early", ConceptImportance(
        per_input=zeros, importances=zeros.mean(0), ci_low=zeros[0], ci_high=zeros[0],
        method="gradient_input", class_id=0)
    root.children = [ConceptTree(concept=j, layer="early", bank=bank, input_rows=np.arange(2),
                                 image_ids=np.arange(2), importance_for_parent=0.0, parent=root)
                     for j in range(2)]
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        warnings.warn("concept_importance(method='gradient_input'): every importance is 0 — "
                      "the class 0 score of `h` does not change ... that `class_id` is the "
                      "class meant.", RuntimeWarning, stacklevel=1)
        warnings.warn("concept_importance(method='sobol'): the class 0 score of `h` is constant "
                      "up to the rounding of its dtype. No concept of `bank` moves the score on "
                      "those inputs.", RuntimeWarning, stacklevel=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _rewarn(recorded, root, root.importance)
    texts = _messages(caught)
    assert texts == [
        "concept_importance(method='sobol'): the code of concept 1 at `late` (the parent "
        "coefficient) is constant up to the rounding of its dtype. No sub-concept moves it on "
        "those inputs.",
        "decompose_concept: every sub-concept importance of concept 1 at `late` is 0 — the code "
        "of concept 1 at `late` (the parent coefficient) does not change (up to rounding) when "
        "any sub-concept at `early` is scaled or removed, on any of the 4 inputs. The "
        "importances measure nothing; the tree shows them as not measured."]
    assert "every sub-concept importance is 0" in root.note
    rendered = root.render()
    assert "0.000" not in rendered and rendered.count("importance not measured") == 2


# ---------------------------------------------------------------------------------------------
# Finding 2: the public map functions on bad input
# ---------------------------------------------------------------------------------------------

def test_gradient_and_scale_matched_maps_refuse_0_255_images(cnn):
    model, images, bank = cnn
    for call in (lambda: gradient_maps(model, images * 255, bank),
                 lambda: scale_matched_maps(model, images * 255, bank, 2.0)):
        with pytest.raises(ValueError, match=r"`images` must hold pixel colours in \[0, 1\]; "
                                             r"got values in \[.*\]: they look like 0-255"):
            call()


def test_gradient_maps_need_a_map_layer_with_a_grid(cnn):
    model, images, bank = cnn
    with pytest.raises(ValueError, match=r"^`map_layer` 'fc' must give feature maps \(N, C, h, w\) "
                                         r"or transformer tokens .* got output of shape \(1, 3\)"):
        gradient_maps(model, images[:1], bank, map_layer="fc")
    with pytest.warns(UserWarning, match=r"`map_layer` 'pool' has a 1 x 1 spatial grid"):
        maps = gradient_maps(model, images[:1], bank, map_layer="pool")
    assert maps.shape == (1, 3, 16, 16)


def test_upsample_takes_an_int_side_and_numpy_and_says_what_is_wrong(cnn):
    _, _, bank = cnn
    maps = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    pair = upsample(maps, (16, 16))
    torch.testing.assert_close(upsample(maps, 16), pair, rtol=0, atol=0)
    torch.testing.assert_close(upsample(maps.numpy(), 16), pair, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`maps` must be \(N, k, h, w\); got shape \(3, 4, 4\) "
                                         r"\(one image's maps\? add a batch axis"):
        upsample(maps[0], 16)
    with pytest.raises(ValueError, match="`image_size` must be >= 1; got 0."):
        upsample(maps, (0, 16))
    with pytest.raises(TypeError, match=r"`maps` must be a torch.Tensor or numpy array"):
        upsample([[1.0]], 16)


def test_dominant_maps_scales_errors(cnn):
    _, _, bank = cnn
    acts = torch.rand(2, 8, 4, 4)
    with pytest.raises(ValueError, match=r"^`scales` must hold 3 positive values \(one per "
                                         r"concept\); got 0 values\.$"):
        dominant_maps(acts, bank, scales=[])
    with pytest.raises(TypeError, match=r"^`scales` must hold 3 positive numbers \(one per "
                                        r"concept\); got str 'abc'\.$"):
        dominant_maps(acts, bank, scales="abc")
    with pytest.raises(ValueError, match=r"got 3 values, smallest 0\.$"):  # the documented one
        dominant_maps(acts, bank, scales=np.zeros(3))


def test_pixel_and_gradient_maps_on_images_too_small_for_the_model(cnn):
    model, images, bank = cnn
    for call in (lambda: pixel_maps(model, images[:1, :, :2, :2], bank),
                 lambda: pixel_maps(model, images[:1, :, :1], bank),
                 lambda: gradient_maps(model, images[:1, :, :2, :2], bank)):
        with pytest.raises(ValueError, match=r"^`images` of \d+x\d+ pixels are too small for "
                                             r"Sequential up to `bank.layer` 'block2': .* It "
                                             r"runs on images of at least 4x4 pixels"):
            call()


def test_scale_matched_maps_zoom_must_leave_a_pixel(cnn):
    model, images, bank = cnn
    with pytest.raises(ValueError, match=r"^`zoom` 0.001 shrinks the 16x16 images to 0x0 "
                                         r"pixels; .* \(above 0.0312 here\)"):
        scale_matched_maps(model, images, bank, 1e-3)


# ---------------------------------------------------------------------------------------------
# Finding 3: Grad-CAM maps that are 0 everywhere
# ---------------------------------------------------------------------------------------------

def absolute_model() -> nn.Sequential:
    """``late`` = ReLU(r - 0.5) + ReLU(0.5 - r) = |r - 0.5|. Its Grad-CAM weight on the red
    channel of ``early`` is the share of bright-red positions minus that of dark ones, so on a
    mostly dark image it is negative and ReLU(weight * r) is 0 everywhere, while the concept's
    code (the mean of |r - 0.5|) is positive."""
    torch.manual_seed(0)
    late = nn.Sequential(_conv1x1([[1, 0, 0], [-1, 0, 0]], [-0.5, 0.5]), nn.ReLU(),
                         _conv1x1([[1, 1]], [0.0]))
    return nn.Sequential(OrderedDict(
        early=nn.Sequential(_identity(), nn.ReLU()), late=late, pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(), fc=nn.Linear(1, 2)))


def test_empty_gradient_maps_are_said_and_kept():
    model = absolute_model()
    images = torch.zeros(3, 3, 8, 8)
    images[0, 0, :2, :2] = 1.0      # mostly dark: an empty map
    images[1, 0, :, :6] = 1.0       # mostly bright red: a map on the red pixels
    images[2, 0] = 0.5              # code 0 (|r - 0.5| = 0 everywhere): empty, not counted
    acts = ActivationExtractor(model, "late", progress=False)(images)
    factorizer = factorizer_from_state("NMF", NMF(1).get_params(),
                                       {"components_": np.ones((1, 1), dtype=np.float32)}, {})
    bank = ConceptBank(components=factorizer.components_,
                       codes=factorizer.transform(acts.mean((2, 3))),
                       provenance=Provenance("image", np.arange(3), np.zeros((3, 4)), (8, 8)),
                       layer="late", method="craft", params={}, factorizer=factorizer)
    with pytest.warns(UserWarning, match=r"^gradient_maps: 1 of the 3 \(image, concept\) maps are "
                                         r"0 everywhere although the concept's code is positive "
                                         r"in the image \(concepts \[0\]\)\. Grad-CAM keeps only "
                                         r"positive evidence"):
        maps = gradient_maps(model, images, bank, map_layer="early")
    peaks = maps.flatten(2).amax(2)[:, 0]
    assert float(peaks[0]) == 0.0 and float(peaks[1]) > 0 and float(peaks[2]) == 0.0
    # the values themselves: ReLU(alpha * r) with alpha = (share bright - share dark) / 64
    alpha = (48 / 64 - 16 / 64) / 64
    torch.testing.assert_close(maps[1, 0], torch.relu(alpha * images[1, 0]), rtol=1e-5, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradient_maps(model, images[1:], bank, map_layer="early")   # none empty: no warning


# ---------------------------------------------------------------------------------------------
# Finding 4: pixel ablation's memory
# ---------------------------------------------------------------------------------------------

def test_thresholds_hold_no_float64_copy_of_all_maps():
    maps = torch.rand(8, 10, 64, 64, generator=torch.Generator().manual_seed(0))
    quantiles = (0.9, 0.925, 0.95, 0.975)
    expected = np.quantile(maps.transpose(0, 1).reshape(10, -1).double().numpy(), quantiles,
                           axis=1)
    tracemalloc.start()
    try:
        rows = _threshold_rows(None, quantiles, maps)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(np.stack(rows), expected)   # the same numbers, bit for bit
    assert peak < maps.numel() * maps.element_size() / 2, peak   # old: 4x the float32 maps


def test_regions_grow_in_place_to_the_same_regions():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=g)
    maps = upsample(torch.rand(3, 4, 4, 4, generator=g), 32, mode="nearest")  # 8-px blocks
    regions = concept_regions(maps, 0.9)
    labels = superpixels(images, 20)
    copied = grow_to_segments(regions, labels)
    kept = regions.clone()
    grown = grow_to_segments(regions, labels, inplace=True)
    assert grown is regions and torch.equal(grown, copied)
    assert not torch.equal(kept, copied)   # the regions did grow
