"""The on-disk activation store: chunking, resuming, atomic chunks, safe reads."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.extraction import ActivationExtractor, ActivationStore, write_store
from conceptkit.extraction._store import finalize_store, write_chunks


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 2)).eval()


def test_store_round_trip_and_layouts(tmp_path):
    model = _model()
    x = torch.rand(23, 3, 8, 8)
    extractor = ActivationExtractor(model, "1", batch_size=5, progress=False)
    maps = extractor(x)
    store = write_store(extractor, x, tmp_path / "pooled", chunk_size=10, progress=False)
    assert store.shape == (23, 6) and len(store.manifest["chunks"]) == 3
    assert np.allclose(store.read(), maps.mean((2, 3)).numpy(), atol=1e-6)
    pos = write_store(extractor, x, tmp_path / "pos", chunk_size=10, layout="positions", progress=False)
    assert pos.shape == (23 * 64, 6)
    assert np.allclose(pos.read(), maps.permute(0, 2, 3, 1).reshape(-1, 6).numpy(), atol=1e-6)
    blocks = list(pos.iter_batches(500))
    assert [b.shape[0] for b in blocks] == [500, 500, 472]
    assert np.array_equal(np.concatenate(blocks), pos.read())


def test_rerun_skips_completed_chunks(tmp_path):
    calls = []

    def compute(start, stop):
        calls.append((start, stop))
        return torch.arange(start, stop, dtype=torch.float32)[:, None].repeat(1, 3)

    write_chunks(compute, 25, tmp_path, chunk_size=10, progress=False, indices=[0, 2])
    assert calls == [(0, 10), (20, 25)]
    with pytest.raises(ValueError, match="chunk 1 is missing"):
        finalize_store(tmp_path, 25, chunk_size=10, layout="pooled")
    calls.clear()
    done = write_chunks(compute, 25, tmp_path, chunk_size=10, progress=False)
    assert done == [1] and calls == [(10, 20)]
    store = finalize_store(tmp_path, 25, chunk_size=10, layout="pooled")
    assert np.array_equal(store.read()[:, 0], np.arange(25))


def test_half_written_chunk_is_never_read(tmp_path):
    write_chunks(lambda s, e: torch.ones(e - s, 2), 4, tmp_path, chunk_size=2, progress=False)
    # a crash leaves only temporary files behind; they are ignored and never named like a chunk
    (tmp_path / ".chunk-000001.npy.123.tmp").write_bytes(b"garbage")
    (tmp_path / "chunk-000001.npy").unlink()
    with pytest.raises(ValueError, match="missing"):
        finalize_store(tmp_path, 4, chunk_size=2, layout="pooled")
    write_chunks(lambda s, e: torch.ones(e - s, 2), 4, tmp_path, chunk_size=2, progress=False)
    assert finalize_store(tmp_path, 4, chunk_size=2, layout="pooled").shape == (4, 2)


def test_store_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        ActivationStore(tmp_path)
    write_chunks(lambda s, e: torch.ones(e - s, 2), 4, tmp_path, chunk_size=2, progress=False)
    finalize_store(tmp_path, 4, chunk_size=2, layout="pooled")
    (tmp_path / "chunk-000000.npy").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        ActivationStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="not a version"):
        ActivationStore(tmp_path)
