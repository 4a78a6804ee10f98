"""Sixth review of the factorizers: arguments that would be ignored (a hard k-means'
temperature, an NMF device with scikit-learn's solvers), switches that are not bools,
activations far beyond any layer's, errors named after the caller's argument, and streamed fits
that never write on the caller's factorizer."""

import warnings

import numpy as np
import pytest
import torch

from conceptkit.concepts import (
    NMF,
    KMeansConcepts,
    PCAConcepts,
    SparseDictionary,
    bank_from_activations,
    fit_distributed,
    fit_streaming,
)
from conceptkit.extraction import Provenance

ROWS = np.abs(np.random.default_rng(0).normal(size=(200, 16))).astype(np.float32)


def _provenance(n):
    return Provenance("image", np.arange(n), np.tile([0, 0, 8, 8], (n, 1)), (8, 8))


# ------------------------------------------------------------ arguments that would be ignored
def test_a_hard_kmeans_refuses_a_temperature():
    with pytest.raises(ValueError, match="`temperature` .*codes='hard'.*would be ignored"):
        KMeansConcepts(4, codes="hard", temperature=1e-3, n_init=1, random_state=0).fit(ROWS)
    soft = KMeansConcepts(4, codes="soft", temperature=1e-3, n_init=1, random_state=0).fit(ROWS)
    assert soft.temperature_ == 1e-3


def test_a_saved_hard_kmeans_with_a_temperature_still_loads():
    """Files written before the refusal may hold one: it never changed their codes."""
    est = KMeansConcepts(4, n_init=1, random_state=0).fit(ROWS)
    arrays, info = est.get_state()
    params = {**est.get_params(), "temperature": 0.5}
    loaded = KMeansConcepts.from_state(params, arrays, info)
    assert loaded.temperature is None
    np.testing.assert_array_equal(loaded.transform(ROWS), est.transform(ROWS))


@pytest.mark.parametrize("device, message", [
    ("tpu", "`device` must be a torch device"),
    ("meta", "`device` is 'meta'"),
    ("cuda", "`device` is 'cuda' but CUDA is not available"),
])
def test_nmf_with_a_sklearn_solver_checks_its_device(device, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        NMF(4, device=device, random_state=0).fit(ROWS)


def test_nmf_with_a_sklearn_solver_refuses_a_gpu_it_would_ignore(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    for solver in ("cd", "mu"):
        with pytest.raises(ValueError, match=r"`device` 'cuda' is used by the torch solvers "
                                             r"only.*would be ignored"):
            NMF(4, solver=solver, device="cuda", random_state=0).fit(ROWS)


def test_nmf_with_a_sklearn_solver_takes_the_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        given = NMF(4, device="cpu", random_state=0, max_iter=20).fit(ROWS)
        plain = NMF(4, random_state=0, max_iter=20).fit(ROWS)
    np.testing.assert_array_equal(given.components_, plain.components_)


@pytest.mark.parametrize("name", ["relu", "progress"])
def test_nmf_switches_must_be_bools(name):
    with pytest.raises(TypeError, match=f"`{name}` must be True or False; got str 'y'"):
        NMF(4, random_state=0, **{name: "y"}).fit(ROWS)


# ------------------------------------------------------------ values beyond any layer's
@pytest.mark.parametrize("make", [lambda: PCAConcepts(4),
                                  lambda: SparseDictionary(4, random_state=0, max_iter=20),
                                  lambda: KMeansConcepts(4, n_init=1, random_state=0)],
                         ids=["pca", "sparse_dictionary", "kmeans"])
def test_huge_activations_are_refused_in_one_error(make):
    """PCA raised numpy's LinAlgError, dictionary learning an OverflowError from scikit-learn,
    and hard k-means returned codes of the first centroid for every row (its squared distances
    overflowed to Inf)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the solver's own overflow warnings are not shown
        with pytest.raises(ValueError, match=r"`A` has values up to 3\.9e\+30, far beyond any "
                                             r"layer's activations"):
            make().fit(ROWS * np.float32(1e30))


def test_large_activations_a_solver_copes_with_are_still_fitted():
    """Below the bound, and where the solver copes beyond it, nothing changes."""
    est = PCAConcepts(4).fit(ROWS * np.float32(1e12))
    np.testing.assert_allclose(est.components_, PCAConcepts(4).fit(ROWS).components_, atol=1e-4)


def test_a_fitted_kmeans_refuses_to_encode_huge_activations():
    est = KMeansConcepts(4, n_init=1, random_state=0).fit(ROWS)
    with pytest.raises(ValueError, match=r"`A` has values up to .*far beyond"):
        est.transform(ROWS * np.float32(1e30))


# ------------------------------------------------------------ errors name the caller's argument
def test_bank_encode_names_its_negative_activations():
    bank = bank_from_activations(NMF(3, random_state=0), ROWS, _provenance(len(ROWS)))
    with pytest.raises(ValueError, match=r"^`activations` has negative values \(min -"):
        bank.encode(-torch.from_numpy(ROWS))
    with pytest.raises(ValueError, match=r"^`activations` has negative values"):
        bank.encode(-ROWS.reshape(50, 16, 2, 2))
    clipping = bank_from_activations(NMF(3, relu=True, random_state=0), ROWS,
                                     _provenance(len(ROWS)))
    assert np.isfinite(clipping.encode(-ROWS)).all()  # relu=True clips them: no error


# ------------------------------------------------------------ streamed fits and the user's object
class _WatchedNMF(NMF):
    """An NMF that notes every write of ``random_state`` after construction, by object."""

    writes: list = []

    def __setattr__(self, name, value):
        if name == "random_state" and "random_state" in self.__dict__:
            _WatchedNMF.writes.append((id(self), value))
        super().__setattr__(name, value)


@pytest.mark.parametrize("fit", ["streaming", "distributed"])
def test_a_streamed_fit_never_writes_the_seed_on_the_callers_factorizer(fit):
    chunks = [ROWS[i:i + 50] for i in range(0, 200, 50)]
    _WatchedNMF.writes.clear()
    mine = _WatchedNMF(3, solver="torch_hals")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fit == "streaming":
            fit_streaming(mine, chunks, seed=5, init_rows=100, progress=False)
            reference = fit_streaming(NMF(3, solver="torch_hals", random_state=5), chunks,
                                      seed=5, init_rows=100, progress=False)
        else:
            fit_distributed(mine, chunks, seed=5, init_rows=100, max_iter=3, progress=False)
            reference = fit_distributed(NMF(3, solver="torch_hals", random_state=5), chunks,
                                        seed=5, init_rows=100, max_iter=3, progress=False)
    assert [w for w in _WatchedNMF.writes if w[0] == id(mine)] == []
    assert mine.random_state is None
    # fitted in place, as documented, and as seeded as a factorizer given the seed itself
    np.testing.assert_array_equal(mine.components_, reference.components_)
