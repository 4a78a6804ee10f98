"""Fits that cannot mean anything are refused, naming the argument: activations that are zero
everywhere (every factorizer returned a zero or NaN dictionary without a word), ICA on data
that varies in fewer directions than concepts, and settings out of range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptkit import concepts

FACTORIZERS = [
    lambda: concepts.NMF(3, random_state=0),
    lambda: concepts.NMF(3, solver="torch_hals", random_state=0),
    lambda: concepts.SemiNMF(3, random_state=0),
    lambda: concepts.PCAConcepts(3),
    lambda: concepts.ICAConcepts(3, random_state=0),
    lambda: concepts.KMeansConcepts(3, random_state=0),
]


@pytest.mark.parametrize("make", FACTORIZERS)
def test_activations_zero_everywhere_are_refused(make):
    with pytest.raises(ValueError, match="zero everywhere"):
        make().fit(np.zeros((40, 8)))


def test_a_method_on_a_dead_layer_is_refused():
    with pytest.raises(ValueError, match="zero everywhere"):
        concepts.ICE(3, seed=0, progress=False).fit_activations(torch.zeros(4, 8, 4, 4), "x")


def test_nmf_on_activations_that_clipping_zeroes_is_refused():
    with pytest.raises(ValueError, match="zero everywhere"):
        concepts.NMF(3, relu=True).fit(-np.ones((40, 8)))


@pytest.mark.parametrize("data,match", [
    (np.ones((40, 8)), "fewer than `n_concepts`=3"),
    (np.c_[np.linspace(0, 1, 40), np.ones((40, 7))], "fewer than `n_concepts`=3"),
])
def test_ica_on_data_of_too_low_rank_says_so(data, match):
    with pytest.raises(ValueError, match=match):
        concepts.ICAConcepts(3, random_state=0).fit(data)
    with pytest.raises(ValueError, match="at least 2 rows"):
        concepts.ICAConcepts(1, random_state=0).fit(np.random.default_rng(0).random((1, 8)))
    # full-rank data of the same size fits
    full = np.random.default_rng(0).random((40, 8))
    assert np.isfinite(concepts.ICAConcepts(3, random_state=0).fit(full).components_).all()


def test_craft_patch_size_zero_is_refused_not_replaced_by_the_default():
    with pytest.raises(ValueError, match="patch_size"):
        concepts.CRAFT(3, patch_size=0)


@pytest.mark.parametrize("make", [
    lambda s: concepts.ICE(3, seed=s),
    lambda s: concepts.NMF(3, random_state=s).fit(np.ones((10, 4)) + np.eye(10, 4)),
    lambda s: concepts.PCAConcepts(3, random_state=s).fit(np.eye(10, 4)),
])
def test_seeds_numpy_cannot_take_are_refused_up_front(make):
    with pytest.raises(ValueError, match="seed|random_state"):
        make(2**32)


def test_pca_round_trip_keeps_the_explained_variance():
    data = np.random.default_rng(0).random((40, 8))
    pca = concepts.PCAConcepts(3).fit(data)
    arrays, info = pca.get_state()
    again = type(pca).from_state(pca.get_params(), arrays, info)
    np.testing.assert_array_equal(again.explained_variance_ratio_, pca.explained_variance_ratio_)


def test_an_online_nmf_continues_after_a_round_trip_as_without_one(tmp_path):
    """partial_fit's running statistics were not saved: a loaded copy went on from the
    dictionary alone and gave another dictionary than the one never saved."""
    rng = np.random.default_rng(0)
    chunks = [np.abs(rng.normal(size=(30, 6))).astype(np.float32) for _ in range(3)]
    online = concepts.NMF(3, solver="torch_hals", random_state=0)
    online.partial_fit(chunks[0])
    online.partial_fit(chunks[1])
    arrays, info = online.get_state()
    loaded = type(online).from_state(online.get_params(), arrays, info)
    online.partial_fit(chunks[2])
    loaded.partial_fit(chunks[2])
    np.testing.assert_array_equal(loaded.components_, online.components_)
    assert loaded.n_samples_seen_ == online.n_samples_seen_ == 90


def test_a_streamed_nmf_round_trips():
    """fit_streaming records n_samples_seen_ without partial_fit's statistics: a legitimate
    state, saved and loaded as such."""
    from conceptkit.concepts import fit_streaming

    rng = np.random.default_rng(0)
    chunks = [np.abs(rng.normal(size=(40, 6))).astype(np.float32) for _ in range(3)]
    for solver in ("torch_hals", "cd"):
        est = fit_streaming(concepts.NMF(3, solver=solver, random_state=0), chunks,
                            batch_rows=20, seed=0, progress=False)
        arrays, info = est.get_state()
        again = type(est).from_state(est.get_params(), arrays, info)
        np.testing.assert_array_equal(again.components_, est.components_)
        assert again.n_samples_seen_ == est.n_samples_seen_ == 120


def test_a_bank_whose_factorizer_was_refitted_is_not_saved(tmp_path):
    """Saving wrote a file its own load refused (components differ from the dictionary)."""
    from conceptkit.concepts import NMF, ConceptBank, bank_from_activations
    from conceptkit.extraction import Provenance

    rng = np.random.default_rng(0)
    rows = rng.random((64, 16)).astype(np.float32)
    provenance = Provenance("image", np.arange(64), np.tile([0, 0, 32, 32], (64, 1)), (32, 32))
    bank = bank_from_activations(NMF(3, solver="torch_hals", random_state=0), rows, provenance)
    ConceptBank.load(bank.save(tmp_path / "before.safetensors"))  # a consistent bank saves
    bank.factorizer.partial_fit(rng.random((20, 16)).astype(np.float32))
    with pytest.raises(ValueError, match="refitted after the bank was made"):
        bank.save(tmp_path / "after.safetensors")
    assert not (tmp_path / "after.safetensors").exists()


def test_pca_on_constant_nonzero_activations_is_refused_at_fit():
    """It fitted arbitrary axes with a NaN explained-variance ratio, and the bank it gave was
    refused by its own loader; a copy of one row is still no variance to share out."""
    with pytest.raises(ValueError, match="`A` has no variance"):
        concepts.PCAConcepts(2).fit(np.full((10, 4), 3.0))
    fitted = concepts.PCAConcepts(2).fit(np.random.default_rng(0).random((10, 4)))
    assert np.isfinite(fitted.explained_variance_ratio_).all()


def test_seminmf_refuses_a_seed_numpy_cannot_take_up_front():
    """It failed inside scikit-learn's KMeans with a message about KMeans's parameters."""
    with pytest.raises(ValueError, match="`random_state` must be <= 4294967295"):
        concepts.SemiNMF(3, random_state=2**40).fit(np.random.default_rng(0).normal(size=(20, 6)))


def test_kmeans_refuses_more_concepts_than_distinct_rows():
    """k-means on 3 distinct rows with k=5 repeated centroids (concepts with no row of their own)
    behind scikit-learn's ConvergenceWarning alone."""
    from conceptkit.concepts import KMeansConcepts

    rows = np.repeat(np.random.default_rng(0).normal(size=(3, 5)), 10, axis=0)
    with pytest.raises(ValueError, match=r"`n_concepts` 5 is more than the 3 distinct"):
        KMeansConcepts(n_concepts=5, random_state=0).fit(rows)
    fitted = KMeansConcepts(n_concepts=3, random_state=0).fit(rows)
    assert np.unique(fitted.components_, axis=0).shape[0] == 3
