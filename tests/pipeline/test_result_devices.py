"""An explanation runs the model where its explainer was told to (gradient and scale-matched
maps included), and `conceptkit.load` never hides an import error."""

import sys

import pytest
import torch
from _shared import two_block_cnn

import conceptkit
import conceptkit.maps


@pytest.fixture(scope="module")
def fitted():
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    explainer = conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=3, seed=0,
                                            method="craft", progress=False, device="cpu:0")
    return explainer.fit(images, class_id=1), images


@pytest.mark.parametrize("kind, function", [("gradient", "gradient_maps"),
                                            ("scale_matched", "scale_matched_maps")])
def test_maps_of_new_images_run_on_the_explainers_device(fitted, monkeypatch, kind, function):
    result, images = fitted
    seen = {}
    original = getattr(conceptkit.maps, function)

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(conceptkit.maps, function, spy)
    maps = result.concept_maps(images[:2] * 0.5, kind=kind)
    assert maps.shape == (2, 3, 32, 32) and torch.isfinite(maps).all()
    assert str(seen["device"]) == "cpu:0"


def test_attach_gives_a_loaded_explanation_its_model_back(fitted, tmp_path):
    result, images = fitted
    loaded = conceptkit.load(result.save(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match="attach"):
        loaded.concept_maps(images, kind="coefficient")
    loaded.attach(result.model_at_layer.model)
    torch.testing.assert_close(loaded.concept_maps(images, kind="coefficient"),
                               result.concept_maps(images, kind="coefficient"))


def test_load_does_not_hide_an_import_error(fitted, tmp_path, monkeypatch):
    result, _ = fitted
    path = result.save(tmp_path / "c.safetensors")
    monkeypatch.setitem(sys.modules, "conceptkit.bottleneck", None)  # importing it now fails
    with pytest.raises(ImportError):
        conceptkit.load(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_explainer_leaves_a_cpu_model_on_the_cpu_and_matches_cpu():
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = two_block_cnn()
    results = {}
    for device in ("cpu", "cuda"):
        explainer = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, seed=0,
                                                progress=False, device=device)
        result = explainer.fit(images, class_id=1)
        maps = result.concept_maps(images[:2], kind="gradient")
        results[device] = (result.importances, maps)
        assert next(model.parameters()).device.type == "cpu"
    assert abs(results["cpu"][0] - results["cuda"][0]).max() < 1e-3
    torch.testing.assert_close(results["cpu"][1], results["cuda"][1], atol=1e-4, rtol=1e-3)
