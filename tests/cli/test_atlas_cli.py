"""``conceptkit atlas`` on a maps store, in one process and under torchrun with 2 gloo ranks:
the same dictionary and importances either way."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from _shared import run_torchrun

import conceptkit


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPLBACKEND="Agg")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_atlas_command_single_and_torchrun_agree(tmp_path):
    store = tmp_path / "store"
    subprocess.run([sys.executable, "-m", "conceptkit", "extract", "--model", "reference",
                    "--layer", "block4", "--concept-dataset", "5", "--chunk-size", "4",
                    "--layout", "maps", "--quiet", "--out", str(store)],
                   check=True, env=_env(), timeout=300)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.repeat(np.arange(6), 5))  # make_concept_dataset orders images by class
    common = ["atlas", "--store", str(store), "--model", "reference", "--labels", str(labels),
              "--n-concepts", "6", "--importance", "closed_form", "--max-iter", "15",
              "--batch-rows", "128", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "conceptkit", *common, "--out",
                          str(tmp_path / "one")], env=_env(), timeout=300, capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "over 1 rank(s)" in one.stdout
    two = run_torchrun([sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                          "--nproc_per_node=2", "--master_addr=127.0.0.1",
                          f"--master_port={_port()}", "-m", "conceptkit", *common,
                          "--out", str(tmp_path / "two")], env=_env(), timeout=300,
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "over 2 rank(s)" in two.stdout
    a = conceptkit.load(tmp_path / "one" / "atlas.safetensors")
    b = conceptkit.load(tmp_path / "two" / "atlas.safetensors")
    np.testing.assert_allclose(b.data_.bank.components.numpy(), a.data_.bank.components.numpy(),
                               atol=1e-5 * float(a.data_.bank.components.abs().max()))
    np.testing.assert_allclose(b.importance.values, a.importance.values, rtol=1e-4, atol=1e-6)
    assert (tmp_path / "two" / "report" / "index.html").is_file()


def test_atlas_command_refuses_a_pooled_store(tmp_path, capsys):
    import torch

    from conceptkit.cli import main
    from conceptkit.extraction import finalize_store, write_chunks

    rows = torch.rand(12, 64)
    write_chunks(lambda s, e: rows[s:e], 12, tmp_path / "pooled", chunk_size=6, layout="pooled",
                 progress=False)
    finalize_store(tmp_path / "pooled", 12, chunk_size=6, layout="pooled")
    code = main(["atlas", "--store", str(tmp_path / "pooled"), "--model", "reference",
                 "--out", str(tmp_path / "x")])
    assert code == 2
    assert "layout 'maps'" in capsys.readouterr().err


def test_atlas_refuses_a_store_of_another_layer_or_model(tmp_path, capsys):
    """The store's fingerprint records the model's weights and the layer; `atlas` used a store
    of block4 with `--layer block3`, or with other weights, and exited 0."""
    import torch

    from conceptkit.cli import main
    from conceptkit.models import load as load_model

    store = tmp_path / "store"
    assert main(["extract", "--model", "reference", "--layer", "block4", "--concept-dataset",
                 "2", "--chunk-size", "4", "--layout", "maps", "--quiet",
                 "--out", str(store)]) == 0
    labels = tmp_path / "labels.npy"
    np.save(labels, np.repeat(np.arange(6), 2))
    common = ["atlas", "--store", str(store), "--model", "reference", "--labels", str(labels),
              "--n-concepts", "3", "--max-iter", "2", "--no-report", "--quiet"]
    capsys.readouterr()
    assert main([*common, "--layer", "block3", "--out", str(tmp_path / "a")]) == 2
    assert "extracted at layer 'block4'" in capsys.readouterr().err
    model = load_model("reference").model
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)  # another model of the same architecture and shapes
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "other.safetensors"))
    assert main([*common, "--weights", str(tmp_path / "other.safetensors"),
                 "--out", str(tmp_path / "b")]) == 2
    assert "another model" in capsys.readouterr().err
    assert main([*common, "--n-concepts", "0", "--out", str(tmp_path / "c")]) == 2
    assert "`--n-concepts` must be at least 1" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main([*common, "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_the_starting_fit_s_iteration_limit_is_not_called_max_iter(tmp_path, capsys):
    # the in-memory NMF that starts the streamed fit stops at its own 200 iterations; in the
    # command's terms its warning read "reached --max-iter 200 ... increase --max-iter", which
    # neither a default --max-iter (50) nor `--max-iter 400` explains or changes
    from conceptkit.cli import main

    store = tmp_path / "store"
    assert main(["extract", "--model", "reference", "--layer", "block4", "--concept-dataset",
                 "5", "--chunk-size", "10", "--layout", "maps", "--quiet",
                 "--out", str(store)]) == 0
    capsys.readouterr()
    assert main(["atlas", "--store", str(store), "--model", "reference", "--n-concepts", "20",
                 "--max-iter", "400", "--no-report", "--quiet",
                 "--out", str(tmp_path / "atlas")]) == 0
    err = capsys.readouterr().err
    assert "--max-iter 200" not in err and "increase `--max-iter`" not in err, err
    notes = [line for line in err.splitlines() if "starting dictionary" in line]
    assert len(notes) == 1, err
    assert notes[0].startswith("note: ") and "its own limit of 200 iterations" in notes[0]
    assert "informational" in notes[0] and "has no option in this command" in notes[0]
