"""Numbers at the edges of the compute dtype: NMF and SemiNMF on activations with one huge
entry rescale them (by a power of two, so exactly) before solving, instead of returning NaN."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conceptkit import concepts

ROWS = np.abs(np.random.default_rng(0).normal(size=(40, 6)))
HUGE_VALUE = {np.float32: 1e30, np.float64: 1e200}  # beyond what each dtype squares safely


def _huge(dtype):
    data = ROWS.astype(dtype)
    data[0, 0] = HUGE_VALUE[dtype]
    return data


HUGE = _huge(np.float32)

CASES = [("NMF", {"solver": "cd"}, np.float32), ("NMF", {"solver": "mu"}, np.float32),
         ("NMF", {"solver": "torch_hals"}, np.float32), ("NMF", {"solver": "torch_mu"}, np.float32),
         ("NMF", {"solver": "torch_hals", "dtype": "float64"}, np.float64),
         ("SemiNMF", {}, np.float32), ("SemiNMF", {"dtype": "float64"}, np.float64)]


def _make(name, kwargs):
    cls = getattr(concepts, name)
    return cls(2, random_state=0, max_iter=50, **kwargs)


@pytest.mark.parametrize("name,kwargs,dtype", CASES,
                         ids=[f"{n}-{k.get('solver', '')}-{d.__name__}" for n, k, d in CASES])
def test_a_huge_entry_is_rescaled_exactly(name, kwargs, dtype):
    data = _huge(dtype)
    scale = float(2.0 ** np.ceil(np.log2(HUGE_VALUE[dtype])))  # the power of two at or above it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 50 iterations do not converge: not the point here
        model = _make(name, kwargs)
        codes = model.fit_transform(data)
        reference = _make(name, kwargs)
        reference_codes = reference.fit_transform(data / scale)
        again = model.transform(data)
    for array in (codes, model.components_, again):
        assert np.isfinite(np.asarray(array)).all()
    # the same solve as on the rescaled data, with the scale given back to the dictionary
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(reference_codes))
    np.testing.assert_array_equal(model.components_, reference.components_ * scale)
    np.testing.assert_allclose(np.asarray(again), np.asarray(reference.transform(data / scale)),
                               rtol=1e-5, atol=1e-6)
    # the huge entry is reconstructed (to the factorisation's accuracy on that row)
    recon = np.asarray(model.inverse_transform(codes))
    assert recon[0, 0] == pytest.approx(HUGE_VALUE[dtype], rel=1e-2)


def test_ordinary_values_are_not_rescaled():
    data = ROWS.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = concepts.NMF(2, random_state=0, max_iter=50).fit(data)
    from sklearn.decomposition import NMF as SkNMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkNMF(2, init="nndsvda", random_state=0, max_iter=50).fit(data)
    np.testing.assert_allclose(model.components_, sk.components_, rtol=1e-4, atol=1e-6)


def test_a_regularised_solve_of_huge_values_is_refused():
    with pytest.raises(ValueError, match=r"`A` has values up to 1e\+30.*penalties"):
        concepts.NMF(2, alpha_W=0.1, random_state=0).fit(HUGE.astype(np.float32))


def test_values_beyond_the_solver_dtype_are_refused():
    with pytest.raises(ValueError, match=r"`A` has values up to 1e\+200, beyond .*dtype='float64'"):
        concepts.SemiNMF(2, random_state=0).fit(_huge(np.float64))  # a float32 solver


def test_torch_input_keeps_its_container():
    data = torch.from_numpy(HUGE.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codes = concepts.NMF(2, solver="torch_hals", random_state=0, max_iter=20).fit_transform(data)
    assert isinstance(codes, torch.Tensor) and bool(torch.isfinite(codes).all())
