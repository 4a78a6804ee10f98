"""Concept factorizers: reference agreement, planted recovery, the estimator contract."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _shared import planted_nmf
from scipy.optimize import nnls
from scipy.special import softmax
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition import PCA, sparse_encode
from sklearn.exceptions import NotFittedError

from conceptkit import io
from conceptkit.concepts import (
    FACTORIZERS,
    NMF,
    Factorizer,
    ICAConcepts,
    KMeansConcepts,
    PCAConcepts,
    SemiNMF,
    SparseDictionary,
    TopKSAE,
)
from conceptkit.concepts._base import factorizer_from_state
from conceptkit.concepts._nmf import SOLVERS
from conceptkit.concepts.metrics import matched_cosine

TORCH_SOLVERS = [name for name, solver in SOLVERS.items() if solver.backend == "torch"]


# --------------------------------------------------------------------------- synthetic data
def sparse_codes(rng, n, k, active, low=0.5, high=2.0, signed=False):
    codes = np.zeros((n, k))
    index = np.argsort(rng.random((n, k)), axis=1)[:, :active]
    values = rng.uniform(low, high, (n, active))
    if signed:
        values *= rng.choice([-1.0, 1.0], (n, active))
    np.put_along_axis(codes, index, values, axis=1)
    return codes


def unit_rows(M):
    return M / np.linalg.norm(M, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def nmf_data():
    return planted_nmf()


@pytest.fixture(scope="module")
def cd_error(nmf_data):
    A, _ = nmf_data
    return NMF(5, solver="cd", random_state=0).fit(A).reconstruction_err_


def small_instances():
    """One quick configuration of every factorizer, for contract tests."""
    return [
        NMF(4, solver="cd", random_state=0),
        NMF(4, solver="mu", random_state=0),
        NMF(4, solver="torch_hals", random_state=0),
        NMF(4, solver="torch_mu", random_state=0),
        SemiNMF(4, random_state=0),
        KMeansConcepts(4, random_state=0, n_init=2),
        KMeansConcepts(4, codes="soft", random_state=0, n_init=2),
        PCAConcepts(4),
        ICAConcepts(4, random_state=0),
        SparseDictionary(4, alpha=0.5, max_iter=20, random_state=0),
        TopKSAE(6, top_k=2, epochs=2, batch_size=64, random_state=0),
    ]


def ids(est):
    extra = getattr(est, "solver", None) or getattr(est, "codes", None) or ""
    return f"{type(est).__name__}-{extra}" if extra else type(est).__name__


@pytest.fixture(scope="module")
def contract_data():
    A, _ = planted_nmf(n=120, c=16, k=4, seed=3)
    return A


# --------------------------------------------------------------------------- NMF vs scikit-learn
def test_cd_solver_is_sklearn_nmf(nmf_data):
    A, _ = nmf_data
    ours = NMF(5, solver="cd", random_state=0)
    U = ours.fit_transform(A)
    ref = SkNMF(5, random_state=0)
    U_ref = ref.fit_transform(A)
    np.testing.assert_allclose(ours.components_, ref.components_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(U, U_ref, rtol=1e-4, atol=1e-5)
    assert ours.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-4)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.transform(A), ref.transform(A), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver", ["mu", "torch_hals", "torch_mu"])
def test_each_solver_within_one_percent_of_cd(nmf_data, cd_error, solver):
    A, _ = nmf_data
    # Multiplicative updates converge slowly: give them the iterations they need.
    extra = {} if solver == "torch_hals" else {"max_iter": 2000, "tol": 1e-6}
    est = NMF(5, solver=solver, random_state=0, **extra).fit(A)
    assert est.reconstruction_err_ <= 1.01 * cd_error
    assert est.reconstruction_err_ >= 0.97 * cd_error  # no solver beats the optimum by much
    U = est.transform(A)
    direct = np.linalg.norm(A - U @ est.components_)
    assert direct <= 1.02 * cd_error


def test_torch_hals_float64_matches_cd(nmf_data, cd_error):
    A, _ = nmf_data
    for solver in TORCH_SOLVERS:
        extra = {} if solver == "torch_hals" else {"max_iter": 2000, "tol": 1e-6}
        est = NMF(5, solver=solver, dtype="float64", random_state=0, **extra)
        U = est.fit_transform(A.astype(np.float64))
        assert U.dtype == np.float64
        assert est.reconstruction_err_ <= 1.01 * cd_error


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_nmf_recovers_planted_parts(solver):
    A, parts = planted_nmf(noise=0.02, seed=1)
    extra = {"max_iter": 2000, "tol": 1e-6} if "mu" in solver else {}
    est = NMF(5, solver=solver, random_state=0, **extra).fit(A)
    assert matched_cosine(est.components_, parts) >= 0.97
    assert est.components_.min() >= 0


def test_torch_nndsvd_init_matches_sklearn():
    from sklearn.decomposition._nmf import _initialize_nmf

    from conceptkit.concepts import _nmf_torch

    A, _ = planted_nmf(n=300, c=50, k=6, seed=2)
    for variant in ("nndsvd", "nndsvda"):
        W_ref, H_ref = _initialize_nmf(A.astype(np.float64), 6, init=variant, random_state=0)
        Ut, W = _nmf_torch.initialize(torch.from_numpy(A).double(), 6, variant,
                                      np.random.default_rng(0))
        np.testing.assert_allclose(Ut.T.numpy(), W_ref, atol=1e-6 * W_ref.max())
        np.testing.assert_allclose(W.numpy(), H_ref, atol=1e-6 * H_ref.max())


@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvdar"])
def test_torch_hals_other_inits_converge(nmf_data, cd_error, init):
    A, _ = nmf_data
    est = NMF(5, solver="torch_hals", init=init, max_iter=500, random_state=0).fit(A)
    assert est.reconstruction_err_ <= 1.03 * cd_error


def test_regularised_torch_hals_matches_sklearn_cd(nmf_data):
    A, _ = nmf_data
    settings = dict(alpha_W=0.01, alpha_H="same", l1_ratio=0.5, random_state=0, tol=1e-6,
                    max_iter=1000)
    ref = NMF(5, solver="cd", **settings).fit(A)
    ours = NMF(5, solver="torch_hals", **settings).fit(A)
    plain = NMF(5, solver="cd", random_state=0).fit(A)

    def objective(est):  # scikit-learn's regularised objective, scaled as it scales it
        U = est.transform(A) if est is not None else None
        W = est.components_
        n, c = A.shape
        l1_U, l2_U = c * 0.01 * 0.5, c * 0.01 * 0.5
        l1_W, l2_W = n * 0.01 * 0.5, n * 0.01 * 0.5
        return (0.5 * np.linalg.norm(A - U @ W) ** 2 + l1_U * U.sum() + 0.5 * l2_U * (U ** 2).sum()
                + l1_W * W.sum() + 0.5 * l2_W * (W ** 2).sum())

    assert objective(ours) <= 1.01 * objective(ref)
    # The penalty does something: sparser, smaller codes than the unpenalised fit.
    assert (ours.transform(A) > 0).mean() < (plain.transform(A) > 0).mean()


def test_torch_transform_is_exact_nnls(nmf_data):
    A, _ = nmf_data
    est = NMF(5, solver="torch_hals", random_state=0, dtype="float64").fit(A)
    est.set_params(tol=1e-10, max_iter=5000)  # transform's NNLS solve, run to high accuracy
    U = est.transform(A[:20].astype(np.float64))
    for row, code in zip(A[:20].astype(np.float64), U):
        expected, _ = nnls(est.components_.T, row)
        np.testing.assert_allclose(code, expected, atol=1e-6 * max(1.0, expected.max()))


def test_sklearn_transform_is_nnls(nmf_data):
    A, _ = nmf_data
    est = NMF(5, solver="cd", random_state=0, tol=1e-8, max_iter=2000).fit(A.astype(np.float64))
    U = est.transform(A[:10].astype(np.float64))
    for row, code in zip(A[:10].astype(np.float64), U):
        expected, _ = nnls(est.components_.T, row)
        np.testing.assert_allclose(code, expected, atol=1e-4 * max(1.0, expected.max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha", [0.0, 0.01])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_cd_transform_equals_sklearn_transform(nmf_data, dtype, alpha):
    # Our cd transform vectorises scikit-learn's coordinate descent over rows (X @ W.T once);
    # it must give scikit-learn's own transform, iterations and stopping rule included.
    A, _ = nmf_data
    A = A.astype(dtype)
    est = NMF(5, solver="cd", random_state=0, alpha_W=alpha, l1_ratio=0.5).fit(A)
    reference = SkNMF(5, solver="cd", random_state=0, alpha_W=alpha, l1_ratio=0.5).fit(A)
    np.testing.assert_allclose(est.components_, reference.components_, rtol=1e-6)
    X = np.random.default_rng(3).permutation(A)[:150]
    ours, theirs = est.transform(X), reference.transform(X)
    assert ours.dtype == theirs.dtype == dtype
    scale = float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, atol=(2e-5 if dtype == np.float32 else 1e-10) * scale)
    assert ((ours == 0) == (theirs == 0)).mean() > 0.999


def test_negative_input_error_suggests_seminmf_and_relu(nmf_data):
    A, _ = nmf_data
    signed = A - A.mean()
    for solver in SOLVERS:
        with pytest.raises(ValueError, match="SemiNMF") as info:
            NMF(5, solver=solver).fit(signed)
        assert "relu=True" in str(info.value) and "`A`" in str(info.value)
    fitted = NMF(5, random_state=0).fit(A)
    with pytest.raises(ValueError, match="relu=True"):
        fitted.transform(signed)


def test_relu_clips_explicitly(nmf_data):
    A, _ = nmf_data
    signed = A - np.median(A)
    ours = NMF(5, relu=True, random_state=0).fit(signed)
    ref = NMF(5, random_state=0).fit(np.maximum(signed, 0))
    np.testing.assert_allclose(ours.components_, ref.components_)
    np.testing.assert_allclose(ours.transform(signed), ref.transform(np.maximum(signed, 0)))


@pytest.mark.parametrize("cls", [NMF, SemiNMF, PCAConcepts, ICAConcepts])
def test_too_many_concepts(cls):
    A = np.abs(np.random.default_rng(0).standard_normal((30, 8)))
    with pytest.raises(ValueError, match="n_concepts`=9 is larger than the number of features"):
        cls(9).fit(A)
    with pytest.raises(ValueError, match="n_concepts`=31 is larger than the number of rows"):
        cls(31).fit(A)


def test_overcomplete_factorizers_allow_more_concepts_than_features():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((200, 6)).astype(np.float32)
    assert KMeansConcepts(10, n_init=1, random_state=0).fit(A).components_.shape == (10, 6)
    assert TopKSAE(12, epochs=1, random_state=0).fit(A).components_.shape == (12, 6)
    with pytest.raises(ValueError, match="n_concepts`=201 is larger than the number of rows"):
        KMeansConcepts(201).fit(A)


def test_bad_parameters_are_named(nmf_data):
    A, _ = nmf_data
    with pytest.raises(ValueError, match="`solver`.*Did you mean 'torch_hals'"):
        NMF(5, solver="torch_hal").fit(A)
    with pytest.raises(ValueError, match="`dtype`"):
        NMF(5, solver="torch_hals", dtype="float16").fit(A)
    with pytest.raises(TypeError, match="`n_concepts`"):
        NMF(2.5).fit(A)
    with pytest.raises(ValueError, match="`init`"):
        NMF(5, init="svd").fit(A)
    with pytest.raises(ValueError, match="`l1_ratio`"):
        NMF(5, l1_ratio=2.0).fit(A)
    with pytest.raises(ValueError, match="`top_k`"):
        TopKSAE(4, top_k=5).fit(A)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int or 'auto'"):
        TopKSAE(4, batch_size="big").fit(A)
    with pytest.raises(ValueError, match="`batch_size`"):
        TopKSAE(4, batch_size=0).fit(A)
    with pytest.raises(ValueError, match="`codes`"):
        KMeansConcepts(4, codes="fuzzy").fit(A)
    with pytest.raises(ValueError, match="`positive_code`"):
        SparseDictionary(4, positive_code=True, transform_algorithm="omp").fit(A)
    with pytest.raises(ValueError, match="`positive_code`.*fit_algorithm"):
        SparseDictionary(4, positive_code=True).fit(A)
    with pytest.raises(ValueError, match="`A` must be 2-D"):
        NMF(5).fit(A[0])
    with pytest.raises(ValueError, match="NaN"):
        NMF(5).fit(np.where(A > 1, np.nan, A))
    fitted = NMF(5, random_state=0).fit(A)
    with pytest.raises(ValueError, match="`A` must have 60 columns"):
        fitted.transform(A[:, :10])
    with pytest.raises(ValueError, match="`U` must have 5 columns"):
        fitted.inverse_transform(np.ones((3, 4)))


# --------------------------------------------------------------------------- planted recovery
def test_seminmf_recovers_signed_parts():
    rng = np.random.default_rng(0)
    k, c, n = 5, 40, 600
    parts = rng.standard_normal((k, c))
    # Semi-NMF is unique only when the data touch the faces of the cone spanned by the parts:
    # half the rows use one part, half mix two.
    mixed = rng.random((n, 1)) < 0.5
    codes = np.where(mixed, sparse_codes(rng, n, k, active=2), sparse_codes(rng, n, k, active=1))
    A = (codes @ parts + 0.01 * rng.standard_normal((n, c))).astype(np.float32)
    assert A.min() < 0
    est = SemiNMF(k, random_state=0)
    U = est.fit_transform(A)
    assert U.min() >= 0
    assert est.components_.min() < 0
    assert matched_cosine(est.components_, parts) >= 0.95
    assert est.reconstruction_err_ / np.linalg.norm(A) < 0.02
    # transform solves the NNLS problem exactly.
    for row, code in zip(A[:5].astype(np.float64), est.transform(A[:5])):
        expected, _ = nnls(est.components_.astype(np.float64).T, row)
        np.testing.assert_allclose(code, expected, atol=1e-3 * max(1.0, expected.max()))


@pytest.mark.parametrize("codes", ["hard", "soft"])
def test_kmeans_concepts_match_sklearn(codes):
    rng = np.random.default_rng(1)
    centers = 4.0 * rng.standard_normal((5, 12))
    labels = rng.integers(0, 5, 500)
    A = centers[labels] + 0.3 * rng.standard_normal((500, 12))
    est = KMeansConcepts(5, codes=codes, random_state=0)
    U = est.fit_transform(A)
    ref = KMeans(5, n_init=10, random_state=0).fit(A)
    np.testing.assert_allclose(est.components_, ref.cluster_centers_)
    assert matched_cosine(est.components_, centers) >= 0.99
    distances = ((A[:, None, :] - est.components_[None]) ** 2).sum(-1)
    if codes == "hard":
        np.testing.assert_array_equal(U.argmax(1), ref.labels_)
        np.testing.assert_array_equal(U.sum(1), 1.0)
        np.testing.assert_allclose(est.inverse_transform(U), ref.cluster_centers_[ref.labels_])
    else:
        assert est.temperature_ == pytest.approx(ref.inertia_ / len(A), rel=1e-6)
        np.testing.assert_allclose(U, softmax(-distances / est.temperature_, axis=1), atol=1e-10)
        np.testing.assert_allclose(est.inverse_transform(U), U @ est.components_)


def test_pca_concepts_match_sklearn_and_recover_directions():
    rng = np.random.default_rng(2)
    directions = np.linalg.qr(rng.standard_normal((30, 4)))[0].T
    scores = rng.standard_normal((800, 4)) * np.array([8.0, 6.0, 4.0, 2.0])
    A = scores @ directions + 0.05 * rng.standard_normal((800, 30)) + 3.0
    est = PCAConcepts(4)
    U = est.fit_transform(A)
    ref = PCA(4).fit(A)
    np.testing.assert_allclose(est.components_, ref.components_, atol=1e-8)
    np.testing.assert_allclose(U, ref.transform(A), atol=1e-8)
    np.testing.assert_allclose(est.inverse_transform(U), ref.inverse_transform(ref.transform(A)),
                               atol=1e-8)
    assert matched_cosine(est.components_, directions, absolute=True) >= 0.99


def test_ica_recovers_non_gaussian_sources_and_reconstructs_best_rank_k():
    rng = np.random.default_rng(3)
    mixing = rng.standard_normal((4, 20))
    sources = rng.laplace(size=(3000, 4))
    A = sources @ mixing + 0.01 * rng.standard_normal((3000, 20))
    est = ICAConcepts(4, random_state=0)
    U = est.fit_transform(A)
    assert matched_cosine(est.components_, mixing, absolute=True) >= 0.98
    # Each recovered source correlates with one true source.
    corr = np.abs(np.corrcoef(U.T, sources.T)[:4, 4:])
    assert corr.max(axis=1).min() > 0.98
    best = PCA(4).fit(A)
    np.testing.assert_allclose(est.inverse_transform(U), best.inverse_transform(best.transform(A)),
                               atol=1e-6)
    # sign convention: the largest-magnitude entry of every component is positive
    rows = np.arange(4)
    assert (est.components_[rows, np.abs(est.components_).argmax(1)] > 0).all()


def test_sparse_dictionary_recovers_atoms_and_encodes_like_sklearn():
    rng = np.random.default_rng(4)
    atoms = unit_rows(rng.standard_normal((6, 16)))
    A = sparse_codes(rng, 200, 6, active=2, signed=True) @ atoms + 0.01 * rng.standard_normal((200, 16))
    est = SparseDictionary(6, alpha=0.1, max_iter=200, fit_algorithm="cd", random_state=0)
    U = est.fit_transform(A)
    assert matched_cosine(est.components_, atoms, absolute=True) >= 0.95
    np.testing.assert_allclose(np.linalg.norm(est.components_, axis=1), 1.0, rtol=1e-6)
    expected = sparse_encode(A, est.components_, algorithm="lasso_lars", alpha=0.1)
    np.testing.assert_allclose(U, expected, atol=1e-10)
    assert (np.abs(U) > 1e-8).mean() < 0.5
    positive = SparseDictionary(6, alpha=0.1, max_iter=50, positive_code=True, fit_algorithm="cd",
                                random_state=0).fit(np.abs(A))
    assert positive.transform(np.abs(A)).min() >= 0


def test_topk_sae_recovers_planted_directions():
    rng = np.random.default_rng(5)
    directions = unit_rows(rng.standard_normal((8, 32)))
    codes = sparse_codes(rng, 2000, 8, active=2)
    A = (codes @ directions + 0.01 * rng.standard_normal((2000, 32))).astype(np.float32)
    # A few more latents than planted directions, as SAEs are used (avoids dead-latent minima).
    est = TopKSAE(12, top_k=2, epochs=30, lr=5e-3, random_state=0, tol=0)
    U = est.fit_transform(A)
    assert matched_cosine(directions, est.components_) >= 0.95
    assert ((U > 0).sum(axis=1) <= 2).all() and U.min() >= 0
    np.testing.assert_allclose(np.linalg.norm(est.components_, axis=1), 1.0, rtol=1e-5)
    assert est.n_iter_ == 30 * int(np.ceil(2000 / 256))
    assert TopKSAE(25).set_params(n_concepts=25)._k_active == 2
    assert TopKSAE(5)._k_active == 1


def test_topk_sae_auto_batch_size_takes_at_most_30_minibatches_an_epoch():
    """``batch_size="auto"``: 64 rows up to 1,920 rows (the same fit as ``batch_size=64``),
    then ceil(rows / 30), so the steps per epoch stop growing with the rows."""
    A = np.random.default_rng(0).standard_normal((3000, 6)).astype(np.float32)
    small = TopKSAE(4, top_k=1, epochs=2, batch_size="auto", random_state=0, tol=0).fit(A[:640])
    given = TopKSAE(4, top_k=1, epochs=2, batch_size=64, random_state=0, tol=0).fit(A[:640])
    np.testing.assert_array_equal(small.components_, given.components_)
    assert small.n_iter_ == 2 * 10
    large = TopKSAE(4, top_k=1, epochs=2, batch_size="auto", random_state=0, tol=0).fit(A)
    assert large.n_iter_ == 2 * 30  # 3,000 rows in minibatches of 100
    assert large.get_params()["batch_size"] == "auto"


def test_topk_sae_is_deterministic_given_seed():
    A = np.random.default_rng(0).standard_normal((300, 10)).astype(np.float32)
    first = TopKSAE(8, top_k=2, epochs=3, random_state=7).fit(A)
    second = TopKSAE(8, top_k=2, epochs=3, random_state=7).fit(A)
    np.testing.assert_array_equal(first.components_, second.components_)
    np.testing.assert_array_equal(first.transform(A), second.transform(A))


# --------------------------------------------------------------------------- the shared contract
@pytest.mark.parametrize("est", small_instances(), ids=ids)
def test_contract_types_determinism_and_state(est, contract_data, tmp_path):
    A = contract_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few-iteration fits may warn about convergence
        U = est.fit_transform(A)
    k = est.components_.shape[0]
    assert isinstance(U, np.ndarray) and U.shape == (len(A), k)
    assert isinstance(est.components_, np.ndarray) and est.components_.shape == (k, A.shape[1])
    assert est.n_features_in_ == A.shape[1] and est.n_iter_ >= 1
    A_hat = est.inverse_transform(U)
    assert isinstance(A_hat, np.ndarray) and A_hat.shape == A.shape
    assert est.reconstruction_err_ == pytest.approx(np.linalg.norm(A - A_hat), rel=1e-4)
    if est.nonnegative_codes:
        assert U.min() >= 0
    if not est.signed_components:
        assert est.components_.min() >= 0

    # deterministic transform
    first = est.transform(A)
    np.testing.assert_array_equal(first, est.transform(A))

    # torch in -> torch out
    tensor = torch.from_numpy(A)
    codes_t = est.transform(tensor)
    assert isinstance(codes_t, torch.Tensor) and codes_t.device == tensor.device
    np.testing.assert_allclose(codes_t.numpy(), first, rtol=1e-5, atol=1e-6)
    recon_t = est.inverse_transform(codes_t)
    assert isinstance(recon_t, torch.Tensor) and recon_t.shape == tensor.shape

    # get_state / from_state, through a real safetensors + JSON file
    arrays, info = est.get_state()
    path = io.save_file(tmp_path / "f.safetensors", arrays, {"info": info, "params":
                        {key: value for key, value in est.get_params().items()}},
                        kind="factorizer-test", version=1)
    tensors, meta = io.load_file(path, kind="factorizer-test", version=1)
    rebuilt = factorizer_from_state(type(est).__name__, meta["params"],
                                    {key: value.numpy() for key, value in tensors.items()},
                                    meta["info"])
    np.testing.assert_array_equal(rebuilt.transform(A), first)
    np.testing.assert_array_equal(rebuilt.inverse_transform(first), est.inverse_transform(first))
    assert rebuilt.reconstruction_err_ == est.reconstruction_err_
    assert rebuilt.n_features_in_ == est.n_features_in_


@pytest.mark.parametrize("est", small_instances(), ids=ids)
def test_clone_get_set_params(est, contract_data):
    params = est.get_params()
    assert params["n_concepts"] == est.n_concepts
    fresh = clone(est)
    assert fresh.get_params() == params and fresh is not est
    est.set_params(n_concepts=3)
    assert est.n_concepts == 3 and fresh.n_concepts == params["n_concepts"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(contract_data)
    unfitted = clone(est)
    assert not hasattr(unfitted, "components_")
    with pytest.raises(NotFittedError, match="fit"):
        unfitted.transform(contract_data)


def test_registry_lists_every_factorizer():
    expected = {"NMF", "SemiNMF", "KMeansConcepts", "PCAConcepts", "ICAConcepts",
                "SparseDictionary", "TopKSAE"}
    assert expected <= set(FACTORIZERS)
    assert all(issubclass(cls, Factorizer) for cls in FACTORIZERS.values())
    with pytest.raises(ValueError, match="`name` must be one of"):
        factorizer_from_state("Nope", {}, {}, {})
    with pytest.raises(ValueError, match="lacks \\['mean_'\\]"):
        PCAConcepts.from_state({"n_concepts": 2}, {"components_": np.eye(2, 5)}, {})


def test_declared_capabilities():
    assert NMF.requires_nonnegative and NMF.nonnegative_codes and not NMF.signed_components
    assert not SemiNMF.requires_nonnegative and SemiNMF.nonnegative_codes
    assert SemiNMF.signed_components
    assert not PCAConcepts.nonnegative_codes and not ICAConcepts.nonnegative_codes
    assert KMeansConcepts.nonnegative_codes and TopKSAE.nonnegative_codes


@pytest.mark.parametrize("cls", [NMF, SemiNMF])
def test_torch_factorizers_follow_input_device_and_dtype(cls, contract_data):
    kwargs = {"solver": "torch_hals"} if cls is NMF else {}
    est = cls(4, dtype="float64", random_state=0, **kwargs)
    U = est.fit_transform(torch.from_numpy(contract_data))
    assert isinstance(U, torch.Tensor) and U.dtype == torch.float64
    assert est.components_.dtype == np.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", TORCH_SOLVERS)
def test_torch_solvers_on_gpu_match_cpu(nmf_data, solver):
    A, _ = nmf_data
    cpu = NMF(5, solver=solver, random_state=0, dtype="float64").fit(A)
    gpu = NMF(5, solver=solver, random_state=0, dtype="float64", device="cuda")
    U = gpu.fit_transform(torch.from_numpy(A).cuda())
    assert U.is_cuda
    assert gpu.reconstruction_err_ == pytest.approx(cpu.reconstruction_err_, rel=1e-3)
    assert matched_cosine(gpu.components_, cpu.components_) > 0.999


# --------------------------------------------------------------------------- online NMF
def test_partial_fit_streams_to_the_batch_solution():
    A, parts = planted_nmf(n=1200, noise=0.02, seed=1)
    batch = NMF(5, solver="torch_hals", random_state=0).fit(A)
    online = NMF(5, solver="torch_hals", random_state=0)
    for _ in range(2):  # two passes over twelve chunks
        for chunk in np.split(A, 12):
            online.partial_fit(chunk)
    assert online.n_iter_ == 24 and online.n_samples_seen_ == 2 * len(A)
    assert matched_cosine(online.components_, parts) >= 0.99
    refit_error = np.linalg.norm(A - online.inverse_transform(online.transform(A)))
    assert refit_error <= 1.01 * batch.reconstruction_err_
    # the running estimate (codes as they were when each row was seen) tracks the true error
    assert online.reconstruction_err_ / np.sqrt(2) == pytest.approx(refit_error, rel=0.05)
    np.testing.assert_allclose(online.codes_gram_, online.codes_gram_.T, rtol=1e-12)
    # a later batch fit starts afresh
    online.fit(A)
    assert not hasattr(online, "codes_gram_")


def test_partial_fit_checks():
    A, _ = planted_nmf()
    with pytest.raises(ValueError, match="solver='torch_hals'"):
        NMF(5, solver="cd").partial_fit(A)
    with pytest.raises(ValueError, match="n_concepts`=5 is larger than the number of rows"):
        NMF(5, solver="torch_hals").partial_fit(A[:3])
    est = NMF(5, solver="torch_hals", random_state=0).partial_fit(A[:100])
    with pytest.raises(ValueError, match="`A` must have 60 columns"):
        est.partial_fit(A[:50, :20])
    with pytest.raises(ValueError, match="SemiNMF"):
        est.partial_fit(A[:50] - 10)
