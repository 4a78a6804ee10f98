"""Second review of the explanation result and the manager: loaded maps are copies, attach
checks the model and preprocessing the file records, trust refits NMF from random starts,
caches follow class_id and weights, class ids agree in files, n_images is checked, loaded
explanations refuse stability, and the manager takes what a class report takes."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
import torch
from _forge import forge, set_meta
from _shared import planted_nmf, two_block_cnn

import conceptkit
from conceptkit import io
from conceptkit.concepts import NMF
from conceptkit.models import ModelBundle
from conceptkit.pipeline._assemble import compute_metrics
from conceptkit.pipeline._trust import concept_stability

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGES = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def scale(x):
    return (x - 0.45) / 0.25


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    model = two_block_cnn()
    fresh = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, seed=0, progress=False,
                                        preprocess=scale).fit(IMAGES, 1)
    path = tmp_path_factory.mktemp("second-review") / "fitted.safetensors"
    fresh.save(path, n_images=2, n_exemplars=2)
    return fresh, model, path


def _quiet_load(path):
    return conceptkit.load(path)


# ------------------------------------------------------------------ 3: loaded maps are copies
def test_writing_into_loaded_maps_changes_neither_the_explanation_nor_its_file(fitted, tmp_path):
    _, _, path = fitted
    loaded = conceptkit.load(path)
    saved = loaded.saved_maps.clone()
    maps = loaded.concept_maps()
    torch.testing.assert_close(maps, saved)
    maps.zero_()
    torch.testing.assert_close(loaded.concept_maps(), saved)
    again = conceptkit.load(loaded.save(tmp_path / "again.safetensors"))
    torch.testing.assert_close(again.saved_maps, saved)
    assert path.read_bytes() == (tmp_path / "again.safetensors").read_bytes()


# ------------------------------------------------------------------ 4: attach checks
def _attach_warnings(loaded, *args, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded.attach(*args, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_the_file_records_the_weights_and_preprocessing_and_attach_compares(fitted):
    fresh, model, path = fitted
    from conceptkit.extraction._fingerprint import (
        callable_identity,
        module_digest,
        structure_digest,
    )

    loaded = conceptkit.load(path)
    from conceptkit.extraction._fingerprint import code_digest, preprocess_identity

    # model_code and preprocess_reads: recorded since the fourth review of files
    assert loaded.fitted_with == {"model_digest": module_digest(model),
                                  "model_structure": structure_digest(model),
                                  "model_code": code_digest(model),
                                  "preprocess": callable_identity(scale),
                                  "preprocess_reads": preprocess_identity(scale)[1]}
    assert _attach_warnings(loaded, model, scale) == []  # the same model and preprocessing
    torch.testing.assert_close(loaded.concept_maps(IMAGES[:2], kind="coefficient"),
                               fresh.concept_maps(IMAGES[:2], kind="coefficient"))

    forgot = _attach_warnings(loaded, model)  # the preprocessing the fit used is left out
    assert len(forgot) == 1 and "preprocessing differs" in forgot[0]
    assert "no preprocessing" in forgot[0] and "weights" not in forgot[0]

    halved = two_block_cnn()
    with torch.no_grad():
        for weight in halved.parameters():
            weight.mul_(0.5)
    other = _attach_warnings(loaded, halved, scale)  # same shapes, other weights
    assert len(other) == 1 and "weights differ" in other[0]
    assert "preprocessing" not in other[0].split(";")[0]
    with pytest.raises(ValueError, match="weights differ"):
        loaded.attach(halved, scale, strict=True)


def test_attach_takes_a_bundle_with_its_preprocessing(fitted):
    fresh, model, path = fitted
    loaded = conceptkit.load(path)
    bundle = ModelBundle(model=model, name="two blocks", input_size=32, preprocess=scale)
    assert _attach_warnings(loaded, bundle) == []
    assert loaded.model_at_layer.model is model and loaded.model_at_layer.preprocess is scale
    torch.testing.assert_close(loaded.concept_maps(IMAGES[:2], kind="coefficient"),
                               fresh.concept_maps(IMAGES[:2], kind="coefficient"))
    with pytest.raises(TypeError, match="`model`"):
        loaded.attach("not a model")


def test_a_file_without_the_record_attaches_without_a_warning(fitted, tmp_path):
    _, model, path = fitted

    def drop(info, tensors):
        del info["meta"]["fitted_with"]

    old = conceptkit.load(forge(path, tmp_path / "old.safetensors", drop))
    assert old.fitted_with == {}
    assert _attach_warnings(old, model) == []  # unknown is not a mismatch
    # and it saves as it was loaded: no record appears
    resaved = old.save(tmp_path / "resaved.safetensors")
    assert (tmp_path / "old.safetensors").read_bytes() == open(resaved, "rb").read()


# ------------------------------------------------------------------ 5: trust's seeds
def test_trust_refits_nmf_from_a_random_start_per_seed():
    rows, _ = planted_nmf(n=200, c=20, k=3, seed=0)
    fitted = NMF(3, random_state=0).fit(rows)
    bank = types.SimpleNamespace(factorizer=fitted, activations=rows,
                                 components=np.asarray(fitted.components_))
    seen = []
    original = NMF.fit

    def spy(self, X, *args, **kwargs):
        seen.append((self.init, self.random_state))
        return original(self, X, *args, **kwargs)

    NMF.fit = spy
    try:
        out = concept_stability(bank, n_seeds=2, seed=0)
    finally:
        NMF.fit = original
    assert seen == [("random", 1000), ("random", 1001)]
    assert out["init"] == "random"
    assert min(out["per_concept"]) > 0.97  # planted concepts stay stable from any start


# ------------------------------------------------------------------ 7: caches and class ids
def test_metrics_follow_class_id_and_weights(tmp_path):
    model = two_block_cnn()
    cc = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, seed=0,
                                     progress=False).fit(IMAGES, 1)
    first = cc.compute_metrics()["importance"]
    cc.class_id = 2
    second = cc.compute_metrics()["importance"]
    assert second == compute_metrics(cc)["importance"]
    assert second != first
    cc.class_id = 1
    assert cc.compute_metrics()["importance"] == first
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)  # written in place: the logits the metrics read change
    third = cc.compute_metrics()["importance"]
    assert third == compute_metrics(cc)["importance"] and third != first


def test_a_file_whose_class_ids_disagree_is_refused(fitted, tmp_path):
    fresh, _, path = fitted
    forged = forge(path, tmp_path / "forged.safetensors", set_meta("class_id", value=3))
    with pytest.raises(io.FormatError, match="class_id 3 but importances of class 1"):
        conceptkit.load(forged)
    moved = conceptkit.load(path)
    moved.class_id = 3
    with pytest.raises(ValueError, match="`class_id` 3 disagrees with `importance.class_id` 1"):
        moved.save(tmp_path / "moved.safetensors")
    assert not (tmp_path / "moved.safetensors").exists()


# ------------------------------------------------------------------ 9 and 11: arguments
@pytest.mark.parametrize("value, error", [(-1, ValueError), (0, ValueError), (True, TypeError),
                                          (2.5, TypeError)])
def test_report_and_save_check_n_images(fitted, tmp_path, value, error):
    fresh, _, path = fitted
    with pytest.raises(error, match="`n_images`"):
        fresh.report(tmp_path / "report", n_images=value)
    with pytest.raises(error, match="`n_images`"):
        conceptkit.load(path).report(tmp_path / "loaded", n_images=value)
    with pytest.raises(error, match="`n_images`"):
        fresh.save(tmp_path / "x.safetensors", n_images=value)
    assert not (tmp_path / "report").exists() and not (tmp_path / "loaded").exists()


def test_a_loaded_explanation_refuses_stability(fitted):
    fresh, _, path = fitted
    loaded = conceptkit.load(path)
    assert loaded.compute_metrics() == loaded.saved_metrics
    with pytest.raises(ValueError, match="`stability`=True refits the factorizer"):
        loaded.compute_metrics(stability=True)


# ------------------------------------------------------------------ 12, 13, 14: the manager
@pytest.fixture(scope="module")
def manager_images():
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = np.array([0, 0, 0, 0, 2, 2, 2, 2])
    return images, labels


def _manager(**kwargs):
    return conceptkit.ConceptManager(two_block_cnn(), "block2", n_concepts=2, seed=0,
                                     progress=False, **kwargs)


def test_manager_report_before_fit_says_to_fit(tmp_path):
    with pytest.raises(ValueError, match="call `fit"):
        _manager().report(tmp_path)


def test_manager_classes_by_name_once_and_its_names_reach_the_explainer(manager_images):
    images, labels = manager_images
    manager = _manager(class_names={0: "zero", 2: "two"})
    assert manager.explainer.class_names == ["zero", "class 1", "two"]
    fitted = manager.fit(images, labels, classes=["two"])
    assert list(fitted) == [2] and fitted[2].class_name == "two"
    with pytest.raises(ValueError, match="`classes` lists class 2 twice"):
        manager.fit(images, labels, classes=[2, "two"])
    with pytest.raises(ValueError, match="`classes` lists class 0 twice"):
        manager.fit(images, labels, classes=[0, 0])
    with pytest.raises(ValueError, match="not a class name"):
        manager.fit(images, labels, classes=["seven"])
    with pytest.raises(TypeError, match="`class_names` keys"):
        _manager(class_names={"zero": 0})
    listed = _manager(class_names=["a", "b", "c", "d"])
    assert listed.explainer.class_names == ["a", "b", "c", "d"]


def test_manager_report_takes_trust_and_drawing_options_and_shows_notes(manager_images,
                                                                       tmp_path):
    images, labels = manager_images
    manager = _manager()
    manager.fit(images, labels)
    with pytest.raises(TypeError, match="unknown option"):
        manager.report(tmp_path / "bad", dpii=30)
    with pytest.raises(ValueError, match="`dpi`"):
        manager.report(tmp_path / "bad", dpi=0)
    index = manager.report(tmp_path / "out", trust=True, dpi=30, n_images=2, n_exemplars=2,
                           notes=["Checked by hand."])
    data = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [c["class_id"] for c in data["classes"]] == [0, 2]
    html = index.read_text()
    for row, cc in zip(data["classes"], manager.classes_.values()):
        page = tmp_path / "out" / row["page"]
        report = json.loads((page.parent / "report.json").read_text())
        assert "mean stability across seeds" in report["metrics"]["trust"]
        assert row["notes"] == report["notes"]
        assert row["notes"][:len(cc.notes()) + 1] == [*cc.notes(), "Checked by hand."]
        assert f'href="{row["page"]}#notes"' in html
        assert f'{len(row["notes"])} note' in html


def test_the_manager_groups_images_by_the_output_it_explains_and_results_own_their_images():
    """Without labels the manager grouped images by the model's first output whatever `output`
    said; a result's images were the caller's tensor (an in-place write changed the
    explanation). Found by the second review of the explanation result."""
    import torch
    from torch import nn

    from conceptkit import ConceptManager
    from conceptkit.datasets import make_concept_dataset, reference_model

    class TwoHeads(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.m = model

        def forward(self, x):
            y = self.m(x)
            return -y, y

    world = make_concept_dataset(4, seed=2, split="test")
    model = TwoHeads(reference_model())
    images = world.images.clone()
    manager = ConceptManager(model, "m.block4", output=1, n_concepts=3, seed=0, progress=False,
                             importance="gradient_input")
    manager.fit(images, classes=[0])
    with torch.no_grad():
        expected = model(images)[1].argmax(1).numpy()
    np.testing.assert_array_equal(manager.labels_, expected)
    result = manager.classes_[0]
    before = result.images.clone()
    images.mul_(0)
    torch.testing.assert_close(result.images, before)


# ------------------------------------------------------------------ 4b: attach and the structure
def _restructured():
    """Two blocks with the weights of ``two_block_cnn`` and another pooling and activation:
    the weights (and their digest) are the same, the maps are not."""
    model = two_block_cnn()
    model.block1[2] = torch.nn.AvgPool2d(2)
    model.block2[1] = torch.nn.Sigmoid()
    return model


def test_attach_refuses_a_model_of_another_structure_with_the_same_weights(fitted):
    from conceptkit.extraction._fingerprint import module_digest, structure_digest

    fresh, model, path = fitted
    other = _restructured()
    assert module_digest(other) == module_digest(model)
    with pytest.raises(ValueError, match="structure differs"):  # a fresh explanation
        fresh.attach(other, scale, strict=True)
    assert fresh.model_at_layer.model is model  # refused: nothing attached
    loaded = conceptkit.load(path)  # a file that records the structure
    loaded.fitted_with = {**loaded.fitted_with, "model_structure": structure_digest(model)}
    assert _attach_warnings(loaded, model, scale) == []
    with pytest.raises(ValueError, match="structure differs"):
        loaded.attach(other, scale, strict=True)
    warned = _attach_warnings(loaded, other, scale)
    assert len(warned) == 1 and "structure differs" in warned[0] and "weights" not in warned[0]


def test_a_file_saved_before_the_structure_was_recorded_attaches_to_its_model(fitted):
    """Its record holds the weights' digest and the description of the preprocessing of then
    (a module by its weights and repr, a transform by its repr): the same model and
    preprocessing attach without a word; the weights are still compared."""
    from torchvision import transforms

    from conceptkit.extraction._fingerprint import callable_identity, module_digest

    _, model, path = fitted

    def preprocessing():
        return transforms.Compose([transforms.Normalize([0.45] * 3, [0.25] * 3),
                                   transforms.Lambda(torch.abs)])

    loaded = conceptkit.load(path)
    loaded.fitted_with = {"model_digest": module_digest(model),
                          "preprocess": callable_identity(preprocessing(), legacy=True)}
    assert callable_identity(preprocessing()) != loaded.fitted_with["preprocess"]
    assert _attach_warnings(loaded, model, preprocessing()) == []
    halved = two_block_cnn()
    with torch.no_grad():
        for weight in halved.parameters():
            weight.mul_(0.5)
    with pytest.raises(ValueError, match="weights differ"):
        loaded.attach(halved, preprocessing(), strict=True)


def test_a_saved_file_records_the_structure_and_attach_refuses_another(fitted, tmp_path):
    _, model, path = fitted
    loaded = conceptkit.load(path)
    with pytest.raises(ValueError, match="structure differs"):
        loaded.attach(_restructured(), scale, strict=True)
    assert _attach_warnings(loaded, model, scale) == []
    resaved = conceptkit.load(loaded.save(tmp_path / "resaved.safetensors"))
    assert resaved.fitted_with == loaded.fitted_with
