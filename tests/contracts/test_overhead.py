"""The whole-class pipeline computes shared work once (codes, maps, metrics, the enlarged images' pass
of g) and single-threads small BLAS products, and its results stay exactly those of the plain
computation."""

import numpy as np
import pytest
import scipy.linalg
import torch
from _shared import two_block_cnn
from threadpoolctl import threadpool_info

import conceptkit
from conceptkit.concepts import NMF
from conceptkit.concepts import _nmf as nmf_module
from conceptkit.concepts.metrics import frechet_distance
from conceptkit.extraction import ActivationExtractor, CropSet, crops
from conceptkit.importance.metrics import CDeletion, CInsertion, CMuFidelity
from conceptkit.maps import coefficient_maps, scale_matched_maps


def _model():
    return two_block_cnn()


@pytest.fixture(scope="module")
def fitted():
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    explainer = conceptkit.ConceptExplainer(_model(), "block2", n_concepts=4, seed=0, progress=False)
    return explainer.fit(images, 1)


def test_class_activations_are_encoded_once(tmp_path, monkeypatch):
    images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    explainer = conceptkit.ConceptExplainer(_model(), "block2", n_concepts=3, seed=0, progress=False)
    calls = []
    original = NMF.transform

    def spy(self, A):
        calls.append(A.shape[0])
        return original(self, A)

    monkeypatch.setattr(NMF, "transform", spy)
    cc = explainer.fit(images, 2)
    cc.concept_maps()
    cc.metrics  # noqa: B018 - computed on first access
    cc.report(tmp_path / "report")
    cc.save(tmp_path / "class.safetensors")
    positions = 10 * 16 * 16  # every position of the class images' feature maps
    assert calls.count(positions) == 1


def test_shared_codes_give_the_same_maps_and_metrics(fitted):
    cc = fitted
    size = tuple(cc.images.shape[-2:])
    maps = cc.concept_maps(kind="coefficient")
    torch.testing.assert_close(maps, coefficient_maps(cc.activations, cc.bank, size), rtol=0, atol=0)
    maps.zero_()  # the caller owns what it gets: the shared codes are untouched
    assert cc.concept_maps(kind="coefficient").abs().sum() > 0
    per_input = cc.importance.per_input
    metrics = cc.metrics["importance"]
    for metric in (CDeletion(), CInsertion(), CMuFidelity(seed=0)):
        plain = metric(cc.model_at_layer.h, cc.activations, cc.bank, cc.class_id, per_input)
        assert metrics[metric.name]["value"] == pytest.approx(plain, rel=1e-12, abs=1e-12)


def test_scale_matched_maps_run_g_once_and_default_maps_need_no_enlarged_pass(tmp_path,
                                                                            monkeypatch):
    """Scale-matched maps enlarge the class images: one pass of g over them, kept for later
    calls; the default (coefficient) maps of report and save reuse the fitted codes instead."""
    from conceptkit.pipeline import _result as _results

    images = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    model = _model()
    cc = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, seed=0, progress=False,
                                     method="craft", importance="sobol").fit(images, 0)
    passes = []
    original = _results._Enlarged.iter_batches

    def spy(self, batch_size):
        passes.append(len(self))
        return original(self, batch_size)

    monkeypatch.setattr(_results._Enlarged, "iter_batches", spy)
    maps = cc.concept_maps(kind="scale_matched")
    zoom = 32 / cc.bank.params["patch_size"]
    torch.testing.assert_close(maps, scale_matched_maps(model, images, cc.bank, zoom), rtol=0, atol=1e-6)
    maps.zero_()
    assert cc.concept_maps(kind="scale_matched").abs().sum() > 0
    cc.report(tmp_path / "report")
    cc.save(tmp_path / "class.safetensors")
    assert passes == [9]
    fresh = conceptkit.ConceptExplainer(model, "block2", n_concepts=3, seed=0, progress=False,
                                        method="craft", importance="sobol").fit(images, 0)
    passes.clear()
    fresh.report(tmp_path / "again", n_images=6)
    fresh.save(tmp_path / "again.safetensors", n_images=5)
    assert passes == []


def test_pixel_maps_of_the_fitted_images_are_computed_once(tmp_path, monkeypatch):
    """The default maps (pixel maps: a backward pass per concept) of the class images are
    computed once, by pixel ablation during the fit, and reused by maps, report and save; a new
    bank or new images recompute them."""
    import conceptkit.maps as maps_module

    images = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    seen = []
    original = maps_module.pixel_maps

    def spy(model, batch, bank, **kwargs):
        seen.append(batch.shape[0])
        return original(model, batch, bank, **kwargs)

    monkeypatch.setattr(maps_module, "pixel_maps", spy)
    cc = conceptkit.ConceptExplainer(_model(), "block2", n_concepts=3, seed=0,
                                     progress=False).fit(images, 0)
    assert cc.importance.params["maps"] == "pixel" and seen == [7]
    first = cc.concept_maps()
    first.zero_()  # the caller owns what it gets: the kept maps are untouched
    assert cc.concept_maps().abs().sum() > 0
    cc.report(tmp_path / "report", n_images=4)
    cc.save(tmp_path / "class.safetensors", n_images=3)
    assert seen == [7]
    torch.testing.assert_close(cc.concept_maps(), original(cc.model_at_layer.model, images,
                                                           cc.bank), rtol=0, atol=0)
    import dataclasses

    other = dataclasses.replace(cc, bank=conceptkit.ConceptExplainer(
        _model(), "block2", n_concepts=2, seed=1, progress=False).fit(images, 0).bank)
    seen.clear()
    assert other.concept_maps().shape[1] == 2 and seen == [7]


def test_replacing_the_bank_recomputes_the_codes(fitted):
    cc = fitted
    first = cc._class_codes()
    assert cc._class_codes() is first
    refit = conceptkit.ConceptExplainer(cc.model_at_layer.model, "block2", n_concepts=2, seed=1,
                                        progress=False).fit(cc.images, 1)
    import dataclasses

    other = dataclasses.replace(cc, bank=refit.bank)
    assert other._class_codes().shape[1] == 2


def _frechet_reference(A, B):
    mu1, mu2 = A.mean(0), B.mean(0)
    S1, S2 = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    root = scipy.linalg.sqrtm(S1 @ S2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(S1 + S2 - 2 * root))


@pytest.mark.parametrize("n, m", [(30, 40), (40, 300), (300, 25), (200, 250)])
def test_frechet_factor_forms_equal_the_textbook_formula(n, m):
    """Fewer rows than features use the rows as covariance factors; the value is unchanged."""
    rng = np.random.default_rng(n + m)
    c = 60
    A = rng.standard_normal((n, c)) @ rng.standard_normal((c, c)) / 4 + 1.0
    B = rng.standard_normal((m, 8)) @ rng.standard_normal((8, c))
    assert frechet_distance(A, B) == pytest.approx(_frechet_reference(A, B), rel=1e-7)
    assert frechet_distance(B, A) == pytest.approx(frechet_distance(A, B), rel=1e-7)


def test_crops_of_non_finite_images_are_still_refused():
    images = torch.rand(2, 3, 16, 16)
    good = crops(images, 8)
    bad_source = images.clone()
    bad_source[1, 0, 3, 3] = float("nan")
    bad = CropSet(bad_source, good.provenance, good.patch_size, good.stride, good.image_size)
    assert good.all_finite() and not bad.all_finite()
    extractor = ActivationExtractor(_model(), "block2", progress=False)
    assert extractor(good).shape[0] == len(good)
    with pytest.raises(ValueError, match="NaN or Inf"):
        extractor(bad)


def test_small_nmf_products_run_on_one_blas_thread():
    small = np.ones((100, 20), dtype=np.float32)
    with nmf_module._blas_threads(small, 5):
        inside = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert inside and all(n == 1 for n in inside)
    large = np.ones((1, 1), dtype=np.float32)
    large = np.lib.stride_tricks.as_strided(large, shape=(100_000, 2048), strides=(0, 0))
    before = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    with nmf_module._blas_threads(large, 25):
        unchanged = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert unchanged == before
