"""Regression tests for reviewed bugs in the factorizers, their metrics and their persistence.

Each test checks real values (scikit-learn's own results or a closed form), not stored outputs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition import non_negative_factorization, sparse_encode

from conceptkit.concepts import (
    NMF,
    ConceptBank,
    PCAConcepts,
    SparseDictionary,
    TopKSAE,
    bank_from_activations,
    fit_streaming,
    metrics,
    streaming_error,
    transform_streaming,
)
from conceptkit.concepts import _nmf_torch as kernels
from conceptkit.concepts._base import MAX_SAVED_ITERATIONS
from conceptkit.concepts._methods import restrict_bank
from conceptkit.extraction import Provenance
from conceptkit.io import FormatError, load_file, save_file


def _provenance(n: int) -> Provenance:
    return Provenance("image", np.arange(n), np.tile([0, 0, 8, 8], (n, 1)), (8, 8))


# ----------------------------------------------------------------- torch_mu on small values
@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_torch_mu_updates_follow_scikit_learn_at_every_scale(scale):
    """The multiplicative updates replace only exact-zero denominators (scikit-learn's rule);
    clamping every denominator below float32's eps shrank small-valued factors to zero."""
    rng = np.random.default_rng(0)
    A = np.abs(rng.standard_normal((50, 10))) * scale
    U0 = np.abs(rng.standard_normal((50, 3))) * np.sqrt(scale)
    W0 = np.abs(rng.standard_normal((3, 10))) * np.sqrt(scale)
    U_ref, W_ref, _ = non_negative_factorization(
        A, W=U0.copy(), H=W0.copy(), n_components=3, init="custom", solver="mu", max_iter=50,
        tol=0.0)
    Ut, W = torch.from_numpy(U0.T.copy()), torch.from_numpy(W0.copy())
    n_iter = kernels.fit_mu(torch.from_numpy(A), Ut, W, max_iter=50, tol=0.0,
                            reg=(0.0, 0.0, 0.0, 0.0))
    assert n_iter == 50
    np.testing.assert_allclose(W.numpy(), W_ref, rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(Ut.numpy().T, U_ref, rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_torch_mu_fits_small_valued_activations_like_scikit_learn(scale):
    A = (np.abs(np.random.default_rng(0).standard_normal((50, 10))) * scale).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = NMF(3, solver="torch_mu", random_state=0).fit(A)
        ref = SkNMF(3, solver="mu", random_state=0).fit(A)
    norm = np.linalg.norm(A.astype(np.float64))
    assert ours.components_.max() > 0
    assert ours.reconstruction_err_ / norm == pytest.approx(ref.reconstruction_err_ / norm,
                                                            rel=1e-3)


# ----------------------------------------------------------------- restrict_bank and top_k
def test_restrict_bank_keeps_the_autoencoders_sparsity():
    """A TopKSAE with ``top_k=None`` codes ``max(k // 10, 1)`` concepts a row: restricting it to
    fewer concepts must keep the count it was fitted with (ACE drops clusters this way)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 10)).astype(np.float32)
    bank = bank_from_activations(TopKSAE(20, epochs=3, random_state=0), X, _provenance(200))
    fitted_k = max(20 // 10, 1)
    assert bank.factorizer._k_active == fitted_k
    kept = restrict_bank(bank, np.arange(12))
    assert kept.factorizer._k_active == fitted_k
    codes = np.asarray(kept.encode(X))
    assert ((codes > 0).sum(axis=1) <= fitted_k).all()
    assert ((codes > 0).sum(axis=1) == fitted_k).mean() > 0.9
    # and never more active codes than concepts kept
    assert restrict_bank(bank, np.arange(1)).factorizer._k_active == 1


# ----------------------------------------------------------------- metrics of NMF(relu=True)
def test_extraction_metrics_compare_with_the_clipped_input_of_a_relu_nmf():
    S = np.random.default_rng(0).standard_normal((50, 10))
    nmf = NMF(3, relu=True, random_state=0).fit(S)
    recon = nmf.inverse_transform(nmf.transform(S))
    clipped = np.maximum(S, 0)
    norms = np.linalg.norm(clipped, axis=1)
    kept = norms > 0
    expected = np.mean(np.linalg.norm(clipped - recon, axis=1)[kept] / norms[kept])
    got = metrics.extraction_metrics(nmf, S, ["relative_l2"])["relative_l2"]
    assert got == pytest.approx(expected, rel=1e-12)
    # the Fréchet distance, too, compares the reconstruction with the clipped input
    assert metrics.extraction_metrics(nmf, S, ["frechet_distance"])["frechet_distance"] == (
        pytest.approx(metrics.frechet_distance(clipped, recon), rel=1e-9))
    # streaming_error measures the same thing
    error, norm = streaming_error(nmf, [S])
    assert error == pytest.approx(np.linalg.norm(clipped - recon), rel=1e-6)


# ----------------------------------------------------------------- SparseDictionary encoders
@pytest.mark.parametrize("algorithm", ["omp", "lars"])
def test_sparse_dictionary_counting_encoders_take_n_nonzero_coefs(algorithm):
    X = np.random.default_rng(0).standard_normal((40, 10))
    est = SparseDictionary(6, transform_algorithm=algorithm, transform_n_nonzero_coefs=3,
                           random_state=0, max_iter=20).fit(X)
    expected = sparse_encode(X, est.components_, algorithm=algorithm, n_nonzero_coefs=3)
    np.testing.assert_allclose(est.transform(X), expected, rtol=1e-10, atol=1e-12)
    assert ((est.transform(X) != 0).sum(axis=1) <= 3).all()
    # an alpha these encoders do not read is refused instead of silently ignored
    with pytest.raises(ValueError, match="transform_alpha"):
        SparseDictionary(6, transform_algorithm=algorithm, transform_alpha=0.01).fit(X)
    with pytest.raises(ValueError, match="transform_n_nonzero_coefs"):
        SparseDictionary(6, transform_n_nonzero_coefs=2).fit(X)  # lasso_lars reads alpha


def test_sparse_dictionary_file_with_an_unused_transform_alpha_still_loads(tmp_path):
    """Files saved when ``transform_alpha`` was accepted with "omp" hold one; it never changed
    their codes, so they load (and encode as they did)."""
    X = np.random.default_rng(0).standard_normal((40, 10)).astype(np.float32)
    bank = bank_from_activations(SparseDictionary(4, transform_algorithm="omp", random_state=0,
                                                  max_iter=20), X, _provenance(40))
    path = bank.save(tmp_path / "bank.safetensors")
    tensors, meta = load_file(path, kind="ConceptBank", version=1)
    meta["factorizer"]["params"]["transform_alpha"] = 0.01
    save_file(tmp_path / "old.safetensors", tensors, meta, kind="ConceptBank", version=1)
    old = ConceptBank.load(tmp_path / "old.safetensors")
    assert old.factorizer.transform_alpha is None
    np.testing.assert_array_equal(np.asarray(old.encode(X)), np.asarray(bank.encode(X)))


# ----------------------------------------------------------------- reconstruction_err_
@pytest.mark.parametrize("scale", [1e-30, 1e25])
def test_reconstruction_error_has_no_float32_underflow_or_overflow(scale):
    """||A - U W|| of float32 activations is summed in float64, scale-free: an all-zero NMF
    dictionary no longer reads as a perfect fit, nor a large residual as Inf."""
    rng = np.random.default_rng(0)
    A = (rng.standard_normal((50, 10)) * scale).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scikit-learn's explained variance
        pca = PCAConcepts(3).fit(A)
    A64 = A.astype(np.float64)
    U = pca.transform(A).astype(np.float64)
    expected = np.linalg.norm(A64 - (U @ pca.components_.astype(np.float64)
                                     + pca.mean_.astype(np.float64)))
    assert np.isfinite(pca.reconstruction_err_) and pca.reconstruction_err_ > 0
    assert pca.reconstruction_err_ == pytest.approx(expected, rel=1e-4)


def test_reconstruction_error_of_an_all_zero_nmf_dictionary_is_the_norm_of_the_data():
    A = (np.abs(np.random.default_rng(0).standard_normal((50, 10))) * 1e-30).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nmf = NMF(3, solver="mu", random_state=0)
        U = nmf.fit_transform(A).astype(np.float64)
    expected = np.linalg.norm(A.astype(np.float64) - U @ nmf.components_.astype(np.float64))
    assert nmf.reconstruction_err_ > 0
    assert nmf.reconstruction_err_ == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------- partial_fit's n_iter_
def test_partial_fit_counts_its_calls_from_zero_after_a_batch_fit():
    A = np.abs(np.random.default_rng(0).standard_normal((60, 8))).astype(np.float32)
    nmf = NMF(3, solver="torch_hals", random_state=0).fit(A)
    assert nmf.n_iter_ > 1
    nmf.partial_fit(A[:20])
    assert nmf.n_iter_ == 1 and nmf.n_samples_seen_ == 20
    nmf.partial_fit(A[20:40])
    assert nmf.n_iter_ == 2 and nmf.n_samples_seen_ == 40


def test_streamed_online_nmf_counts_every_update():
    A = np.abs(np.random.default_rng(0).standard_normal((300, 8))).astype(np.float32)
    chunks = [A[i:i + 100] for i in range(0, 300, 100)]
    est = fit_streaming(NMF(3, solver="torch_hals", random_state=0), chunks, epochs=2,
                        batch_rows=50, init_rows=100, seed=0, progress=False)
    assert est.n_iter_ == 2 * 6  # six blocks of 50 rows, two epochs


# ----------------------------------------------------------------- transform_streaming
def test_transform_streaming_matches_transform_as_documented():
    """One block per chunk gives transform's codes exactly; smaller blocks give an iterative
    encoder's codes within its tolerance, and per-row encoders' codes exactly."""
    rng = np.random.default_rng(0)
    A = np.abs(rng.standard_normal((300, 12))).astype(np.float32)
    chunks = [A[i:i + 100] for i in range(0, 300, 100)]
    nmf = NMF(4, random_state=0).fit(A)
    whole = np.concatenate([nmf.transform(c) for c in chunks])
    np.testing.assert_array_equal(np.concatenate(list(transform_streaming(nmf, chunks))), whole)
    split = np.concatenate(list(transform_streaming(nmf, chunks, batch_rows=7)))
    assert np.abs(split - whole).max() <= 1e-3 * np.abs(whole).max()
    pca = PCAConcepts(4).fit(A)
    np.testing.assert_allclose(np.concatenate(list(transform_streaming(pca, chunks, batch_rows=7))),
                               pca.transform(A), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- tampered saved params
@pytest.fixture
def saved_bank(tmp_path):
    A = np.abs(np.random.default_rng(0).standard_normal((60, 8))).astype(np.float32)
    bank = bank_from_activations(NMF(3, random_state=0), A, _provenance(60))
    path = bank.save(tmp_path / "bank.safetensors")
    return path, tmp_path


def _resaved(path, tmp_path, **params):
    tensors, meta = load_file(path, kind="ConceptBank", version=1)
    meta["factorizer"]["params"].update(params)
    return save_file(tmp_path / "edited.safetensors", tensors, meta, kind="ConceptBank",
                     version=1)


@pytest.mark.parametrize("params, name", [
    ({"max_iter": 10**15, "tol": 0.0}, "max_iter"),
    ({"device": "x"}, "device"),
    ({"device": {}}, "device"),
    ({"device": []}, "device"),
    ({"device": 1e308}, "device"),
    ({"device": "meta"}, "device"),
    ({"relu": "x"}, "relu"),
    ({"progress": "x"}, "progress"),
    ({"max_iter": 0}, "max_iter"),
])
def test_loading_refuses_tampered_factorizer_params(saved_bank, params, name):
    path, tmp_path = saved_bank
    edited = _resaved(path, tmp_path, **params)
    with pytest.raises(FormatError, match=f"`{name}`"):
        ConceptBank.load(edited)


def test_loading_keeps_legitimate_params(saved_bank):
    path, tmp_path = saved_bank
    edited = _resaved(path, tmp_path, max_iter=MAX_SAVED_ITERATIONS, device="cuda:0", relu=True,
                      progress=False)
    loaded = ConceptBank.load(edited)
    assert loaded.factorizer.max_iter == MAX_SAVED_ITERATIONS
    assert loaded.factorizer.device == "cuda:0"
    edited = _resaved(path, tmp_path, max_iter=MAX_SAVED_ITERATIONS + 1)
    with pytest.raises(FormatError, match="`max_iter`"):
        ConceptBank.load(edited)


def test_sae_epochs_from_a_file_are_bounded(tmp_path):
    X = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    bank = bank_from_activations(TopKSAE(8, epochs=2, random_state=0), X, _provenance(40))
    path = bank.save(tmp_path / "bank.safetensors")
    edited = _resaved(path, tmp_path, epochs=10**9)
    with pytest.raises(FormatError, match="`epochs`"):
        ConceptBank.load(edited)
    edited = _resaved(path, tmp_path, distributed="yes")
    with pytest.raises(FormatError, match="`distributed`"):
        ConceptBank.load(edited)
