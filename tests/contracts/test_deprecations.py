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
    explainer = conceptkit.ConceptExplainer(reference_model(), "block4", n_concepts=3,
                                            patch_size=16, seed=0, progress=False, n_designs=8)
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
    with pytest.raises(TypeError, match="both"):
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
