"""Fourth review of stores: a model's own forward code and plain-object settings, constants
read through classes and config modules, two writers at once, half-written stores."""

from __future__ import annotations

import json
import sys
import textwrap
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.extraction import ActivationExtractor, ActivationStore, _store, write_store
from conceptkit.extraction._fingerprint import code_digest, extractor_identity, inputs_identity
from conceptkit.extraction._store import manifest_digest, write_chunks
from conceptkit.io import FormatError

IMAGES = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _net(body: str, extra: str = "") -> type:
    """A module class ``Net`` whose forward returns ``body``: two calls give two classes of
    the same name, module and structure that differ only in their code."""
    namespace = {"nn": nn, "torch": torch, "__name__": __name__}
    exec(textwrap.dedent(f"""
    class Net(nn.Module):
        def __init__(self, cfg=None):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Identity()
            self.cfg = cfg
        {extra}
        def forward(self, x):
            return self.head({body})
    """), namespace)
    return namespace["Net"]


def _extract(model, out, **kwargs):
    ex = ActivationExtractor(model, "head", progress=False, **kwargs)
    return ex, write_store(ex, IMAGES, out, chunk_size=2, progress=False)


def test_a_store_of_another_forward_is_refused_not_served(tmp_path):
    relu = _net("torch.relu(self.conv(x))")().eval()
    sigmoid = _net("torch.sigmoid(self.conv(x))")().eval()
    _extract(relu, tmp_path / "s")
    with pytest.raises(ValueError, match="model code"):
        _extract(sigmoid, tmp_path / "s")
    ex, store = _extract(sigmoid, tmp_path / "s2")  # a fresh store: the new forward's rows
    np.testing.assert_allclose(store.read(), ex(IMAGES).mean((2, 3)).numpy(), rtol=1e-5)


class _Cfg:
    def __init__(self, scale):
        self.scale = scale
        self.inner = types.SimpleNamespace(shift=0.0)


def test_settings_in_a_plain_config_object_are_fingerprinted(tmp_path):
    net = _net("self.conv(x) * self.cfg.scale + self.cfg.inner.shift")
    _extract(net(_Cfg(1.0)).eval(), tmp_path / "s")
    with pytest.raises(ValueError, match="model code"):
        _extract(net(_Cfg(5.0)).eval(), tmp_path / "s")
    deeper = _Cfg(1.0)
    deeper.inner.shift = 2.0  # two levels down
    with pytest.raises(ValueError, match="model code"):
        _extract(net(deeper).eval(), tmp_path / "s")
    _extract(net(_Cfg(1.0)).eval(), tmp_path / "s")  # the same settings: reused


def test_code_digest_is_stable_and_leaves_library_modules_alone():
    import copy

    net = _net("torch.relu(self.conv(x))", extra="""
        def helper(self, x):
            return x in {"a", "b", "c"}""")(_Cfg(1.0))
    assert code_digest(net) == code_digest(copy.deepcopy(net).train())
    # a model made of torch's modules only: named by its structure, its code not read
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert code_digest(plain) == code_digest(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))



class Cfg:
    scale = 1.0


def _prep_class(x):
    return x * Cfg.scale


def _helper3(x):
    return x * Cfg.scale


def _helper2(x):
    return _helper3(x)


def _helper1(x):
    return _helper2(x)


def _prep_deep(x):  # the constant three calls deep
    return _helper1(x)


@pytest.fixture
def cfg_scale():
    yield
    Cfg.scale = 1.0


@pytest.mark.parametrize("prep", [_prep_class, _prep_deep])
def test_a_constant_read_through_a_class_is_fingerprinted(tmp_path, cfg_scale, prep):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity()).eval()
    ex = ActivationExtractor(model, "1", progress=False, preprocess=prep)
    write_store(ex, IMAGES, tmp_path / "s", chunk_size=2, progress=False)
    Cfg.scale = 10.0
    with pytest.raises(ValueError, match="preprocessing constants"):
        write_store(ex, IMAGES, tmp_path / "s", chunk_size=2, progress=False)


def test_a_constant_of_a_config_module_is_fingerprinted(tmp_path, monkeypatch):
    config = types.ModuleType("ck_review_config")
    config.SCALE = 1.0
    monkeypatch.setitem(sys.modules, "ck_review_config", config)
    namespace = {"mycfg": config, "__name__": __name__}
    exec("def prep(x):\n    return x * mycfg.SCALE", namespace)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity()).eval()
    ex = ActivationExtractor(model, "1", progress=False, preprocess=namespace["prep"])
    write_store(ex, IMAGES, tmp_path / "s", chunk_size=2, progress=False)
    before = extractor_identity(ex)
    config.SCALE = 10.0
    after = extractor_identity(ex)
    assert after["preprocess"] == before["preprocess"]  # the recorded description is kept
    assert after["preprocess_reads"] != before["preprocess_reads"]
    with pytest.raises(ValueError, match="preprocessing constants"):
        write_store(ex, IMAGES, tmp_path / "s", chunk_size=2, progress=False)


def _strip(path, *keys):
    """The manifest an earlier conceptkit wrote: its fingerprint without ``keys``."""
    file = path / "manifest.json"
    manifest = json.loads(file.read_text())
    for key in keys:
        manifest["fingerprint"].pop(key, None)
    manifest.pop("digest")
    manifest["digest"] = manifest_digest(manifest)
    file.write_text(json.dumps(manifest))
    return manifest["fingerprint"]


def test_stores_without_the_new_fields_are_reused_as_they_are(tmp_path):
    net = _net("torch.relu(self.conv(x))")().eval()
    ex, store = _extract(net, tmp_path / "s")
    rows = store.read().copy()
    recorded = _strip(tmp_path / "s", "model_code", "preprocess_reads")
    chunk = tmp_path / "s" / "chunk-000000.npy"
    mtime = chunk.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = write_store(ex, IMAGES, tmp_path / "s", chunk_size=2, progress=False)
    np.testing.assert_array_equal(again.read(), rows)
    assert chunk.stat().st_mtime_ns == mtime  # reused, not recomputed
    assert again.manifest["fingerprint"] == recorded


def test_a_half_written_store_without_the_new_fields_resumes(tmp_path):
    net = _net("torch.relu(self.conv(x))")().eval()
    ex = ActivationExtractor(net, "head", progress=False)
    full = {**extractor_identity(ex), "inputs": inputs_identity(IMAGES)}
    old = {k: v for k, v in full.items() if k not in ("model_code", "preprocess_reads")}
    write_chunks(lambda s, e: ex(IMAGES[s:e]), 4, tmp_path / "s", chunk_size=2, indices=[0],
                 fingerprint=old, progress=False)
    store = write_store(ex, IMAGES, tmp_path / "s", chunk_size=2, progress=False)
    np.testing.assert_allclose(store.read(), ex(IMAGES).mean((2, 3)).numpy(), rtol=1e-5)


def test_a_writer_replaced_meanwhile_fails_instead_of_returning_the_others_rows(tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "s"
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    torch.manual_seed(1)
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    finalize = _store.finalize_store

    def other_writer_first(*args, **kwargs):  # B replaces the store before A finalizes
        monkeypatch.setattr(_store, "finalize_store", finalize)
        write_store(ActivationExtractor(b, "1", progress=False), IMAGES, out, chunk_size=2,
                    progress=False, overwrite=True, meta={"who": "B"})
        return finalize(*args, **kwargs)

    monkeypatch.setattr(_store, "finalize_store", other_writer_first)
    with pytest.raises(ValueError, match="no longer holds this extraction"):
        write_store(ActivationExtractor(a, "1", progress=False), IMAGES, out, chunk_size=2,
                    progress=False, meta={"who": "A"})
    store = ActivationStore(out)  # B's store, untouched
    assert store.manifest["meta"] == {"who": "B"}
    expected = ActivationExtractor(b, "1", progress=False)(IMAGES).mean((2, 3)).numpy()
    np.testing.assert_allclose(store.read(), expected, rtol=1e-5)


def test_a_half_written_store_says_it_is_incomplete(tmp_path):
    torch.manual_seed(0)
    ex = ActivationExtractor(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), "1",
                             progress=False)
    fingerprint = {**extractor_identity(ex), "inputs": inputs_identity(IMAGES)}
    write_chunks(lambda s, e: ex(IMAGES[s:e]), 4, tmp_path / "s", chunk_size=2, indices=[0],
                 fingerprint=fingerprint, progress=False)
    with pytest.raises(FormatError, match="is incomplete") as info:
        ActivationStore(tmp_path / "s")
    assert "corrupted" not in str(info.value) and "overwrite=True" not in str(info.value)
    # a finished manifest that claims 0 features is still corrupted
    store = write_store(ex, IMAGES, tmp_path / "t", chunk_size=2, progress=False)
    manifest = dict(store.manifest, n_features=0)
    manifest.pop("digest")
    manifest["digest"] = manifest_digest(manifest)
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="corrupted"):
        ActivationStore(tmp_path / "t")
