"""Streaming concept discovery over an on-disk activation store: streaming NMF, streaming codes
and reconstruction error, codes written to a store."""

import numpy as np
import pytest
import torch
from _shared import planted_nmf
from sklearn.exceptions import NotFittedError

from conceptkit.concepts import (
    NMF,
    SemiNMF,
    fit_streaming,
    streaming_error,
    transform_streaming,
    write_codes,
)
from conceptkit.concepts.metrics import matched_cosine
from conceptkit.extraction import ActivationStore
from conceptkit.extraction._store import finalize_store, write_chunks

K = 6


def planted(n=12_000, c=48, k=K, noise=0.05, seed=0):
    return planted_nmf(n, c, k, noise, seed)


def make_store(path, A, chunk_size=1500, layout="pooled"):
    n = A.shape[0]
    write_chunks(lambda start, stop: torch.from_numpy(A[start:stop]), n, path,
                 chunk_size=chunk_size, layout=layout, progress=False)
    return finalize_store(path, n, chunk_size=chunk_size, layout=layout)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    A, parts = planted()
    store = make_store(tmp_path_factory.mktemp("store") / "acts", A)
    batch = NMF(K, solver="cd", random_state=0).fit(A)  # scikit-learn's batch solver, in memory
    return A, parts, store, batch.reconstruction_err_ / np.linalg.norm(A)


@pytest.mark.parametrize("solver", ["torch_hals", "cd"])
def test_streaming_fit_recovers_planted_parts_like_a_batch_fit(problem, solver):
    A, parts, store, batch_error = problem
    est = fit_streaming(NMF(K, solver=solver), store, batch_rows=1000, seed=0, progress=False)
    assert matched_cosine(est.components_, parts) >= 0.95
    relative = est.reconstruction_err_ / np.linalg.norm(A)
    assert relative <= 1.03 * batch_error  # within 3 % of scikit-learn's in-memory cd fit
    # the error is exact: the final dictionary's codes of every row, computed block by block
    refit = np.linalg.norm(A - est.inverse_transform(est.transform(A)))
    assert est.reconstruction_err_ == pytest.approx(refit, rel=1e-4)
    assert est.n_samples_seen_ == A.shape[0] and est.n_features_in_ == A.shape[1]


def test_more_epochs_never_hurt_much(problem):
    A, parts, store, batch_error = problem
    one = fit_streaming(NMF(K, solver="torch_hals"), store, batch_rows=1000, seed=0, progress=False)
    two = fit_streaming(NMF(K, solver="torch_hals"), store, epochs=2, batch_rows=1000, seed=0,
                        progress=False)
    assert two.reconstruction_err_ <= 1.005 * one.reconstruction_err_
    assert two.n_samples_seen_ == A.shape[0]  # statistics restart every epoch


def test_streaming_error_matches_numpy(problem):
    A, _, store, _ = problem
    est = NMF(K, solver="torch_hals", random_state=0).fit(A[:3000])
    residual, norm = streaming_error(est, store, batch_rows=700)
    assert norm == pytest.approx(np.linalg.norm(A.astype(np.float64)), rel=1e-6)
    expected = np.linalg.norm(A.astype(np.float64) - est.inverse_transform(est.transform(A)))
    assert residual == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("solver", ["torch_hals", "cd"])
def test_transform_streaming_equals_in_memory_transform_chunk_by_chunk(problem, solver):
    A, _, store, _ = problem
    est = NMF(K, solver=solver, random_state=0).fit(A[:2000])
    codes = list(transform_streaming(est, store))
    assert len(codes) == store.manifest["n_chunks"]
    for index, chunk_codes in enumerate(codes):
        chunk = np.array(store.chunk(index))
        np.testing.assert_array_equal(chunk_codes, est.transform(chunk))
    # smaller blocks inside each chunk: the same codes up to the solver's tolerance (scikit-learn's
    # cd stops on a violation summed over the block, so a block may take another iteration)
    blocked = np.concatenate(list(transform_streaming(est, store, batch_rows=333)))
    whole = np.concatenate(codes)
    assert np.linalg.norm(blocked - whole) <= 1e-3 * np.linalg.norm(whole)


def test_maps_store_gives_coefficient_maps(tmp_path):
    rng = np.random.default_rng(3)
    parts = rng.exponential(1.0, (4, 12)) * (rng.random((4, 12)) < 0.4)
    codes = rng.exponential(1.0, (40, 4, 5, 5)) * (rng.random((40, 4, 5, 5)) < 0.5)
    maps = np.einsum("nkhw,kc->nchw", codes, parts).astype(np.float32)
    store = make_store(tmp_path / "maps", maps, chunk_size=16, layout="maps")
    est = fit_streaming(NMF(4, solver="torch_hals"), store, batch_rows=200, seed=1, progress=False)
    assert matched_cosine(est.components_, parts) >= 0.99
    codes = list(transform_streaming(est, store))
    assert [c.shape for c in codes] == [(16, 4, 5, 5), (16, 4, 5, 5), (8, 4, 5, 5)]
    rows = maps[:16].transpose(0, 2, 3, 1).reshape(-1, 12)
    expected = est.transform(rows).reshape(16, 5, 5, 4).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(codes[0], expected)


def test_same_seed_same_dictionary(problem):
    _, _, store, _ = problem
    runs = [fit_streaming(NMF(K, solver="torch_hals"), store, batch_rows=1000, seed=s, error=False,
                          progress=False).components_ for s in (4, 4, 5)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])  # another seed: another sample and chunk order
    est = NMF(K, solver="torch_hals")
    fit_streaming(est, store, seed=4, error=False, progress=False)
    assert est.random_state is None  # the seed is lent to the initialisation, then given back


def test_memory_stays_bounded(problem, monkeypatch):
    """Never the whole store: no read(), no call of the solver on more than a block of rows."""
    A, _, store, _ = problem

    def refuse(self):
        raise AssertionError("streaming must not read the whole store")

    monkeypatch.setattr(ActivationStore, "read", refuse)
    largest = {"rows": 0}
    for name in ("partial_fit", "transform", "fit"):
        original = getattr(NMF, name)

        def spy(self, X, *args, _original=original, **kwargs):
            largest["rows"] = max(largest["rows"], X.shape[0])
            return _original(self, X, *args, **kwargs)

        monkeypatch.setattr(NMF, name, spy)
    est = fit_streaming(NMF(K, solver="torch_hals"), store, batch_rows=800, init_rows=1200,
                        seed=0, progress=False)
    assert largest["rows"] == 1200  # the initial sample; every online block has <= 800 rows
    assert est.n_samples_seen_ == A.shape[0]
    largest["rows"] = 0
    for _ in transform_streaming(est, store, batch_rows=500):
        pass
    assert largest["rows"] == 500


def test_any_reiterable_source_and_chunk_factories(problem):
    A, parts, _, batch_error = problem
    chunks = np.array_split(A, 7)
    from_list = fit_streaming(NMF(K, solver="torch_hals"), chunks, batch_rows=1000, seed=0,
                              progress=False)
    from_factory = fit_streaming(NMF(K, solver="torch_hals"), lambda: iter(chunks),
                                 batch_rows=1000, seed=0, progress=False)
    np.testing.assert_array_equal(from_list.components_, from_factory.components_)
    assert matched_cosine(from_list.components_, parts) >= 0.95
    assert from_list.reconstruction_err_ / np.linalg.norm(A) <= 1.03 * batch_error
    tensors = [torch.from_numpy(c) for c in chunks]
    codes = np.concatenate([np.asarray(c) for c in transform_streaming(from_list, tensors)])
    np.testing.assert_allclose(codes, from_list.transform(A), rtol=1e-4, atol=1e-5)


def test_write_codes_store_resumes(problem, tmp_path):
    A, _, store, _ = problem
    est = NMF(K, solver="torch_hals", random_state=0).fit(A[:2000])
    codes_store = write_codes(est, store, tmp_path / "codes", progress=False)
    assert codes_store.shape == (A.shape[0], K)
    expected = list(transform_streaming(est, store))
    for index, chunk in enumerate(expected):
        np.testing.assert_array_equal(np.array(codes_store.chunk(index)), chunk)
    (tmp_path / "codes" / "chunk-000003.npy").unlink()  # an interrupted run: one chunk missing
    again = write_codes(est, store, tmp_path / "codes", progress=False)
    np.testing.assert_array_equal(np.array(again.chunk(3)), expected[3])


def test_bad_input(problem):
    A, _, store, _ = problem
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit_streaming(NMF(K, solver="torch_hals"), (c for c in np.array_split(A, 3)))
    with pytest.raises(TypeError, match="`factorizer` must be a conceptkit NMF"):
        fit_streaming(SemiNMF(K), store)
    with pytest.raises(TypeError, match="`source` must be an ActivationStore"):
        fit_streaming(NMF(K), 42)
    with pytest.raises(ValueError, match="`epochs`"):
        fit_streaming(NMF(K), store, epochs=0)
    with pytest.raises(ValueError, match="SemiNMF"):
        fit_streaming(NMF(K, solver="torch_hals"), [A - 10.0], progress=False)
    with pytest.raises(ValueError, match="chunks must be rows"):
        fit_streaming(NMF(K, solver="torch_hals"), [A[:, :, None]], progress=False)
    with pytest.raises(NotFittedError):
        next(transform_streaming(NMF(K), store))
    with pytest.raises(FileNotFoundError):
        fit_streaming(NMF(K), "/nonexistent/store")
    with pytest.raises(TypeError, match="to write a code store"):
        write_codes(NMF(K, solver="torch_hals").fit(A[:500]), [A], "/tmp/unused")


def test_write_codes_refuses_chunks_written_under_other_settings(tmp_path):
    """The store's fingerprint covered the fitted arrays only: after ``set_params(codes="soft")``
    a rerun served the old hard codes. Other settings are another store now."""
    from conceptkit.concepts import KMeansConcepts
    from conceptkit.extraction import write_store

    activations = torch.rand(40, 6, generator=torch.Generator().manual_seed(0))
    store = write_store(lambda x: x, activations, tmp_path / "acts", chunk_size=10,
                        progress=False)
    kmeans = KMeansConcepts(3, codes="hard", random_state=0).fit(store.read())
    hard = np.asarray(write_codes(kmeans, store, tmp_path / "codes", progress=False).read())
    kmeans.set_params(codes="soft")
    with pytest.raises(ValueError, match="overwrite=True"):
        write_codes(kmeans, store, tmp_path / "codes", progress=False)
    soft = np.asarray(write_codes(kmeans, store, tmp_path / "codes", progress=False,
                                  overwrite=True).read())
    np.testing.assert_allclose(soft, kmeans.transform(store.read()), rtol=1e-6)
    assert not np.allclose(soft, hard)
