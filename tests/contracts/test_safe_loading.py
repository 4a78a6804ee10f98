"""Safe loading: saved explanations, concept banks, CBMs and activation stores never unpickle,
never execute code, and refuse damaged or tampered files with a clear error.

Hypothesis feeds every loader random bytes and mutated valid files: flipped bytes in the
header or the body, truncations, extensions, a header length that lies, tensor entries whose
dtype, shape or offsets lie, and edited metadata (values of another type, deleted keys). A
loader must either raise a conceptkit error that names the file (``FormatError`` or another
``ValueError`` whose message holds the path) or return an object whose arrays agree with each
other; any other exception, or a silently inconsistent object, fails the test.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import conceptkit
from conceptkit import bottleneck, concepts, extraction, io
from conceptkit.concepts._methods import restrict_bank

# CONCEPTKIT_FUZZ=800 runs a longer, randomised campaign (the CI default is short and fixed).
FUZZ = int(os.environ.get("CONCEPTKIT_FUZZ", "0"))
SETTINGS = settings(max_examples=FUZZ or 40, deadline=None, derandomize=not FUZZ,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# Valid files of every kind, and a consistency check for what each loader returns
# ---------------------------------------------------------------------------------------------

def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def _check_bank(bank: concepts.ConceptBank) -> None:
    k, c = bank.components.shape
    assert bank.codes.ndim == 2 and bank.codes.shape[1] == k
    assert bank.concept_ids.shape == (k,)
    assert tuple(np.asarray(bank.factorizer.components_).shape) == (k, c)
    assert len(bank.provenance) == bank.codes.shape[0]
    codes = bank.encode(torch.rand(3, c))
    assert tuple(codes.shape) == (3, k)


def _check_explanation(result: conceptkit.ClassConcepts) -> None:
    _check_bank(result.bank)
    k = result.bank.n_concepts
    assert result.importances.shape == (k,)
    assert result.importance.per_input.ndim == 2 and result.importance.per_input.shape[1] == k
    if result.saved_maps is not None:
        assert result.saved_maps.ndim == 4 and result.saved_maps.shape[1] == k


def _check_cbm(model: bottleneck.ConceptBottleneckModel) -> None:
    out = model(torch.rand(2, 8))
    assert out.concept_logits.shape == (2, model.n_concepts)
    assert out.class_logits.shape == (2, model.n_classes)


def _check_label_free(model: bottleneck.LabelFreeCBM) -> None:
    logits = model.decision_function(torch.rand(2, 3, 16, 16))
    assert logits.shape == (2, len(model.classes_))
    assert len(model.concepts_) == model.projection_.shape[0] == model.weight_.shape[1]


def _check_posthoc(model: bottleneck.PosthocCBM) -> None:
    logits = model.decision_function(np.random.default_rng(0).normal(size=(2, 5)))
    assert logits.shape == (2, len(model.classes_))


def _check_named(result: conceptkit.ClassConcepts) -> None:
    _check_explanation(result)
    k = result.bank.n_concepts
    assert result.names is not None and len(result.names) == k
    for c, vis in result.visualizations.items():
        assert 0 <= c < k and vis.image.shape[0] == 3
        assert tuple(vis.transparency.shape) == tuple(vis.image.shape[1:])


def _check_discovered(model: bottleneck.DiscoveredCBM) -> None:
    k = model.n_concepts
    assert len(model.names_) == k and model.trust_.shape == (k,)
    logits = model.decision_function(activations=torch.rand(2, 8, 12, 12))
    assert logits.shape == (2, model.n_classes_)


def _check_store(store: extraction.ActivationStore) -> None:
    rows = store.read()
    assert rows.shape == store.shape


class Backbone(nn.Module):
    def forward(self, x):
        return x.mean((2, 3)).repeat(1, 2)[:, :5]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("valid")
    model = _model()
    images = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    out = {}
    bank = concepts.CRAFT(3, patch_size=12, seed=0, progress=False).fit(model, "3", images)
    out["bank"] = Path(bank.save(root / "bank.safetensors"))
    explanation = conceptkit.ConceptExplainer(model, "3", n_concepts=3, method="ice", seed=0,
                                              progress=False).fit(images, 1)
    out["explanation"] = Path(explanation.save(root / "explanation.safetensors", n_images=2,
                                               n_exemplars=2))
    explanation.name_concepts("classes", class_names=["a", "b", "c"])
    explanation.visualize(0, steps=2, image_size=16, progress=False)
    out["named_explanation"] = Path(explanation.save(root / "named.safetensors", n_images=2,
                                                     n_exemplars=2))
    discovered = bottleneck.DiscoveredCBM(explanation, nnz_per_class=2, progress=False).fit(
        images, torch.tensor([0, 1, 2, 0]))
    out["discovered_cbm"] = Path(discovered.save(root / "discovered.safetensors"))
    torch.manual_seed(0)
    cbm = bottleneck.ConceptBottleneckModel(nn.Linear(8, 4), 4, 3, head="mlp", hidden=6)
    out["cbm"] = Path(cbm.save(root / "cbm.safetensors"))
    out["label_free"] = Path(_label_free().save(root / "label_free.safetensors"))
    cav_bank = bottleneck.CAVBank(np.eye(5)[:3] + 0.1, np.zeros(3), ["a", "b", "c"])
    rng = np.random.default_rng(0)
    posthoc = bottleneck.PosthocCBM(cav_bank, max_iter=20, progress=False).fit(
        rng.normal(size=(30, 5)), np.arange(30) % 3)
    out["posthoc"] = Path(posthoc.save(root / "posthoc.safetensors"))
    extractor = extraction.ActivationExtractor(model, "3", progress=False)
    extraction.write_store(extractor, images, root / "store", chunk_size=2, progress=False)
    out["store"] = root / "store"
    return out


def _label_free() -> bottleneck.LabelFreeCBM:
    """A fitted label-free CBM built from its fitted attributes (what the file stores)."""
    model = bottleneck.LabelFreeCBM(Backbone(), None, ["red", "round", "tall"], ["a", "b"],
                                    progress=False)
    gen = torch.Generator().manual_seed(0)
    model.concepts_ = ["red", "round"]
    model.removed_ = {"tall": "not interpretable"}
    model.projection_ = torch.randn(2, 5, generator=gen)
    model.proj_mean_, model.proj_std_ = torch.zeros(2), torch.ones(2)
    model.concept_similarity_ = torch.tensor([0.6, 0.7])
    model.weight_, model.bias_ = torch.randn(2, 2, generator=gen), torch.zeros(2)
    model.alpha_, model.path_, model.val_accuracy_, model.proj_steps_ = 0.01, [], 0.5, 10
    model.classes_ = ["a", "b"]
    return model


LOADERS: dict[str, tuple[Callable[[Path], Any], Callable[[Any], None]]] = {
    "bank": (concepts.ConceptBank.load, _check_bank),
    "explanation": (conceptkit.load, _check_explanation),
    "named_explanation": (conceptkit.load, _check_named),
    "discovered_cbm": (bottleneck.DiscoveredCBM.load, _check_discovered),
    "cbm": (bottleneck.ConceptBottleneckModel.load, _check_cbm),
    "label_free": (lambda path: bottleneck.LabelFreeCBM.load(path, Backbone()), _check_label_free),
    "posthoc": (bottleneck.PosthocCBM.load, _check_posthoc),
}


def load_or_refuse(kind: str, path: Path) -> Any:
    """Load; a refusal must be a conceptkit error naming the file, a success must be consistent."""
    loader, check = LOADERS[kind]
    try:
        result = loader(path)
    except ValueError as err:  # FormatError is a ValueError
        assert "`path`" in str(err) and str(path) in str(err), f"unclear error: {err!r}"
        return None
    check(result)
    return result


# ---------------------------------------------------------------------------------------------
# The valid files load, without pickle and without executing code
# ---------------------------------------------------------------------------------------------

def _forbidden(name: str) -> Callable[..., Any]:
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} was called while loading a conceptkit file")
    return refuse


@pytest.mark.parametrize("kind", sorted(LOADERS) + ["store"])
def test_valid_files_load_without_pickle_or_code(kind, files, monkeypatch):
    def load():
        if kind == "store":
            _check_store(extraction.ActivationStore(files["store"]))
        else:
            assert load_or_refuse(kind, files[kind]) is not None

    load()  # first load: lazy imports happen outside the guard
    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load"), (builtins, "eval"), (builtins, "exec")):
        monkeypatch.setattr(module, name, _forbidden(f"{module.__name__}.{name}"))
    load()


def test_a_pickle_is_refused_without_being_unpickled(tmp_path, monkeypatch):
    class Payload:
        def __reduce__(self):
            return (print, ("pickle payload executed",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    torch.save({"components": torch.ones(2, 2)}, tmp_path / "torch.safetensors")
    monkeypatch.setattr(pickle, "loads", _forbidden("pickle.loads"))
    monkeypatch.setattr(torch, "load", _forbidden("torch.load"))
    for file in (path, tmp_path / "torch.safetensors"):
        for kind in LOADERS:
            with pytest.raises(io.FormatError, match="`path`"):
                LOADERS[kind][0](file)


def test_store_chunks_are_read_without_pickle(files, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(files["store"], store)
    np.save(store / "chunk-000001.npy", np.array([{"x": 1}, {"y": 2}], dtype=object),
            allow_pickle=True)
    with pytest.raises(ValueError, match="`path`.*chunk-000001.npy"):
        extraction.ActivationStore(store).read()


# ---------------------------------------------------------------------------------------------
# Random bytes and mutated files
# ---------------------------------------------------------------------------------------------

def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path inside a JSON value."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value[:4]):
            out += _paths(item, prefix + (index,))
    return out


def _damage_at(info: Any, path: tuple, delete: bool, draw_value) -> None:
    """Delete the entry at ``path`` inside ``info`` (when ``delete`` and its parent is a dict) or
    replace it with ``draw_value()``."""
    parent = info
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw_value()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def _mutate(data: bytes, draw) -> bytes:
    header, body = _split(data)
    head_len = len(data) - len(body)
    how = draw(st.sampled_from(["flip_header", "flip_body", "truncate", "extend", "length",
                                "tensor_entry", "metadata", "metadata_delete", "swap_offsets"]))
    if how in ("flip_header", "flip_body"):
        low, high = (0, head_len) if how == "flip_header" else (head_len, len(data))
        if high <= low:
            return data
        at = draw(st.integers(low, high - 1))
        flipped = bytearray(data)
        flipped[at] ^= draw(st.integers(1, 255))
        return bytes(flipped)
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=64))
    if how == "length":
        lie = draw(st.sampled_from([0, 1, head_len - 9, head_len - 7, len(data), 2**63 - 1]))
        return struct.pack("<Q", max(0, lie)) + data[8:]
    tensors = [key for key in header if key != "__metadata__"]
    if how in ("tensor_entry", "swap_offsets") and tensors:
        key = draw(st.sampled_from(tensors))
        entry = header[key]
        if how == "swap_offsets":
            other = header[draw(st.sampled_from(tensors))]
            entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
        else:
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            if field == "dtype":
                entry["dtype"] = draw(st.sampled_from(["F64", "F32", "F16", "I64", "I8", "U8", "BOOL",
                                                       "BF16", "XX", 7]))
            elif field == "shape":
                entry["shape"] = draw(st.lists(st.integers(-2, 40), max_size=4))
            else:
                entry["data_offsets"] = draw(st.lists(st.integers(-5, len(body) + 50),
                                                      min_size=0, max_size=3))
        return _join(header, body)
    info = json.loads(header["__metadata__"]["conceptkit"])
    paths = _paths(info)
    path = draw(st.sampled_from(paths))
    _damage_at(info, path, how == "metadata_delete", lambda: draw(JSON_VALUES))
    header["__metadata__"]["conceptkit"] = json.dumps(info)
    return _join(header, body)


@pytest.mark.parametrize("kind", sorted(LOADERS))
@SETTINGS
@given(data=st.binary(max_size=512))
def test_random_bytes_are_refused(kind, data, files):
    path = files[kind].with_name(f"random-{kind}.safetensors")
    path.write_bytes(data)
    assert load_or_refuse(kind, path) is None


@pytest.mark.parametrize("kind", sorted(LOADERS))
@settings(SETTINGS, max_examples=2 * SETTINGS.max_examples)
@given(st.data())
def test_mutated_files_are_refused_or_consistent(kind, files, data):
    mutated = _mutate(files[kind].read_bytes(), data.draw)
    path = files[kind].with_name(f"mutated-{kind}.safetensors")
    path.write_bytes(mutated)
    load_or_refuse(kind, path)


STORE_MUTATIONS = st.sampled_from(["manifest_bytes", "manifest_value", "manifest_delete",
                                   "chunk_bytes", "chunk_truncate", "chunk_missing"])


@SETTINGS
@given(how=STORE_MUTATIONS, data=st.data())
def test_mutated_stores_are_refused_or_consistent(files, how, data):
    store = files["store"].with_name("mutated-store")
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(files["store"], store)
    manifest = store / "manifest.json"
    chunk = store / f"chunk-{data.draw(st.integers(0, 1)):06d}.npy"
    if how == "manifest_bytes":
        raw = bytearray(manifest.read_bytes())
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        manifest.write_bytes(bytes(raw))
    elif how in ("manifest_value", "manifest_delete"):
        info = json.loads(manifest.read_text())
        path = data.draw(st.sampled_from(_paths(info)))
        _damage_at(info, path, how == "manifest_delete", lambda: data.draw(JSON_VALUES))
        manifest.write_text(json.dumps(info))
    elif how == "chunk_bytes":
        raw = bytearray(chunk.read_bytes())
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        chunk.write_bytes(bytes(raw))
    elif how == "chunk_truncate":
        raw = chunk.read_bytes()
        chunk.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
    else:
        chunk.unlink()
    try:
        _check_store(extraction.ActivationStore(store))
    except (ValueError, FileNotFoundError) as err:
        assert "`path`" in str(err) and str(store) in str(err), f"unclear error: {err!r}"


# ---------------------------------------------------------------------------------------------
# Equal or FormatError, within bounds: every saved file carries a digest of its content, so a
# mutation either leaves the content as saved (the file loads to an object that saves to the
# very same bytes) or is refused with a FormatError naming the file; every store manifest carries
# a digest too. Each load must finish within SECONDS and must not raise the process's peak
# memory by more than MEMORY_MB.
# ---------------------------------------------------------------------------------------------

SECONDS = 5.0
MEMORY_MB = 256


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _bounded(load: Callable[[], Any]) -> Any:
    """``load()``'s result, or its FormatError; checks the time and memory bounds either way."""
    import time

    peak, start = _peak_mb(), time.perf_counter()
    try:
        return load()
    except io.FormatError as err:
        return err
    finally:
        assert time.perf_counter() - start < SECONDS, "a load took longer than the bound"
        assert _peak_mb() - peak < MEMORY_MB, "a load raised the peak memory beyond the bound"


def _saved_bytes(kind: str, obj: Any, path: Path) -> bytes:
    obj.save(path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", sorted(LOADERS))
@settings(SETTINGS, max_examples=2 * SETTINGS.max_examples)
@given(st.data())
def test_mutated_files_load_equal_or_raise_format_error(kind, files, data):
    loader = LOADERS[kind][0]
    mutated = _mutate(files[kind].read_bytes(), data.draw)
    path = files[kind].with_name(f"equal-{kind}.safetensors")
    path.write_bytes(mutated)
    result = _bounded(lambda: loader(path))
    if isinstance(result, io.FormatError):
        assert "`path`" in str(result) and str(path) in str(result), f"unclear error: {result!r}"
        return
    original = loader(files[kind])
    assert (_saved_bytes(kind, result, path.with_name(f"resaved-{kind}.safetensors"))
            == _saved_bytes(kind, original, path.with_name(f"original-{kind}.safetensors"))), (
        f"a mutated {kind} file loaded to another object without a FormatError")


@SETTINGS
@given(how=st.sampled_from(["manifest_bytes", "manifest_value", "manifest_delete",
                            "manifest_truncate"]), data=st.data())
def test_mutated_manifests_load_equal_or_raise_format_error(files, how, data):
    store = files["store"].with_name("equal-store")
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(files["store"], store)
    manifest = store / "manifest.json"
    raw = manifest.read_bytes()
    if how == "manifest_bytes":
        flipped = bytearray(raw)
        flipped[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        manifest.write_bytes(bytes(flipped))
    elif how == "manifest_truncate":
        manifest.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
    else:
        info = json.loads(raw)
        path = data.draw(st.sampled_from(_paths(info)))
        _damage_at(info, path, how == "manifest_delete", lambda: data.draw(JSON_VALUES))
        manifest.write_text(json.dumps(info))
    result = _bounded(lambda: extraction.ActivationStore(store))
    if isinstance(result, io.FormatError):
        assert "`path`" in str(result) and str(store) in str(result), f"unclear error: {result!r}"
        return
    original = extraction.ActivationStore(files["store"])
    assert {k: v for k, v in result.manifest.items() if k != "digest"} == {
        k: v for k, v in original.manifest.items() if k != "digest"}
    np.testing.assert_array_equal(result.read(), original.read())


def test_checked_states_still_round_trip(tmp_path):
    """The state checks refuse only broken states: a sparse autoencoder bank restricted to fewer
    concepts than its top_k (as ACE's cluster filter can do) saves, loads and encodes the same."""
    from conceptkit.extraction import Provenance

    rows = np.abs(np.random.default_rng(0).normal(size=(40, 6)))
    provenance = Provenance("image", np.arange(40), np.zeros((40, 4)), (8, 8))
    bank = concepts.bank_from_activations(concepts.TopKSAE(8, top_k=4, epochs=2, random_state=0),
                                          rows, provenance)
    restricted = restrict_bank(bank, np.array([1, 5]))
    loaded = concepts.ConceptBank.load(restricted.save(tmp_path / "sae.safetensors"))
    assert loaded.n_concepts == 2
    np.testing.assert_array_equal(loaded.encode(rows), restricted.encode(rows))
    np.testing.assert_array_equal(loaded.codes.numpy(), restricted.codes.numpy())
