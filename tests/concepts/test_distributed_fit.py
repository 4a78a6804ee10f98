"""Fitting over 2 gloo processes equals fitting in one: NMF by all-reduced sufficient statistics
(UᵀU, UᵀA) over an activation store's chunks, TopKSAE by all-reduced gradients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _shared import planted_nmf, run_torchrun

from conceptkit.concepts import NMF, fit_distributed
from conceptkit.extraction import ActivationStore, finalize_store, write_chunks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from conceptkit.concepts import NMF, TopKSAE, fit_distributed
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    store, out = sys.argv[1], sys.argv[2]
    results = {}
    for solver in ("torch_hals", "torch_mu"):
        est = fit_distributed(NMF(5, solver=solver), store, max_iter=25, batch_rows=64, seed=0,
                              init_rows=200, progress=False)
        results[solver] = est.components_
        results[solver + "_codes"] = np.asarray(est.transform(np.load(store + "/rows.npy")))
        results[solver + "_err"] = np.array(est.reconstruction_err_)
    A = np.load(store + "/rows.npy")
    sae = TopKSAE(16, top_k=3, epochs=3, batch_size=64, random_state=0, dead_rows=100).fit(A)
    results["sae"] = sae.components_
    results["sae_codes"] = np.asarray(sae.transform(A))
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    np.savez(f"{out}_{rank}.npz", **results)
    if torch.distributed.is_initialized():  # every rank leaves the group together
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
""")


def make_store(path, A, chunk_size):
    write_chunks(lambda start, stop: torch.from_numpy(A[start:stop]), A.shape[0], path,
                 chunk_size=chunk_size, layout="pooled", progress=False)
    np.save(os.path.join(path, "rows.npy"), A)
    return finalize_store(path, A.shape[0], chunk_size=chunk_size, layout="pooled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path):
    A, _ = planted_nmf(n=700, c=24, k=5, seed=1)
    make_store(tmp_path / "store", A, chunk_size=100)  # 7 chunks: ranks get 4 and 3
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "store"),
                             str(tmp_path / "single")], env=_env(), timeout=300,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script),
           str(tmp_path / "store"), str(tmp_path / "double")]
    double = run_torchrun(cmd, env=_env(), timeout=300, capture_output=True, text=True)
    assert double.returncode == 0, double.stderr[-3000:]
    one = np.load(tmp_path / "single_0.npz")
    for rank in (0, 1):
        two = np.load(tmp_path / f"double_{rank}.npz")
        for name in one.files:
            scale = max(1.0, float(np.abs(one[name]).max()))
            np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-5 * scale,
                                       err_msg=f"{name} on rank {rank}")
    # The one-process fit reaches the in-memory NMF's error (same objective, out of core).
    memory = NMF(5, solver="torch_hals", random_state=0, max_iter=400).fit(A)
    assert float(one["torch_hals_err"]) <= memory.reconstruction_err_ * 1.01


def test_store_fit_in_one_process_matches_in_memory_error(tmp_path):
    A, parts = planted_nmf(n=400, c=20, k=4, seed=2)
    store = make_store(tmp_path / "store", A, chunk_size=64)
    est = fit_distributed(NMF(4, solver="torch_hals", dtype="float64"), store, max_iter=60,
                          batch_rows=50, seed=0, progress=False)
    U = np.asarray(est.transform(A))
    exact = np.linalg.norm(A - U @ est.components_)
    assert est.reconstruction_err_ == pytest.approx(exact, rel=1e-3)
    memory = NMF(4, solver="torch_hals", random_state=0, dtype="float64", max_iter=400).fit(A)
    assert est.reconstruction_err_ <= memory.reconstruction_err_ * 1.01
    assert est.n_samples_seen_ == 400 and isinstance(ActivationStore(store.path), ActivationStore)


def test_only_statistic_solvers_are_accepted(tmp_path):
    A, _ = planted_nmf(n=50, c=8, k=2)
    with pytest.raises(TypeError, match="torch_hals"):
        fit_distributed(NMF(2, solver="cd"), [A])
    with pytest.raises(TypeError, match="NMF"):
        fit_distributed(object(), [A])
