"""ConceptExplainer / ConceptManager / ClassConcepts on a small in-test CNN."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import two_block_cnn
from torch import nn

import conceptkit
from conceptkit.extraction import CutError


def _model():
    return two_block_cnn()


@pytest.fixture(scope="module")
def fitted():
    model = _model()
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # Sobol (not the default pixel ablation): these tests check its plumbing and fast path.
    explainer = conceptkit.ConceptExplainer(model, "block2", n_concepts=4, seed=0, progress=False,
                                            method="craft", importance="sobol")
    return model, images, explainer.fit(images, 2, "two")


def test_fit_gives_importances_maps_and_examples(fitted):
    model, images, cc = fitted
    assert cc.components.shape == (4, 24)
    assert cc.importances.shape == (4,)
    assert np.all(cc.ci_low <= cc.importances + 1e-12) and np.all(cc.importances <= cc.ci_high + 1e-12)
    # the head is affine after pooling: Sobol used the exact fast path and agrees with the closed form
    assert cc.importance.params["fast_path"] is True
    closed = conceptkit.importance.concept_importance(
        cc.model_at_layer.h, cc.activations, cc.bank, 2, method="closed_form", progress=False)
    assert np.abs(closed.importances - cc.importances).mean() < 0.03
    maps = cc.concept_maps()
    assert maps.shape == (16, 4, 32, 32)
    again = cc.concept_maps(images[:3])  # a fresh pass of g gives the same maps
    assert torch.allclose(again, maps[:3], atol=1e-4)
    examples, ids = cc.top_examples(int(cc.ranking[0]), 5)
    assert examples.shape[0] == 5 and examples.shape[1] == 3 and ids.shape == (5,)
    assert set(cc.timings) == {"split", "activations", "discovery", "importance"}


def test_same_seed_same_explanation():
    model = _model()
    images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    runs = [conceptkit.ConceptExplainer(model, "block2", n_concepts=3, seed=7, progress=False).fit(images, 1)
            for _ in range(2)]
    assert torch.equal(runs[0].components, runs[1].components)
    assert np.array_equal(runs[0].importances, runs[1].importances)


def test_save_load_report_round_trip(fitted, tmp_path):
    _, _, cc = fitted
    path = cc.save(tmp_path / "cc.safetensors")
    again = conceptkit.load(path)
    assert isinstance(again, conceptkit.ClassConcepts)
    assert np.array_equal(again.importances, cc.importances)
    assert np.array_equal(again.ci_low, cc.ci_low)
    assert torch.equal(again.components, cc.components)
    assert again.class_name == "two" and again.layer == "block2"
    # float16 scaled per image and concept: 1e-3 relative to each map's largest value
    saved, fresh = again.concept_maps(), cc.concept_maps()[:8]
    peak = fresh.abs().amax(dim=(2, 3), keepdim=True)
    assert bool(((saved - fresh).abs() <= 1e-3 * peak).all())
    ex, _ = again.top_examples(0, 3)
    assert ex.shape[0] == 3
    again.report(tmp_path / "report")
    assert any((tmp_path / "report").rglob("index.html"))
    report_json = next((tmp_path / "report").rglob("report.json"))
    data = json.loads(report_json.read_text())
    shown = sorted(c["importance"] for c in data["concepts"])
    assert np.allclose(shown, np.sort(cc.importances))
    # the saved maps' kind (pixel maps on this CNN) is named in report.json and the caption
    assert data["maps_kind"] == "pixel"
    page = report_json.with_name("index.html").read_text()
    assert "(pixel maps: how much painting each pixel out lowers the concept)" in page


def test_saved_maps_keep_their_kind(fitted, tmp_path):
    """A file records the kind of its saved maps (pixel maps, the default); after loading,
    concept_maps() serves them for "auto" or that kind, and names the kind when asked for
    another; a file without the record (before 0.2) holds coefficient maps; a tampered kind is a
    FormatError."""
    from conceptkit import io

    _, _, cc = fitted
    path = cc.save(tmp_path / "cc.safetensors", n_images=4)
    again = conceptkit.load(path)
    assert again.saved_maps_kind == "pixel"
    torch.testing.assert_close(again.concept_maps(kind="pixel"), again.concept_maps())
    torch.testing.assert_close(again.concept_maps(), cc.concept_maps()[:4].half().float())
    with pytest.raises(ValueError, match="saved maps are of kind 'pixel'"):
        again.concept_maps(kind="coefficient")
    assert io.load_file(again.save(tmp_path / "again.safetensors"), kind="ClassConcepts",
                        version=2)[1]["maps_kind"] == "pixel"
    tensors, meta = io.load_file(path, kind="ClassConcepts", version=2)
    del meta["maps_kind"]
    io.save_file(tmp_path / "old.safetensors", tensors, meta, kind="ClassConcepts", version=2)
    old = conceptkit.load(tmp_path / "old.safetensors")
    assert old.saved_maps_kind == "coefficient"
    torch.testing.assert_close(old.concept_maps(kind="coefficient"), again.concept_maps())
    for bad in ("auto", "heat", 3):
        meta["maps_kind"] = bad
        io.save_file(tmp_path / "bad.safetensors", tensors, meta, kind="ClassConcepts", version=2)
        with pytest.raises(io.FormatError, match="maps of unknown kind"):
            conceptkit.load(tmp_path / "bad.safetensors")


def test_patch_size_is_refused_without_craft():
    with pytest.raises(ValueError, match="`patch_size` is the side of CRAFT's crops"):
        conceptkit.ConceptExplainer(_model(), "block2", n_concepts=2, patch_size=16)
    with pytest.raises(ValueError, match="`method` 'ace' does not crop"):
        conceptkit.ConceptExplainer(_model(), "block2", method="ace", patch_size=16)


def test_manager_groups_by_prediction_without_labels(tmp_path):
    model = _model()
    images = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    manager = conceptkit.ConceptManager(model, "block2", n_concepts=2, seed=0, progress=False,
                                        min_images=3)
    classes = manager.fit(images)
    with torch.no_grad():
        predicted = model(images).argmax(1).numpy()
    counts = {c: int((predicted == c).sum()) for c in np.unique(predicted)}
    assert set(classes) == {c for c, n in counts.items() if n >= 3}
    for class_id, cc in classes.items():
        assert cc.importance.per_input.shape[0] == counts[class_id]
    index = manager.report(tmp_path)
    assert index.exists() and json.loads((tmp_path / "index.json").read_text())


def test_model_left_as_found_even_when_fit_fails(snapshot):
    model = _model().train()
    model.block1[0].weight.requires_grad_(False)
    before = snapshot(model)
    # a bad option is refused when the explainer is built; one set afterwards fails in the
    # importance stage, after g ran
    with pytest.raises(ValueError, match="steps"):
        conceptkit.ConceptExplainer(model, "block2", importance="integrated_gradients",
                                    importance_kwargs={"steps": 0})
    explainer = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, progress=False,
                                            importance="integrated_gradients")
    explainer.importance_kwargs = {"steps": 0}
    with pytest.raises(ValueError, match="steps"):
        explainer.fit(torch.rand(6, 3, 32, 32), 0)  # fails in the importance stage, after g ran
    assert snapshot(model) == before
    conceptkit.ConceptExplainer(model, "block2", n_concepts=3, progress=False).fit(torch.rand(6, 3, 32, 32), 0)
    assert snapshot(model) == before


def test_bad_inputs_are_named():
    model = _model()
    with pytest.raises(ValueError, match="`method`"):
        conceptkit.ConceptExplainer(model, "block2", method="tcav")
    with pytest.raises(ValueError, match="`layer`"):
        conceptkit.ConceptExplainer(model, "block9")
    explainer = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, progress=False)
    with pytest.raises(ValueError, match="at least 2 images"):
        explainer.fit(torch.rand(1, 3, 32, 32), 0)
    with pytest.raises(ValueError, match="`class_id`"):
        explainer.fit(torch.rand(4, 3, 32, 32), 9)
    with pytest.raises(ValueError, match="`n_concepts`"):
        conceptkit.ConceptExplainer(model, "block2", n_concepts=50, progress=False).fit(torch.rand(2, 3, 8, 8), 0)


def test_invalid_cut_is_reported_before_any_work():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc((self.b(torch.relu(self.a(x))) + x).mean((2, 3)))

    explainer = conceptkit.ConceptExplainer(Residual(), "a", progress=False)
    with pytest.raises(CutError, match="skip connection"):
        explainer.fit(torch.rand(4, 3, 16, 16), 0)


def test_transformer_layer_keeps_each_inputs_cls_token(snapshot, tmp_path):
    import timm

    from conceptkit.concepts import SemiNMF

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3, num_classes=5).eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    before = snapshot(model)
    explainer = conceptkit.ConceptExplainer(model, "blocks.1", n_concepts=3, patch_size=16,
                                            method="craft", factorizer=SemiNMF(3, random_state=0), seed=0,
                                            progress=False)
    cc = explainer.fit(images, 2)
    assert snapshot(model) == before
    maps, prefix = explainer.activations(images, with_context=True)
    assert maps.shape == (6, 192, 2, 2) and prefix.shape == (6, 1, 192)
    with torch.no_grad():  # the maps head with each input's own CLS token is the model itself
        assert torch.allclose(explainer.maps_head(maps, prefix), model(images), atol=1e-5)
    assert cc.importance.per_input.shape == (6, 3) and np.all(np.isfinite(cc.importances))
    assert cc.concept_maps().shape == (6, 3, 32, 32)
    assert cc.concept_maps(kind="gradient").shape == (6, 3, 32, 32)
    # on transformer tokens the default maps are the tokens' own codes (coefficient maps)
    from conceptkit.maps import coefficient_maps

    expected = coefficient_maps(maps, cc.bank, (32, 32))
    assert torch.allclose(cc.concept_maps(), expected, atol=1e-3)
    assert torch.allclose(cc.concept_maps(images[:2]), expected[:2], atol=1e-3)
    assert not torch.allclose(cc.concept_maps(images[:2], kind="pixel"), expected[:2], atol=1e-3)
    page = cc.report(tmp_path / "vit-report")
    assert json.loads(Path(page).with_name("report.json").read_text())["maps_kind"] == "coefficient"


def test_a_loaded_explanation_finds_out_that_its_layer_gives_tokens(tmp_path):
    """Loaded, the layer's kind is unknown; attached to a ViT and shown new images, one image
    tells that the layer gives tokens, and the default maps are coefficient maps."""
    import timm

    from conceptkit.concepts import SemiNMF
    from conceptkit.maps import coefficient_maps

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3, num_classes=5).eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    explainer = conceptkit.ConceptExplainer(model, "blocks.1", n_concepts=3, method="ice",
                                            factorizer=SemiNMF(3, random_state=0), seed=0,
                                            progress=False)
    cc = explainer.fit(images, 2)
    path = cc.save(tmp_path / "vit.safetensors")
    loaded = conceptkit.load(path)
    loaded.attach(model)
    expected = coefficient_maps(explainer.activations(images[:3]), cc.bank, (32, 32))
    assert torch.allclose(loaded.concept_maps(images[:3]), expected, atol=1e-3)


def test_craft_maps_default_to_pixel_maps(fitted):
    from conceptkit.maps import coefficient_maps, pixel_maps, scale_matched_maps

    model, images, cc = fitted
    pixel = pixel_maps(model, images[:2], cc.bank)
    assert torch.allclose(cc.concept_maps(images[:2]), pixel, atol=1e-6)
    assert torch.allclose(cc.concept_maps()[:2], pixel, atol=1e-6)
    assert torch.allclose(cc.concept_maps(images[:2], kind="pixel"), pixel, atol=1e-6)
    expected = coefficient_maps(cc.activations[:2], cc.bank, (32, 32))
    # (the fitted maps reuse the codes computed at fit time: the same solve, to its tolerance)
    assert torch.allclose(cc.concept_maps(images[:2], kind="coefficient"), expected, atol=1e-3)
    assert torch.allclose(cc.concept_maps(kind="coefficient")[:2], expected, atol=1e-3)
    zoom = 32 / cc.bank.params["patch_size"]   # scale-matched maps on request
    assert torch.allclose(cc.concept_maps(images[:2], kind="scale_matched"),
                          scale_matched_maps(model, images[:2], cc.bank, zoom), atol=1e-6)
    assert cc.concept_maps(kind="coefficient").shape == (16, 4, 32, 32)
