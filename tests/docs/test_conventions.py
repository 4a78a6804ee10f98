"""The names docs/conventions.md sets for counts: ``n_<what is counted>`` (no bare ``n``, no
``num_*``) and ``n_top_concepts`` for how many of the most important concepts a figure shows.
The old names keep working for one version, with a DeprecationWarning."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest

from conceptkit.datasets import make_concept_dataset, reference_model

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def atlas():
    from conceptkit import ConceptAtlas

    world = make_concept_dataset(6, seed=3, split="test")
    return ConceptAtlas(reference_model(), "block4", 6, method="ice", importance="closed_form",
                        seed=0, progress=False).fit(world)


def _same_with_old_name(call, old, new, value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        now = call(**{new: value})
    with pytest.warns(DeprecationWarning, match=f"`{old}`.*`{new}`"):
        before = call(**{old: value})
    return now, before


def test_atlas_counts_are_named_after_what_they_count(atlas):
    assert "n_pairs" in inspect.signature(atlas.most_confused_pairs).parameters
    now, before = _same_with_old_name(atlas.most_confused_pairs, "n", "n_pairs", 2)
    assert now == before and len(now) == 2
    now, before = _same_with_old_name(lambda **k: atlas.top_images(1, with_maps=False, **k),
                                      "n", "n_images", 3)
    assert list(now.image_ids) == list(before.image_ids) and len(now.image_ids) == 3
    with pytest.raises(ValueError, match="`n_images`"):
        atlas.top_images(1, n_images=0)
    with pytest.raises(ValueError, match="`n_pairs`"):
        atlas.most_confused_pairs(n_pairs=0)


def test_likely_layers_counts_layers():
    from conceptkit.models import likely_layers

    model = reference_model()
    now, before = _same_with_old_name(lambda **k: likely_layers(model, 64, **k), "n", "n_layers", 2)
    assert now == before == ["block4", "block3"]


def test_small_vit_counts_heads_and_reads_the_old_key_of_saved_records():
    from conceptkit.datasets._architectures import build_model, small_vit

    now, before = _same_with_old_name(
        lambda **k: small_vit(n_classes=3, embed_dim=32, depth=1, **k), "num_heads", "n_heads", 2)
    assert now.blocks[0].attn.num_heads == before.blocks[0].attn.num_heads == 2
    with pytest.raises(ValueError, match="multiple of `n_heads`"):
        small_vit(embed_dim=30, n_heads=4)
    # the shipped ViT records say num_heads: they build without a warning, and an error names
    # the key as the record spells it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model("vit", {"n_classes": 3, "embed_dim": 32, "depth": 1, "num_heads": 4})
    assert model.blocks[0].attn.num_heads == 4
    with pytest.raises(ValueError, match="multiple of `num_heads`"):
        build_model("vit", {"embed_dim": 30, "num_heads": 4})
    assert '"num_heads"' in (ROOT / "conceptkit/datasets/weights/shapes_vit.json").read_text()


def test_figures_count_the_concepts_they_show_with_n_top_concepts():
    from conceptkit.report import concept_overlay, plot_concept_heatmaps, plot_concept_overlays

    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 16, 16)).astype(np.float32)
    maps = rng.random((2, 4, 4, 4)).astype(np.float32)
    now, before = _same_with_old_name(lambda **k: concept_overlay(images, maps, **k),
                                      "n_concepts", "n_top_concepts", 2)
    np.testing.assert_array_equal(now, before)
    for plot in (plot_concept_overlays, plot_concept_heatmaps):
        _same_with_old_name(lambda plot=plot, **k: plot(images, maps, **k),
                            "n_concepts", "n_top_concepts", 2)


def test_the_conventions_page_states_the_rule_for_concepts_shown():
    text = " ".join((ROOT / "docs/conventions.md").read_text().split())
    assert "is **`n_top_concepts`**" in text
    for name in ("n_pairs", "n_layers", "n_heads"):
        assert f"`{name}`" in text


def test_a_confusion_counts_the_concepts_it_lists_with_n_top_concepts(atlas):
    a, b = atlas.most_confused_pairs(n_pairs=1)[0][:2]
    result = atlas.explain_confusion(a, b, min_images=1)
    now, before = _same_with_old_name(result.to_dict, "n", "n_top_concepts", 2)
    assert now == before and len(now["concepts"]) == 2
    assert [c["concept"] for c in now["concepts"]] == [int(j) for j in result.concepts[:2]]
    with pytest.raises(ValueError, match="`n_top_concepts`"):
        result.to_dict(n_top_concepts=0)


def test_the_cbms_count_the_top_concepts_they_return_with_n_top_concepts():
    from conceptkit.bottleneck import CAVBank, PosthocCBM

    rng = np.random.default_rng(0)
    bank = CAVBank(np.eye(4)[:3] + 0.1, np.zeros(3), ["a", "b", "c"])
    model = PosthocCBM(bank, max_iter=50, seed=0, progress=False).fit(
        rng.normal(size=(40, 4)), rng.integers(0, 2, 40))
    assert "n_top_concepts" in inspect.signature(model.top_concepts).parameters
    for old in ("n", "n_concepts"):
        now, before = _same_with_old_name(lambda **k: model.top_concepts(0, **k), old,
                                          "n_top_concepts", 1)
        assert now == before and len(now) <= 1
    with pytest.raises(ValueError, match="`n_top_concepts`"):
        model.top_concepts(0, n_top_concepts=0)
    with pytest.raises(TypeError, match="got `n` and `n_concepts`.*pass only `n_top_concepts`"):
        model.top_concepts(0, n=1, n_concepts=1)  # it named `n_top_concepts`, never passed
