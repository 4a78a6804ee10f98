"""The dictionaries of issue 17 on a CUDA device (skipped without one): same results as the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _shared import planted_nmf

from conceptkit.concepts import NMF, SemiNMF, TopKSAE, fit_distributed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_seminmf_cuda_matches_cpu_in_float64():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((400, 30)) @ rng.standard_normal((30, 30))
    cpu = SemiNMF(5, random_state=0, dtype="float64").fit(A)
    gpu = SemiNMF(5, random_state=0, dtype="float64", device="cuda")
    U = gpu.fit_transform(torch.from_numpy(A).cuda())
    assert U.is_cuda and gpu.n_iter_ == cpu.n_iter_
    np.testing.assert_allclose(gpu.components_, cpu.components_, rtol=1e-6, atol=1e-8)


def test_topk_sae_cuda_reaches_the_cpu_fit():
    A, _ = planted_nmf(n=2000, c=32, k=8, seed=4)
    common = dict(n_concepts=64, top_k=4, epochs=4, batch_size=128, random_state=0, tol=0)
    cpu = TopKSAE(**common).fit(A)
    gpu = TopKSAE(device="cuda", **common)
    U = gpu.fit_transform(torch.from_numpy(A).cuda())
    assert U.is_cuda and gpu.n_iter_ == cpu.n_iter_
    r2 = lambda e: 1 - e.reconstruction_err_ ** 2 / ((A - A.mean(0)) ** 2).sum()  # noqa: E731
    assert abs(r2(gpu) - r2(cpu)) < 0.01


def test_fit_distributed_on_cuda_matches_cpu():
    A, _ = planted_nmf(n=600, c=24, k=4, seed=5)
    chunks = [A[s:s + 100] for s in range(0, 600, 100)]
    kwargs = dict(max_iter=10, batch_rows=64, seed=0, progress=False)
    cpu = fit_distributed(NMF(4, solver="torch_hals", dtype="float64"), chunks, **kwargs)
    gpu = fit_distributed(NMF(4, solver="torch_hals", dtype="float64", device="cuda"), chunks,
                          **kwargs)
    np.testing.assert_allclose(gpu.components_, cpu.components_, rtol=1e-6, atol=1e-8)
