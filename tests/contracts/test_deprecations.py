"""Every name renamed in 0.2 still works for one version and says what replaces it.

The rest of the test suite uses the new names only; this module is where the old ones are called.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from conceptkit.concepts import NMF, bank_from_activations
from conceptkit.extraction import Provenance


def _bank(n_features=6, k=3):
    rng = np.random.default_rng(0)
    A = (rng.uniform(size=(40, k)) @ rng.uniform(size=(k, n_features))).astype(np.float32)
    prov = Provenance("image", np.arange(40), np.zeros((40, 4)), (8, 8))
    return bank_from_activations(NMF(k, random_state=0, max_iter=300), A, prov)


def test_maps_differentiable_codes_moved_to_the_bank():
    import conceptkit.maps

    bank = _bank()
    pooled = bank.activations[:4].clone().requires_grad_(True)
    with pytest.warns(DeprecationWarning, match="encode_differentiable"):
        old = conceptkit.maps.differentiable_codes
    torch.testing.assert_close(old(bank, pooled), bank.encode_differentiable(pooled))


def test_bottleneck_concept_bank_is_now_cav_bank():
    import conceptkit.bottleneck as bottleneck

    with pytest.warns(DeprecationWarning, match="CAVBank"):
        old = bottleneck.ConceptBank
    assert old is bottleneck.CAVBank
    with pytest.warns(DeprecationWarning):
        from conceptkit.bottleneck import ConceptBank  # noqa: F401 - the old import keeps working


@pytest.fixture(scope="module")
def explanation():
    """A small CRAFT explanation of the reference CNN (class 0)."""
    import conceptkit
    from conceptkit.datasets import make_concept_dataset, reference_model

    data = make_concept_dataset(4, image_size=32, seed=0)
    images = data.images[data.labels == 0]
    explainer = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=3, method="craft",
                                            patch_size=16, seed=0, progress=False)
    return explainer.fit(images, 0)


def test_pipeline_write_class_report_and_compute_metrics_left_the_face(explanation, tmp_path):
    import conceptkit.pipeline as pipeline
    from conceptkit.report import IndexEntry

    with pytest.warns(DeprecationWarning, match="build_class_report"):
        old = pipeline.write_class_report
    old_page = old(explanation, tmp_path / "old", n_exemplars=2).read_text()
    new_page = Path(explanation.report(tmp_path / "new", n_exemplars=2)).read_text()
    assert old_page == new_page
    assert isinstance(old(explanation, tmp_path / "b", return_entry=True), IndexEntry)
    with pytest.warns(DeprecationWarning, match="plumbing"):
        compute_metrics = pipeline.compute_metrics
    assert compute_metrics(explanation)["extraction"] == explanation.metrics()["extraction"]


def test_elastic_net_arguments_follow_scikit_learn(tmp_path):
    """PosthocCBM's strength `lam` is `alpha`; LabelFreeCBM's mix `alpha` is `l1_ratio`; files
    saved with the old names load under the new ones without a warning."""
    import warnings

    from conceptkit.bottleneck import CAVBank, LabelFreeCBM, PosthocCBM
    from conceptkit.io import load_file, save_file

    bank = CAVBank(np.eye(4)[:2] + 0.1, np.zeros(2), ["a", "b"])
    with pytest.warns(DeprecationWarning, match="`lam` of PosthocCBM"):
        model = PosthocCBM(bank, lam=1e-3)
    assert model.alpha == 1e-3 and "lam" not in model.get_params()
    with pytest.raises(TypeError, match="got `lam` and `alpha`.*pass only `alpha`"):
        PosthocCBM(bank, lam=1e-3, alpha=1e-2)
    with pytest.warns(DeprecationWarning, match="`alpha` of LabelFreeCBM"):
        lf = LabelFreeCBM(torch.nn.Identity(), None, ["x"], ["a", "b"], alpha=0.5)
    assert lf.l1_ratio == 0.5

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), rng.integers(0, 2, 40)
    path = PosthocCBM(bank, alpha=1e-3, max_iter=50, seed=0, progress=False).fit(x, y).save(
        tmp_path / "new.safetensors")
    tensors, meta = load_file(path, kind="posthoc_cbm", version=1)
    meta["params"]["lam"] = meta["params"].pop("alpha")  # as 0.1 wrote it
    save_file(tmp_path / "old.safetensors", tensors, meta, kind="posthoc_cbm", version=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = PosthocCBM.load(tmp_path / "old.safetensors")
    assert old.alpha == 1e-3


def test_size_and_count_arguments(explanation):
    """`size`/`output_size` -> `image_size`; bare `n`, `n_top`, `max_exemplars`,
    `thumbnail_concepts` -> `n_<what is counted>`."""
    from conceptkit.bottleneck import CAVBank, PosthocCBM
    from conceptkit.datasets import photo_views, sample_photos
    from conceptkit.extraction import crops
    from conceptkit.maps import upsample
    from conceptkit.report import concept_colors, concept_hex_colors, plot_exemplar_grid

    cc = explanation
    new, ids = cc.top_examples(0, n_exemplars=2, image_size=16)
    with pytest.warns(DeprecationWarning) as record:
        old, old_ids = cc.top_examples(0, n=2, size=16)
    messages = " ".join(str(w.message) for w in record)
    assert "`n` of ClassConcepts.top_examples" in messages and "`size`" in messages
    torch.testing.assert_close(old, new)
    np.testing.assert_array_equal(old_ids, ids)
    with pytest.warns(DeprecationWarning, match="`size`"):
        torch.testing.assert_close(cc.concept_maps(size=8), cc.concept_maps(image_size=8))
    with pytest.warns(DeprecationWarning, match="`n` of ConceptBank.top_rows"):
        np.testing.assert_array_equal(cc.bank.top_rows(0, n=3), cc.bank.top_rows(0, n_rows=3))
    images = torch.rand(2, 3, 16, 16)
    with pytest.warns(DeprecationWarning, match="`output_size` of crops"):
        old_crops = crops(images, 8, output_size=12)
    assert old_crops.image_size == (12, 12)
    with pytest.warns(DeprecationWarning, match="CropSet.output_size"):
        assert old_crops.output_size == (12, 12)
    maps = torch.rand(1, 2, 4, 4)
    with pytest.warns(DeprecationWarning):
        torch.testing.assert_close(upsample(maps, size=(8, 8)), upsample(maps, image_size=(8, 8)))
    with pytest.warns(DeprecationWarning):
        assert sample_photos(size=16, names=["coffee"])["coffee"].shape == (3, 16, 16)
    photo = torch.rand(3, 32, 32)
    with pytest.warns(DeprecationWarning):
        torch.testing.assert_close(photo_views(photo, 2, size=16, seed=1),
                                   photo_views(photo, 2, image_size=16, seed=1))
    with pytest.warns(DeprecationWarning):
        assert concept_colors(n=3) == concept_colors(n_concepts=3)
    with pytest.warns(DeprecationWarning):
        assert concept_hex_colors(n=2) == concept_hex_colors(2)
    with pytest.warns(DeprecationWarning, match="max_exemplars"):
        plot_exemplar_grid([np.random.default_rng(0).random((3, 3, 8, 8))], max_exemplars=2)

    bank = CAVBank(np.eye(4)[:2] + 0.1, np.zeros(2), ["a", "b"])
    rng = np.random.default_rng(0)
    model = PosthocCBM(bank, max_iter=50, seed=0, progress=False).fit(
        rng.normal(size=(40, 4)), rng.integers(0, 2, 40))
    with pytest.warns(DeprecationWarning, match="`n` of PosthocCBM.top_concepts"):
        assert model.top_concepts(0, n=1) == model.top_concepts(0, n_top_concepts=1)


def test_rise_counts_its_masks_in_n_samples():
    from conceptkit.importance import concept_importance

    bank = _bank()
    head = torch.nn.Linear(6, 2)
    with pytest.warns(DeprecationWarning, match="`n_masks`"):
        old = concept_importance(head, bank.activations[:3], bank, 1, "rise", n_masks=16, seed=0,
                                 progress=False)
    new = concept_importance(head, bank.activations[:3], bank, 1, "rise", n_samples=16, seed=0,
                             progress=False)
    np.testing.assert_array_equal(old.per_input, new.per_input)
    assert new.params["n_samples"] == 16


def test_nmf_verbose_is_progress(tmp_path):
    import warnings

    from conceptkit.concepts import NMF, ConceptBank
    from conceptkit.io import load_file, save_file

    with pytest.warns(DeprecationWarning, match="`verbose` of NMF"):
        assert NMF(3, verbose=True).progress is True
    bank = _bank()
    path = bank.save(tmp_path / "bank.safetensors")
    tensors, meta = load_file(path, kind="ConceptBank", version=1)
    meta["factorizer"]["params"]["verbose"] = meta["factorizer"]["params"].pop("progress")
    save_file(tmp_path / "old.safetensors", tensors, meta, kind="ConceptBank", version=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bank saved by 0.1 loads without a warning
        old = ConceptBank.load(tmp_path / "old.safetensors")
    assert old.factorizer.progress is False


def test_maps_take_the_data_before_the_bank():
    from conceptkit.maps import coefficient_maps, gradient_maps, scale_matched_maps

    class TwoLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.act = torch.nn.ReLU()
            self.head = torch.nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.act(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = TwoLayer().eval()
    bank = _bank()
    bank.layer = "act"
    acts = torch.rand(2, 6, 3, 3)
    with pytest.warns(DeprecationWarning, match="argument order"):
        old = coefficient_maps(bank, acts)
    torch.testing.assert_close(old, coefficient_maps(acts, bank))
    images = torch.rand(2, 3, 8, 8)
    with pytest.warns(DeprecationWarning, match="argument order"):
        old = gradient_maps(model, bank, images)
    torch.testing.assert_close(old, gradient_maps(model, images, bank))
    with pytest.warns(DeprecationWarning, match="argument order"):
        old = scale_matched_maps(model, bank, images, 2.0)
    torch.testing.assert_close(old, scale_matched_maps(model, images, bank, 2.0))


def test_sobol_indices_returns_one_type():
    from conceptkit.importance import SobolResult, sobol_indices, sobol_indices_with_ci

    def f(x):
        return x[:, 0] + 2 * x[:, 1]

    plain = sobol_indices(f, 2, 64, seed=0)
    assert isinstance(plain, np.ndarray)
    with pytest.warns(DeprecationWarning, match="sobol_indices_with_ci"):
        old = sobol_indices(f, 2, 64, seed=0, confidence=0.9)
    new = sobol_indices_with_ci(f, 2, 64, seed=0, confidence=0.9)
    assert isinstance(old, SobolResult)
    np.testing.assert_array_equal(old.ci_low, new.ci_low)
    np.testing.assert_array_equal(new.indices, plain)


PLUMBING = [  # (face, name, where it lives now)
    ("conceptkit.extraction", "ACE_GREY", "conceptkit.extraction._decompose"),
    ("conceptkit.extraction", "TokenHead", "conceptkit.extraction._extractor"),
    ("conceptkit.extraction", "expected_in_channels", "conceptkit.extraction._extractor"),
    ("conceptkit.extraction", "infer_prefix_tokens", "conceptkit.extraction._extractor"),
    ("conceptkit.extraction", "maps_to_tokens", "conceptkit.extraction._extractor"),
    ("conceptkit.extraction", "tokens_to_maps", "conceptkit.extraction._extractor"),
    ("conceptkit.extraction", "get_layer", "conceptkit.extraction._layers"),
    ("conceptkit.extraction", "write_chunks", "conceptkit.extraction._store"),
    ("conceptkit.extraction", "finalize_store", "conceptkit.extraction._store"),
    ("conceptkit.concepts", "ace_keep_clusters", "conceptkit.concepts._methods"),
    ("conceptkit.concepts", "factorizer_from_state", "conceptkit.concepts._base"),
    ("conceptkit.concepts", "restrict_bank", "conceptkit.concepts._methods"),
    ("conceptkit.importance", "to_salib_layout", "conceptkit.importance._design"),
    ("conceptkit.report", "class_slug", "conceptkit.report._write"),
    ("conceptkit.report", "json_ready", "conceptkit.io"),
    ("conceptkit.cli", "load_images", "conceptkit.cli._images"),
    ("conceptkit.pipeline", "compute_metrics", "conceptkit.pipeline._assemble"),
]


@pytest.mark.parametrize(("face", "name", "home"), PLUMBING)
def test_plumbing_left_the_faces_but_still_imports(face, name, home):
    import importlib

    module = importlib.import_module(face)
    assert name not in module.__all__
    with pytest.warns(DeprecationWarning, match=name):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="no attribute"):
        module.no_such_name  # noqa: B018 - an unknown name still fails plainly


def test_class_concepts_explainer_is_model_at_layer(explanation):
    with pytest.warns(DeprecationWarning, match="model_at_layer"):
        assert explanation.explainer is explanation.model_at_layer
