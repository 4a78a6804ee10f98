"""Kill an extraction run with SIGKILL at random points and rerun it: it finishes without
recomputing completed chunks, and its output equals an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from conceptkit.extraction import ActivationStore

ARGS = ["--model", "reference", "--layer", "block3", "--concept-dataset", "20", "--chunk-size", "4",
        "--batch-size", "4", "--layout", "positions", "--quiet"]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


# The whole extraction takes about 0.1 s once the model is loaded, faster than a poll loop on a
# busy machine can catch it (CI once saw all 30 chunks written before the kill). The interrupted
# runs therefore write slowly: each chunk's ``np.save`` sleeps first, inside the open temporary
# file, so kills land between chunks and in the middle of writes alike.
SLOW = ("import runpy, sys, time, numpy\n"
        "save = numpy.save\n"
        "def slow_save(*args, **kwargs):\n"
        "    time.sleep(0.1)\n"
        "    return save(*args, **kwargs)\n"
        "numpy.save = slow_save\n"
        "sys.argv = ['conceptkit', *sys.argv[1:]]\n"
        "runpy.run_module('conceptkit', run_name='__main__')\n")


def _run(out, *, slow=False):
    head = [sys.executable, "-c", SLOW] if slow else [sys.executable, "-m", "conceptkit"]
    return subprocess.Popen([*head, "extract", *ARGS, "--out", str(out)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _chunks(path):
    return sorted(p for p in path.glob("chunk-*.npy")) if path.exists() else []


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    assert _run(reference).wait(timeout=600) == 0
    expected = ActivationStore(reference)
    n_chunks = len(expected.manifest["chunks"])  # 120 images / 4 = 30 chunks

    rng = np.random.default_rng(0)
    interrupted = tmp_path / "interrupted"
    kills = 0
    for _ in range(3):  # kill at random points, several times
        target = len(_chunks(interrupted)) + int(rng.integers(1, 6))
        proc = _run(interrupted, slow=True)
        deadline = time.time() + 300
        while proc.poll() is None and len(_chunks(interrupted)) < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.05)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        # every chunk under its final name is complete; no half-written chunk is ever visible
        for chunk in _chunks(interrupted):
            np.load(chunk, allow_pickle=False)
    assert kills >= 1
    done_before = {p.name: p.stat().st_ino for p in _chunks(interrupted)}
    assert 0 < len(done_before) < n_chunks
    proc = _run(interrupted)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    recomputed = n_chunks - len(done_before)
    assert f"this rank computed {recomputed})" in out.decode()
    after = {p.name: p.stat().st_ino for p in _chunks(interrupted)}
    assert all(after[name] == ino for name, ino in done_before.items())  # untouched files
    store = ActivationStore(interrupted)
    assert store.shape == expected.shape
    for i in range(n_chunks):
        assert np.array_equal(np.asarray(store.chunk(i)), np.asarray(expected.chunk(i)))
