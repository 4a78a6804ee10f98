"""Sharded extraction with torch.distributed (gloo, 2 CPU processes on localhost) writes the
same store as one process, and a rerun after a kill skips finished chunks."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from _shared import run_torchrun

from conceptkit.extraction import ActivationStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


ARGS = ["--model", "reference", "--layer", "block4", "--concept-dataset", "4", "--chunk-size", "5",
        "--batch-size", "8", "--quiet"]


def test_sharded_store_equals_single_process(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    subprocess.run([sys.executable, "-m", "conceptkit", "extract", *ARGS, "--out", str(single)],
                   check=True, env=_env(), timeout=300)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "conceptkit", "extract", *ARGS, "--out", str(sharded)]
    result = run_torchrun(cmd, env=_env(), timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = ActivationStore(single), ActivationStore(sharded)
    assert a.shape == b.shape == (24, 64)  # 6 classes x 4 images, block4 has 64 channels
    assert b.manifest["meta"]["world_size"] == 2
    assert len(b.manifest["chunks"]) == 5
    for i in range(5):
        assert np.array_equal(np.asarray(a.chunk(i)), np.asarray(b.chunk(i)))


@pytest.mark.parametrize("layout", ["positions"])
def test_positions_layout_from_the_cli(tmp_path, layout):
    out = tmp_path / "store"
    subprocess.run([sys.executable, "-m", "conceptkit", "extract", *ARGS, "--layout", layout,
                    "--out", str(out)], check=True, env=_env(), timeout=300)
    assert ActivationStore(out).shape == (24 * 8 * 8, 64)
