"""ConceptAtlas: one dictionary for all classes of the shapes world, questions answered from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import conceptkit
from conceptkit import ConceptAtlas, io
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.extraction import ActivationExtractor, finalize_store, write_chunks
from conceptkit.importance import concept_importance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world():
    return make_concept_dataset(12, seed=3, split="test")


@pytest.fixture(scope="module")
def fitted(world):
    model = reference_model()
    atlas = ConceptAtlas(model, "block4", 10, method="ice", importance="closed_form", seed=0,
                         progress=False, class_names=world.class_names)
    return atlas.fit(world)


def test_one_dictionary_and_the_per_class_importance_it_wraps(fitted, world):
    data = fitted.data_
    assert fitted.importance.shape == (6, 10) and data.scores.shape == (72, 10)
    # Row c is exactly the pipeline's importance of class c on the shared codes.
    rows = np.flatnonzero(world.labels.numpy() == 2)
    acts = data.acts[torch.as_tensor(rows)]
    direct = concept_importance(fitted.explainer.maps_head, acts, data.bank, 2,
                                method="closed_form", progress=False)
    np.testing.assert_allclose(fitted.importance.values[2], direct.importances, rtol=1e-5,
                               atol=1e-8)
    np.testing.assert_allclose(fitted.importance.ci_low[2], direct.ci_low, rtol=1e-5, atol=1e-8)
    # Every class relies on something; the model's logits are recorded for every image.
    assert fitted.importance.important().any(axis=1).all()
    with torch.no_grad():
        logits = reference_model()(world.images[:5]).double().numpy()
    np.testing.assert_allclose(data.logits[:5], logits, rtol=1e-4, atol=1e-4)


def test_the_top_concept_of_a_class_is_found_on_its_causal_parts(fitted, world):
    # The shapes world: class c is drawn with parts c and c + 1 (mod 6).
    concepts = world.concepts.numpy()
    for class_id in range(6):
        top = int(np.argmax(fitted.importance.values[class_id]))
        found = fitted.top_images(top, 10, with_maps=False)
        parts = world.class_concepts[class_id]
        carried = concepts[found.image_ids][:, parts].max(axis=1)
        assert carried.mean() >= 0.8, (class_id, top, carried)


def test_explain_confusion_is_the_margin_drop_of_removing_each_concept(fitted):
    a, b, probability = fitted.most_confused_pairs(1)[0]
    assert 0 < probability < 1
    result = fitted.explain_confusion(a, b, min_images=4)
    assert len(result.image_ids) >= 4 and result.per_image.shape == (len(result.image_ids), 10)
    # Recompute one image's numbers by hand.
    data, head = fitted.data_, fitted.explainer.maps_head
    acts, _ = data.activations(result.image_ids[:1])
    codes = torch.as_tensor(np.asarray(data.bank.encode(acts))).float()
    with torch.no_grad():
        def margin(U):
            recon = torch.as_tensor(np.asarray(data.bank.decode(U.numpy()))).float()
            out = head(recon)
            return float(out[0, b] - out[0, a])
        base = margin(codes)
        j = result.top
        dropped = codes.clone()
        dropped[:, j] = 0
        assert result.per_image[0, j] == pytest.approx(base - margin(dropped), rel=1e-4, abs=1e-5)
    assert result.reconstructed_margins[0] == pytest.approx(base, rel=1e-4, abs=1e-5)
    assert result.contributions[result.top] == result.contributions.max()
    assert result.shared.dtype == bool and result.images.shape[0] <= 6
    shared = fitted.shared_concepts(a, b)
    assert [s["concept"] for s in shared] == [j for j in np.flatnonzero(result.shared)
                                              if j in {s["concept"] for s in shared}]


def test_concept_maps_and_search_with_maps(fitted, world):
    maps = fitted.concept_maps(world.images[:3])
    assert maps.shape == (3, 10, 64, 64) and float(maps.min()) >= 0
    found = fitted.top_images(4, 5, classes=[1, 2])
    assert set(found.labels.tolist()) <= {1, 2} and found.maps.shape == (5, 64, 64)
    assert np.all(np.diff(found.scores) <= 0)
    with pytest.raises(ValueError, match="classes"):
        fitted.top_images(0, 3, classes=[42])


def test_save_load_roundtrip_and_tampering(fitted, tmp_path):
    path = fitted.save(tmp_path / "atlas.safetensors")
    back = conceptkit.load(path)
    np.testing.assert_array_equal(back.importance.values, fitted.importance.values)
    np.testing.assert_array_equal(back.data_.scores, fitted.data_.scores)
    assert back.importance.params == fitted.importance.params  # the rule that ran, with it
    a, b, _ = fitted.most_confused_pairs(1)[0]
    assert back.shared_concepts(a, b) == fitted.shared_concepts(a, b)
    assert back.most_confused_pairs(2) == fitted.most_confused_pairs(2)
    with pytest.raises(RuntimeError, match="model"):
        back.explain_confusion(a, b)
    raw = bytearray(open(path, "rb").read())
    raw[-40:] = b"\x00" * 40
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw[: len(raw) - 7]))
    with pytest.raises(io.FormatError):
        conceptkit.load(bad)
    from pathlib import Path

    from _forge import forge

    def infinite_class(info, tensors):
        info["meta"]["classes"][0] = float("inf")

    forged = forge(Path(path), tmp_path / "forged.safetensors", infinite_class)
    with pytest.raises(io.FormatError, match="not a valid ConceptAtlas file"):
        conceptkit.load(forged)


def test_fit_from_a_maps_store_streams_the_dictionary(world, tmp_path):
    model = reference_model()
    extractor = ActivationExtractor(model, "block4", batch_size=32, progress=False)
    images = world.images[::2]
    labels = world.labels.numpy()[::2]
    write_chunks(lambda s, e: extractor(images[s:e]), len(images), tmp_path / "store",
                 chunk_size=10, layout="maps", progress=False)
    store = finalize_store(tmp_path / "store", len(images), chunk_size=10, layout="maps",
                           meta={"labels": labels.tolist()})
    atlas = ConceptAtlas(model, "block4", 6, method="ice", importance="closed_form", seed=0,
                         progress=False).fit(store, store_options={"max_iter": 20})
    assert atlas.importance.shape == (6, 6) and atlas.data_.images is None
    acts = extractor(images)
    np.testing.assert_allclose(atlas.data_.activations(np.array([7, 3]))[0].numpy(),
                               acts[[7, 3]].numpy(), rtol=1e-6)
    codes = np.asarray(atlas.data_.bank.encode(acts.numpy())).mean(axis=(2, 3))
    # Codes are NNLS solves stopped at the solver tolerance, per chunk here, all at once there.
    np.testing.assert_allclose(atlas.data_.scores, codes, rtol=1e-2, atol=1e-4)
    with pytest.raises(ValueError, match="labels"):
        ConceptAtlas(model, "block4", 4, method="ice", progress=False).fit(
            finalize_store(tmp_path / "store", len(images), chunk_size=10, layout="maps"))


def test_auto_importance_is_pixel_ablation_on_images_and_sobol_on_a_store(world, tmp_path):
    """``importance="auto"``: with images, row c is exactly ``pixel_ablation`` of class c's images
    painted where the atlas's own maps are in their top decile over all fitted images; important() then means a mean
    drop of P(class) >= 0.1 with the interval above 0. A store has no pixels: auto runs Sobol and
    an explicit pixel_ablation is refused before any fitting."""
    from conceptkit.pipeline import pixel_ablation

    model = reference_model()
    images, labels = world.images[::2], world.labels[::2]
    atlas = ConceptAtlas(model, "block4", 6, method="ice", seed=0, progress=False)
    atlas.fit(images, labels)
    imp = atlas.importance
    assert imp.method == "pixel_ablation" and imp.params["requested"] == "auto"
    assert imp.params["maps"] == "coefficient"  # a convolutional layer: the codes themselves
    # the rule that painted the regions is recorded (regions alone, the atlas's default)
    assert imp.params["n_segments"] is None and imp.params["quantile"] == 0.9
    assert imp.params["score"] == "probability" and imp.params["thresholds"] == "given"
    assert conceptkit.load(atlas.save(tmp_path / "pixel.safetensors")).importance.params == imp.params
    # One region threshold per concept for every class: its maps' top decile over all the
    # fitted images (sampled on every 4th row and column), not over one class's images.
    all_maps = atlas.concept_maps(images)
    sample = all_maps[:, :, ::4, ::4].transpose(0, 1).reshape(6, -1).double().numpy()
    cut = np.quantile(sample, 0.9, axis=1)
    np.testing.assert_allclose(atlas._map_thresholds(0.9), cut, rtol=1e-5, atol=1e-7)
    # several region sizes (importance_kwargs={"quantile": (...)}): one row of cuts per size
    np.testing.assert_allclose(atlas._map_thresholds((0.9, 0.95)),
                               np.quantile(sample, [0.9, 0.95], axis=1), rtol=1e-5, atol=1e-7)
    rows = np.flatnonzero(labels.numpy() == 3)
    # the atlas paints the map's regions alone (not grown to superpixels, as measured)
    direct = pixel_ablation(model, images[rows], all_maps[rows], 3, progress=False,
                            thresholds=cut, quantile=0.9, n_segments=None)
    np.testing.assert_allclose(imp.values[imp.row(3)], direct.importances, atol=1e-6)
    grown = pixel_ablation(model, images[rows], all_maps[rows], 3, progress=False,
                           thresholds=cut, quantile=0.9)
    assert not np.allclose(grown.importances, direct.importances, atol=1e-6)
    np.testing.assert_allclose(imp.ci_low[imp.row(3)], direct.ci_low, atol=1e-6)
    # In chunks of 2 images (the maps of a chunk at a time), the same numbers and interval.
    ids = np.flatnonzero(labels.numpy() == 3)
    with atlas.explainer.model_at_layer.whole_model() as forward:
        chunked = atlas._pixel_importance(forward, 3, ids, cut, chunk=2)
    np.testing.assert_allclose(chunked.importances, direct.importances, atol=1e-9)
    np.testing.assert_allclose(chunked.ci_high, direct.ci_high, atol=1e-9)
    # importance_kwargs={"n_segments": 50} grows the regions as the per-class explainer does
    atlas.explainer.importance_kwargs["n_segments"] = 50
    with atlas.explainer.model_at_layer.whole_model() as forward:
        chunked_grown = atlas._pixel_importance(forward, 3, ids, cut, chunk=2)
    del atlas.explainer.importance_kwargs["n_segments"]
    np.testing.assert_allclose(chunked_grown.importances, grown.importances, atol=1e-9)
    # no_region covers the whole class, not the last chunk; and a chunk where no concept reaches
    # the dataset's cut (here: cuts above every value but concept 0's) is measured, not refused
    assert chunked.params["no_region"] == direct.params["no_region"]
    assert imp.params["no_region"][imp.row(3)] == direct.params["no_region"]
    with atlas.explainer.model_at_layer.whole_model() as forward:
        lone = atlas._pixel_importance(forward, 3, ids, np.full(6, np.inf), chunk=1)
    assert lone.params["no_region"] == [0, 1, 2, 3, 4, 5] and np.all(lone.per_input == 0)
    # Past max_values the thresholds come from evenly spaced images (every 4th row and column).
    few = atlas._map_thresholds(0.9, max_values=4 * 256)    # 4 images of 16 x 16 samples
    spaced = np.unique(np.linspace(0, len(images) - 1, 4).astype(np.int64))
    np.testing.assert_allclose(few, np.quantile(all_maps[spaced][:, :, ::4, ::4].transpose(0, 1)
                                                .reshape(6, -1).double().numpy(), 0.9, axis=1),
                               rtol=1e-3, atol=1e-6)   # codes solved in other batches: NNLS tolerance
    expected = (imp.values >= 0.1) & (np.nan_to_num(imp.ci_low) > 0)
    np.testing.assert_array_equal(imp.important(), expected)
    np.testing.assert_array_equal(imp.important(relative=0.5),
                                  (imp.normalized() >= 0.5) & (np.nan_to_num(imp.ci_low) > 0))

    extractor = ActivationExtractor(model, "block4", batch_size=32, progress=False)
    write_chunks(lambda s, e: extractor(images[s:e]), len(images), tmp_path / "store",
                 chunk_size=12, layout="maps", progress=False)
    store = finalize_store(tmp_path / "store", len(images), chunk_size=12, layout="maps",
                           meta={"labels": labels.tolist()})
    with pytest.raises(ValueError, match="importance='pixel_ablation'.*store"):
        ConceptAtlas(model, "block4", 4, method="ice", importance="pixel_ablation",
                     progress=False).fit(store)
    on_store = ConceptAtlas(model, "block4", 4, method="ice", seed=0, progress=False)
    on_store.fit(store, store_options={"max_iter": 5})
    assert on_store.importance.method == "sobol"


@pytest.mark.parametrize("kwargs, match", [({"method": "ace"}, "method"),
                                           ({"importance": "shapley"}, "importance"),
                                           ({"factorizer": "nmf"}, "factorizer")])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ConceptAtlas(reference_model(), "block4", 4, **kwargs)


def test_bad_labels_and_model_left_as_found(world, snapshot):
    model = reference_model().train()
    before = snapshot(model)
    atlas = ConceptAtlas(model, "block4", 4, method="ice", importance="closed_form",
                         progress=False)
    with pytest.raises(ValueError, match="labels"):
        atlas.fit(world.images[:10], labels=np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="at least 2 classes"):
        atlas.fit(world.images[:10], labels=np.zeros(10, dtype=int))
    atlas.fit(world.images[::6], labels=world.labels[::6])
    assert snapshot(model) == before


def test_a_transformer_atlas_explains_confusions_with_the_cls_token_held(tmp_path):
    """At a ViT block the confusion margin is decomposed with each image's CLS token held at its
    value: every contribution equals the margin drop computed by hand through ``h(x, cls)``, and
    the report carries the confusions (it crashed, then left them out, before)."""
    import json

    from conceptkit.concepts import SemiNMF
    from conceptkit.datasets import small_vit

    torch.manual_seed(0)
    model = small_vit(n_classes=3, embed_dim=32, depth=2, n_heads=2).eval()
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(12) % 3
    atlas = ConceptAtlas(model, "blocks.0", 4, method="ice", factorizer=SemiNMF(4, random_state=0),
                         importance="gradient_input", seed=0, progress=False)
    atlas.fit(images, labels)
    result = atlas.explain_confusion(0, 1, min_images=3)
    data = atlas.data_
    acts, context = data.activations(result.image_ids)
    assert context is not None
    codes = torch.as_tensor(np.asarray(data.bank.encode(acts))).float()
    head = atlas.explainer.maps_head

    def margin(c: torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(np.asarray(data.bank.decode(c))).float()
        with torch.no_grad():
            logits = head(x, context).double()
        return (logits[:, 1] - logits[:, 0]).numpy()

    full = margin(codes)
    np.testing.assert_allclose(result.reconstructed_margins, full, rtol=1e-5, atol=1e-5)
    for j in range(4):
        dropped = codes.clone()
        dropped[:, j] = 0
        np.testing.assert_allclose(result.per_image[:, j], full - margin(dropped),
                                   rtol=1e-4, atol=1e-5)
    index = atlas.report(tmp_path / "report")
    saved = json.loads((index.parent / "atlas.json").read_text())
    assert len(saved["confusions"]) > 0
    assert "confusions" not in saved["meta"]


def test_the_report_header_says_when_a_concept_is_important(fitted, tmp_path):
    """The rule behind the heatmap's dots is in the page: relative for Sobol-like methods, the
    probability drop for pixel ablation."""
    import html

    from conceptkit.pipeline._atlas_io import important_rule

    index = fitted.report(tmp_path / "report")
    assert "at least 0.25 of the class's largest" in html.unescape(index.read_text())
    assert important_rule("pixel_ablation", None, None) == (
        "the mean drop of P(class) is at least 0.1, with the 95 % interval above 0")
    assert important_rule("sobol", 0.5, 0.01) == (
        "the importance is at least 0.01 and it is at least 0.5 of the class's largest, "
        "with the 95 % interval above 0")


def test_a_transformer_atlas_with_dense_codes_paints_the_regions_of_dominant_maps():
    """At a layer that gives tokens, with dense codes (SemiNMF: more than half positive), the
    atlas's regions are cut from dominant-concept maps (each position kept for its strongest
    concept, scaled by the 99th percentile of the fitted codes): the thresholds are their top
    decile over every fitted image, and a class's importance is pixel ablation of those maps
    with those thresholds. The default factorizer of tokens gives sparse codes: their own
    regions."""
    from conceptkit.concepts import SemiNMF
    from conceptkit.datasets import small_vit
    from conceptkit.maps import concept_scales, dominant_maps
    from conceptkit.pipeline import pixel_ablation

    torch.manual_seed(0)
    model = small_vit(n_classes=3, embed_dim=32, depth=2, n_heads=2).eval()
    images = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(12) % 3
    sparse = ConceptAtlas(model, "blocks.0", 4, method="ice", seed=0, progress=False,
                          importance="gradient_input").fit(images, labels)
    assert float((sparse.data_.bank.codes > 0).float().mean()) <= 0.5
    assert sparse._region_kind() == "coefficient"
    atlas = ConceptAtlas(model, "blocks.0", 4, method="ice", seed=0, progress=False,
                         factorizer=SemiNMF(4, random_state=0))
    atlas.fit(images, labels)
    assert float((atlas.data_.bank.codes > 0).float().mean()) > 0.5
    imp = atlas.importance
    assert imp.method == "pixel_ablation" and imp.params["maps"] == "dominant"
    bank = atlas.data_.bank
    acts = atlas.explainer.activations(images)
    maps = dominant_maps(acts, bank, (64, 64), scales=concept_scales(bank.codes))
    sample = maps[:, :, ::4, ::4].transpose(0, 1).reshape(4, -1).double().numpy()
    cut = np.quantile(sample, 0.9, axis=1)
    np.testing.assert_allclose(atlas._map_thresholds(0.9), cut, rtol=1e-4, atol=1e-6)
    rows = np.flatnonzero(labels.numpy() == 1)
    direct = pixel_ablation(model, images[rows], maps[rows], 1, progress=False,
                            thresholds=cut, quantile=0.9, n_segments=None)
    np.testing.assert_allclose(imp.values[imp.row(1)], direct.importances, atol=1e-5)


def test_a_store_of_transformer_tokens_is_refused_before_fitting(tmp_path):
    """A store of a ViT layer holds the patch tokens as maps, without the CLS token the rest of
    the model reads: the atlas says so (and to fit on the images) before any factorizer runs,
    instead of torch's LayerNorm shape error or NMF's advice to use a SemiNMF a store cannot fit."""
    from conceptkit.datasets import load_world
    from conceptkit.extraction import write_store

    world = load_world("shapes")
    model = world.model(arch="vit")
    data = world.sample(2, seed=0, split="test")
    extractor = ActivationExtractor(model, world.layers["vit"], progress=False)
    write_store(extractor, data.images, tmp_path / "store", chunk_size=8, layout="maps",
                progress=False, meta={"labels": data.labels.tolist()})
    atlas = ConceptAtlas(model, world.layers["vit"], 4, method="ice", seed=0, progress=False)
    with pytest.raises(ValueError, match="CLS/register tokens.*fit on the images"):
        atlas.fit(tmp_path / "store")
    assert atlas.data_ is None and not model.training


def _resize(name, *shape, dtype=None):
    def edit(info, tensors):
        tensors[name] = torch.zeros(shape, dtype=dtype or tensors[name].dtype)
    return edit


def _exemplar_id_past_the_images(info, tensors):
    tensors["exemplars.3.ids"] = tensors["exemplars.3.ids"].clone()
    tensors["exemplars.3.ids"][0] = 72


def _class_names_short(info, tensors):
    info["meta"]["class_names"] = info["meta"]["class_names"][:5]


def _classes_without_images(info, tensors):
    info["meta"]["classes"][-1] = 40
    tensors["logits"] = torch.zeros(72, 41, dtype=tensors["logits"].dtype)


#: Arrays whose shape disagrees with the atlas's 6 classes, 72 images and 10 concepts: each
#: loaded (re-signed) and failed later in `important()` or the report with a numpy error.
WRONG_SHAPES = {
    "ci-low": (_resize("importance.ci_low", 1, 2), r"importance.ci_low has shape \(1, 2\), "
                                                   r"expected \(6, 10\)"),
    "ci-high": (_resize("importance.ci_high", 6, 9), r"importance.ci_high has shape \(6, 9\)"),
    "labels-2d": (_resize("labels", 72, 1), r"labels has shape \(72, 1\)"),
    "logits-rows": (_resize("logits", 71, 6), r"logits has shape \(71, 6\)"),
    "logits-outputs": (_resize("logits", 72, 3), r"logits has shape \(72, 3\)"),
    "float-labels": (_resize("labels", 72, dtype=torch.float32), "labels must hold integers"),
    "exemplar-images": (_resize("exemplars.2.images", 3, 64, 64, dtype=torch.uint8),
                        r"exemplars.2.images has shape \(3, 64, 64\)"),
    "exemplar-image-dtype": (_resize("exemplars.2.images", 8, 3, 64, 64, dtype=torch.float32),
                             "exemplars.2.images .* dtype torch.float32"),
    "exemplar-maps": (_resize("exemplars.5.maps", 7, 64, 64), r"exemplars.5.maps has shape "
                                                              r"\(7, 64, 64\)"),
    "exemplar-labels": (_resize("exemplars.0.labels", 3), r"exemplars.0.labels has shape \(3,\)"),
    "exemplar-ids": (_exemplar_id_past_the_images, r"exemplars.3.ids must be image ids in "
                                                  r"\[0, 72\) \(72 images\); got ids from"),
    "class-names": (_class_names_short, "class_names must be a list of 6 names"),
    "classes": (_classes_without_images, r"classes \[0, 1, 2, 3, 4, 40\] must be distinct class "
                                          r"ids found in `labels`"),
}


@pytest.mark.parametrize("case", sorted(WRONG_SHAPES))
def test_atlas_arrays_that_disagree_with_its_metadata_are_refused_at_load(fitted, tmp_path, case):
    from pathlib import Path

    from _forge import forge

    path = Path(fitted.save(tmp_path / "atlas.safetensors"))
    edit, match = WRONG_SHAPES[case]
    forged = forge(path, tmp_path / f"{case}.safetensors", edit)  # re-signed: the digest passes
    with pytest.raises(io.FormatError, match="not a valid ConceptAtlas file: " + match) as err:
        conceptkit.load(forged)
    assert str(forged) in str(err.value)


def test_a_store_of_a_model_with_the_same_weights_and_another_structure_is_refused(world,
                                                                                  tmp_path):
    """The atlas compared a store's weights digest only: a model whose pooling was swapped
    (same weights) fitted its dictionary on the other model's maps without a word."""
    from conceptkit.extraction import write_store

    model = reference_model()
    extractor = ActivationExtractor(model, "block4", batch_size=32, progress=False)
    store = write_store(extractor, world.images[:12], tmp_path / "store", chunk_size=6,
                        layout="maps", progress=False, meta={"labels": [0, 1] * 6})
    other = reference_model()
    pools = [name for name, m in other.named_modules() if isinstance(m, torch.nn.MaxPool2d)]
    parent, _, leaf = pools[0].rpartition(".")
    setattr(other.get_submodule(parent) if parent else other, leaf, torch.nn.AvgPool2d(2))
    with pytest.raises(ValueError, match="same weights but another structure"):
        ConceptAtlas(other, "block4", 3, method="ice", importance="closed_form", seed=0,
                     progress=False).fit(store, store_options={"max_iter": 2})
