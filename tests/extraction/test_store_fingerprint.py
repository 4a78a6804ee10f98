"""Stores that cannot go stale: a rerun resumes only an extraction of the same things, manifests
that disagree with themselves are refused, files are written exclusively and a full disk leaves
nothing behind."""

from __future__ import annotations

import errno
import json
import os
import tempfile

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.extraction import ActivationExtractor, ActivationStore, write_store
from conceptkit.extraction._store import manifest_digest, write_chunks
from conceptkit.io import FormatError


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2)).eval()


IMAGES = torch.rand(7, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def _extractor(model=None, layer="1", **kwargs):
    return ActivationExtractor(model or _model(), layer, batch_size=4, progress=False, **kwargs)


def _fresh(tmp_path, name, extractor, images, **kwargs):
    return write_store(extractor, images, tmp_path / name, progress=False, **kwargs).read()


def _double(x):
    return x * 2


def _half(x):
    return x / 2


CHANGES = {
    "layer": (lambda: _extractor(layer="3"), IMAGES, {}, "layer ('1' in the store, '3' now)"),
    "inputs": (_extractor, IMAGES.flip(0), {}, "inputs"),
    "n_inputs": (_extractor, IMAGES[:5], {}, "number of inputs (7 in the store, 5 now)"),
    "chunk_size": (_extractor, IMAGES, {"chunk_size": 2}, "chunk size (3 in the store, 2 now)"),
    "layout": (_extractor, IMAGES, {"layout": "positions"}, "layout ('pooled' in the store"),
    "weights": (lambda: _extractor(_model(seed=1)), IMAGES, {}, "model weights"),
    "preprocess": (lambda: _extractor(preprocess=_half), IMAGES, {}, "preprocessing"),
    "dtype": (lambda: _extractor(_model().double()), IMAGES, {}, "model dtype"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_rerun_of_another_extraction_is_refused_then_overwritten(tmp_path, change):
    path = tmp_path / "store"
    write_store(_extractor(preprocess=_double), IMAGES, path, chunk_size=3, progress=False)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    make, images, kwargs, names = CHANGES[change]
    kwargs = {"chunk_size": 3, **kwargs}
    extractor = make()
    if change != "preprocess" and extractor.preprocess is None:
        extractor.preprocess = _double
    with pytest.raises(ValueError, match="overwrite=True") as err:
        write_store(extractor, images, path, progress=False, **kwargs)
    assert names in str(err.value) and str(path) in str(err.value)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # nothing touched
    store = write_store(extractor, images, path, progress=False, overwrite=True, **kwargs)
    expected = _fresh(tmp_path, "fresh", extractor, images, **kwargs)
    np.testing.assert_array_equal(store.read(), expected)
    assert store.manifest["fingerprint"]["n_inputs"] == len(images)


def test_the_same_extraction_resumes_without_recomputing(tmp_path):
    path = tmp_path / "store"
    write_store(_extractor(preprocess=_double), IMAGES, path, chunk_size=3, progress=False)
    (path / "chunk-000001.npy").unlink()
    calls = []

    class Counting(ActivationExtractor):
        def __call__(self, inputs):
            calls.append(len(inputs))
            return super().__call__(inputs)

    # a new extractor object, a new model object with equal weights, an equal function: the same
    store = write_store(Counting(_model(), "1", batch_size=4, progress=False, preprocess=_double),
                        IMAGES.clone(), path, chunk_size=3, progress=False)
    assert calls == [3]  # only the missing chunk
    np.testing.assert_array_equal(
        store.read(), _fresh(tmp_path, "fresh", _extractor(preprocess=_double), IMAGES, chunk_size=3))


SCALE = 1.0


def _scaled(x):
    return x * SCALE


class _Gain(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("gain", torch.ones(1), persistent=False)

    def forward(self, x):
        return x * self.gain


NET = _model()


def _through_net(x):  # a plain callable extractor reaching its model through a global
    return NET[:2](x)


def test_what_a_state_dict_or_a_functions_code_does_not_show_is_still_compared(tmp_path,
                                                                              monkeypatch):
    # a non-persistent buffer changes the output but not the state_dict
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Gain()).eval()
    write_store(_extractor(model), IMAGES, tmp_path / "buffer", chunk_size=3, progress=False)
    model[1].gain.fill_(3.0)
    with pytest.raises(ValueError, match="model weights"):
        write_store(_extractor(model), IMAGES, tmp_path / "buffer", chunk_size=3, progress=False)
    # a global a preprocessing function reads
    write_store(_extractor(preprocess=_scaled), IMAGES, tmp_path / "global", chunk_size=3,
                progress=False)
    monkeypatch.setitem(_scaled.__globals__, "SCALE", 5.0)
    with pytest.raises(ValueError, match="preprocessing"):
        write_store(_extractor(preprocess=_scaled), IMAGES, tmp_path / "global", chunk_size=3,
                    progress=False)
    # a model a plain callable extractor reaches through a global
    write_store(_through_net, IMAGES, tmp_path / "callable", chunk_size=3, progress=False)
    with torch.no_grad():
        NET[0].weight.mul_(10.0)
    try:
        with pytest.raises(ValueError, match="extractor"):
            write_store(_through_net, IMAGES, tmp_path / "callable", chunk_size=3, progress=False)
    finally:
        with torch.no_grad():
            NET[0].weight.div_(10.0)


def test_chunks_without_a_manifest_are_refused(tmp_path):
    write_chunks(lambda s, e: torch.ones(e - s, 2), 4, tmp_path, chunk_size=2, progress=False)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="origin is unknown.*overwrite=True"):
        write_chunks(lambda s, e: torch.ones(e - s, 2), 4, tmp_path, chunk_size=2, progress=False)


def test_a_dataset_is_identified_by_its_fingerprint(tmp_path):
    class Images(torch.utils.data.Dataset):
        def __init__(self, images, version):
            self.images, self.fingerprint = images, version

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], 0

    path = tmp_path / "store"
    write_store(_extractor(), Images(IMAGES, "v1"), path, chunk_size=3, progress=False)
    write_store(_extractor(), Images(IMAGES, "v1"), path, chunk_size=3, progress=False)
    with pytest.raises(ValueError, match="inputs"):
        write_store(_extractor(), Images(IMAGES, "v2"), path, chunk_size=3, progress=False)


def _image_folder(root, images):
    """A torchvision ImageFolder over PNG files of ``images`` (one class folder)."""
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    (root / "a").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(root / "a" / f"{i}.png")
    return ImageFolder(str(root), transform=ToTensor())


def test_a_folder_dataset_is_identified_by_every_file(tmp_path):
    """A file other than the first, middle and last replaced: the store used to resume from its
    stale chunks (only three items were read); a folder dataset is identified by every file's
    path, size and modification time now."""
    import warnings

    folder = _image_folder(tmp_path / "images", IMAGES)
    path = tmp_path / "store"
    first = write_store(_extractor(), folder, path, chunk_size=3, progress=False).read()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every file identified: a resume does not warn
        again = type(folder)(folder.root, transform=folder.transform)  # the same files, re-listed
        write_store(_extractor(), again, path, chunk_size=3, progress=False)
    changed = IMAGES.clone()
    changed[1] = 1 - changed[1]  # item 1: not the first, middle (3) or last (6)
    folder = _image_folder(tmp_path / "images", changed)
    stat = os.stat(folder.samples[1][0])
    os.utime(folder.samples[1][0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="inputs"):
        write_store(_extractor(), folder, path, chunk_size=3, progress=False)
    fresh = write_store(_extractor(), folder, path, chunk_size=3, progress=False,
                        overwrite=True).read()
    assert not np.allclose(fresh[:3], first[:3])  # the chunk holding item 1 is recomputed
    np.testing.assert_allclose(fresh[3:], first[3:])


def test_a_subset_is_identified_by_its_dataset_and_indices(tmp_path):
    from conceptkit.extraction._fingerprint import identity_is_sampled, inputs_identity

    folder = _image_folder(tmp_path / "images", IMAGES)
    one = torch.utils.data.Subset(folder, [0, 2, 4])
    other = torch.utils.data.Subset(folder, [0, 3, 4])
    assert inputs_identity(one) != inputs_identity(other)
    assert not identity_is_sampled(one) and not identity_is_sampled(folder)


def test_reusing_chunks_of_a_dataset_known_by_three_items_warns(tmp_path):
    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], 0

    path = tmp_path / "store"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first run computes every chunk: nothing to say
        write_store(_extractor(), Images(IMAGES), path, chunk_size=3, progress=False)
    with pytest.warns(UserWarning, match="reused 3 chunk.*first, middle and last.*fingerprint"):
        write_store(_extractor(), Images(IMAGES), path, chunk_size=3, progress=False)


# ---------------------------------------------------------------------------------------------
# Manifests that disagree with themselves
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    write_store(_extractor(), IMAGES, path, chunk_size=3, progress=False)
    return path


def _edit(path, edit, sign=True):
    """Edit the manifest; ``sign`` recomputes its digest, as a deliberate forger would, so that
    the consistency checks behind the digest are exercised too."""
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    if sign:
        manifest["digest"] = manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_an_edited_manifest_is_refused_by_its_digest(store):
    _edit(store, lambda m: m["meta"].update(note="edited"), sign=False)
    with pytest.raises(FormatError, match="edited or damaged"):
        ActivationStore(store)


def _swap(m):
    m["chunks"][0], m["chunks"][1] = m["chunks"][1], m["chunks"][0]


def _swap_files(m):
    m["chunks"][0]["file"], m["chunks"][1]["file"] = m["chunks"][1]["file"], m["chunks"][0]["file"]


def _repeat(m):
    m["chunks"][1] = dict(m["chunks"][0])


def _duplicate(m):
    m["chunks"].insert(1, dict(m["chunks"][0]))
    m["n_chunks"] += 1


def _rows(m):
    m["layout"] = "positions"  # positions over pooled rows: 3 rows for 3 inputs are 1 position
    m["chunks"][2]["rows"] = 2   # ... but the last chunk's single input cannot have 2


MANIFEST_EDITS = {"swapped": _swap, "swapped-files": _swap_files, "repeated": _repeat,
                  "duplicated": _duplicate, "rows": _rows,
                  "bool-count": lambda m: m.update(n_inputs=True),
                  "dtype": lambda m: m.update(dtype="object"),
                  "n_chunks": lambda m: m.update(n_chunks=2)}


@pytest.mark.parametrize("edit", sorted(MANIFEST_EDITS))
def test_inconsistent_manifests_are_refused(store, edit):
    _edit(store, MANIFEST_EDITS[edit])
    with pytest.raises(FormatError, match="`path`") as err:
        ActivationStore(store).read()
    assert str(store) in str(err.value)


def _flip_byte(store):
    raw = bytearray((store / "chunk-000001.npy").read_bytes())
    raw[-1] ^= 0xFF
    (store / "chunk-000001.npy").write_bytes(bytes(raw))


def _swap_chunks(store):
    first, last = store / "chunk-000000.npy", store / "chunk-000001.npy"
    a, b = first.read_bytes(), last.read_bytes()
    first.write_bytes(b)
    last.write_bytes(a)


def _fortran(store):
    file = store / "chunk-000001.npy"
    file.write_bytes(file.read_bytes().replace(b"'fortran_order': False",
                                               b"'fortran_order': True "))


@pytest.mark.parametrize("tamper", [_flip_byte, _swap_chunks, _fortran])
def test_altered_chunks_are_refused_by_their_digest(store, tamper):
    assert all("digest" in entry for entry in ActivationStore(store).manifest["chunks"])
    tamper(store)
    with pytest.raises(FormatError, match="digest its manifest recorded"):
        ActivationStore(store).read()
    # a store written before chunks had digests still loads, but a Fortran-order chunk is not
    # read as C order
    _edit(store, lambda m: [entry.pop("digest") for entry in m["chunks"]])
    if tamper is _fortran:
        with pytest.raises(FormatError, match="Fortran order"):
            ActivationStore(store).read()
    else:
        ActivationStore(store).read()


def test_a_chunk_is_hashed_once_per_store_object(store, monkeypatch):
    from conceptkit.extraction import _store_read

    calls = []
    real = _store_read.chunk_digest
    monkeypatch.setattr(_store_read, "chunk_digest", lambda file: calls.append(file) or real(file))
    opened = ActivationStore(store)
    first = opened.read()
    np.testing.assert_array_equal(opened.read(), first)
    assert len(calls) == len(opened.manifest["chunks"])


def test_a_chunk_dtype_other_than_the_manifests_is_refused(store):
    _edit(store, lambda m: m.update(dtype="float64"))
    with pytest.raises(ValueError, match="float64"):
        ActivationStore(store).read()


def test_symlinked_chunks_are_refused(store, tmp_path):
    outside = tmp_path / "outside.npy"
    os.replace(store / "chunk-000001.npy", outside)
    (store / "chunk-000001.npy").symlink_to(outside)
    with pytest.raises(ValueError, match="symbolic link"):
        ActivationStore(store)
    with pytest.raises(ValueError, match="symbolic link"):  # a resume does not trust it either
        write_store(_extractor(), IMAGES, store, chunk_size=3, progress=False)


# ---------------------------------------------------------------------------------------------
# Exclusive temporary files; a full disk
# ---------------------------------------------------------------------------------------------

def test_temporary_files_never_follow_a_planted_symlink(tmp_path, monkeypatch):
    path = tmp_path / "store"
    path.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = ["planted1", "planted2"]
    for name in planted:  # every name the writer could pick first is a symlink to the victim
        for target in ("manifest.json", "chunk-000000.npy", "chunk-000001.npy", "chunk-000002.npy"):
            (path / f".{target}.{name}.tmp").symlink_to(victim)

    def names():
        yield from planted
        while True:
            yield from (f"fresh{i}" for i in range(10**6))

    candidates = names()
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: candidates)
    store = write_store(_extractor(), IMAGES, path, chunk_size=3, progress=False)
    assert victim.read_text() == "precious"
    assert store.shape == (7, 4)


@pytest.mark.parametrize("fail", ["chunk", "manifest"])
def test_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch, fail):
    path = tmp_path / "store"
    real_save = np.save

    def full_disk_save(fh, array, **kwargs):
        fh.write(b"\x93NUMPY partial")  # part of the file reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail == "chunk":
        monkeypatch.setattr(np, "save", full_disk_save)
    else:
        monkeypatch.setattr(os, "fsync", full_disk_fsync)
    with pytest.raises(OSError) as err:
        write_store(_extractor(), IMAGES, path, chunk_size=3, progress=False)
    assert err.value.errno == errno.ENOSPC
    assert str(path) in str(err.value) and "No space left" in str(err.value)
    left = sorted(p.name for p in path.iterdir())
    assert left == (["manifest.json"] if fail == "chunk" else [])  # the pending manifest only
    monkeypatch.setattr(np, "save", real_save)
    monkeypatch.undo()
    store = write_store(_extractor(), IMAGES, path, chunk_size=3, progress=False)  # resumes
    assert store.shape == (7, 4)


def test_a_store_path_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "store"
    file.write_text("notes")
    with pytest.raises(NotADirectoryError, match="`path`.*is a file"):
        write_store(_extractor(), IMAGES, file, progress=False)
    assert file.read_text() == "notes"


def test_fingerprints_of_what_reads_no_global_are_those_written_before():
    """Stores written before globals and non-persistent buffers were read must still resume:
    a function that reads no module global, and a model without non-persistent buffers, keep
    the digests of the earlier recipe (recomputed here as it was)."""
    import hashlib

    from conceptkit.extraction._fingerprint import (
        _code_identity,
        _describe,
        _update_tensor,
        callable_identity,
        module_digest,
    )

    digest = hashlib.blake2b(digest_size=16)
    digest.update(_code_identity(_double.__code__, 0).encode())
    digest.update(_describe([], 1).encode())
    digest.update(_describe((), 1).encode())
    assert callable_identity(_double) == (f"function:{_double.__module__}."
                                          f"{_double.__qualname__}:{digest.hexdigest()}")
    model = _model()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}|".encode())
    for name, tensor in model.state_dict(keep_vars=True).items():
        digest.update(name.encode() + b"|")
        _update_tensor(digest, tensor)
    assert module_digest(model) == digest.hexdigest()


def test_a_global_set_or_an_attribute_name_does_not_unsettle_the_fingerprint():
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        from conceptkit.extraction._fingerprint import callable_identity
        NAMES = {"cat", "dog", "bird", "fish", "horse", "cow", "owl"}
        def reads_a_set(x):
            return x * 2 if "cat" in NAMES else x
        print(callable_identity(reads_a_set))
    """)
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2", "3")}
    assert len(runs) == 1  # the same in every process, whatever the hash seed

    from conceptkit.extraction._fingerprint import _globals_read

    def reads_an_attribute(x):
        return x.IMAGES  # an attribute, not the module global of that name

    assert "IMAGES" in globals() and _globals_read(reads_an_attribute, 0) == {}



def test_the_atlas_takes_a_store_written_before_non_persistent_buffers_were_read(tmp_path):
    import conceptkit

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Gain(), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    path = tmp_path / "maps"
    write_store(_extractor(model, layer="2"), IMAGES, path, layout="maps", chunk_size=4,
                progress=False)
    from conceptkit.extraction._fingerprint import module_digest

    legacy = module_digest(model, state_dict_only=True)
    assert legacy != module_digest(model)  # the buffer is read now
    _edit(path, lambda m: m["fingerprint"].update(model=legacy))  # as the earlier code wrote
    labels = np.arange(len(IMAGES)) % 2
    atlas = conceptkit.ConceptAtlas(model, "2", n_concepts=2, progress=False, seed=0)
    atlas.fit(path, labels)  # was refused as "another model"
    _edit(path, lambda m: m["fingerprint"].update(model="0" * 32))
    with pytest.raises(ValueError, match="another model"):
        conceptkit.ConceptAtlas(model, "2", n_concepts=2, progress=False, seed=0).fit(path, labels)


# ---------------------------------------------------------------------------------------------
# What the weights do not show: the model's structure, a preprocess's attributes
# ---------------------------------------------------------------------------------------------

class _Shift(nn.Module):
    def __init__(self, s: float = 0.0):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x + self.s


def _structured(pool=nn.MaxPool2d, act=nn.ReLU, stride=1, eps=1e-5, s=0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=stride), nn.BatchNorm2d(4, eps=eps),
                         act(), pool(2), _Shift(s), nn.Conv2d(4, 5, 3, padding=1)).eval()


STRUCTURE_CHANGES = {"pooling": {"pool": nn.AvgPool2d}, "activation": {"act": nn.Sigmoid},
                     "stride": {"stride": 2}, "eps": {"eps": 1e-1}, "attribute": {"s": 0.2}}


@pytest.mark.parametrize("change", sorted(STRUCTURE_CHANGES))
def test_a_change_the_weights_do_not_show_is_not_served_from_the_store(tmp_path, change):
    """A pooling or an activation swapped, a stride, an eps or a plain attribute changed: the
    weights (and their digest) are the same, the activations are not; the store used to serve
    the old model's."""
    from conceptkit.extraction._fingerprint import module_digest, structure_digest

    model, other = _structured(), _structured(**STRUCTURE_CHANGES[change])
    assert module_digest(model) == module_digest(other)  # the weights are the same
    assert structure_digest(model) != structure_digest(other)
    path = tmp_path / "store"
    write_store(_extractor(model, layer="5"), IMAGES, path, chunk_size=3, progress=False)
    with pytest.raises(ValueError, match=r"model structure.*overwrite=True"):
        write_store(_extractor(other, layer="5"), IMAGES, path, chunk_size=3, progress=False)
    served = write_store(_extractor(other, layer="5"), IMAGES, path, chunk_size=3,
                         progress=False, overwrite=True).read()
    np.testing.assert_array_equal(
        served, _fresh(tmp_path, "fresh", _extractor(other, layer="5"), IMAGES, chunk_size=3))


def test_the_structure_digest_is_that_of_the_same_model_anywhere():
    """The same in a deep copy, in train and eval mode, with hooks, for a model built again and
    loaded from the same weights, and in another process; the weights' digest is unchanged."""
    import copy
    import subprocess
    import sys

    from conceptkit.extraction._fingerprint import structure_digest

    model = _structured()
    digest = structure_digest(model)
    assert structure_digest(copy.deepcopy(model)) == digest
    assert structure_digest(model.train()) == digest and structure_digest(model.eval()) == digest
    model.register_forward_hook(lambda *args: None)
    model[2].register_forward_pre_hook(lambda *args: None)
    assert structure_digest(model) == digest
    torch.manual_seed(3)
    again = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), _Shift(0.0), nn.Conv2d(4, 5, 3, padding=1))
    again.load_state_dict(model.state_dict())
    assert structure_digest(again) == digest
    assert structure_digest(_structured(act=lambda: nn.ReLU(inplace=True))) == digest
    script = ("import torch\nfrom torch import nn\n"
              "from conceptkit.extraction._fingerprint import structure_digest\n"
              "print(structure_digest(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), "
              "nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))))")
    here = structure_digest(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                          nn.ReLU(), nn.MaxPool2d(2)))
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout.strip()
            for seed in ("1", "2")}
    assert runs == {here}


def test_a_preprocess_whose_repr_hides_what_it_does_is_told_apart():
    """``Lambda`` prints as ``Lambda()`` and a module's plain attribute shows in no repr: both
    used to give two different preprocessings one identity. The description of then is still
    available (``legacy``), for files saved with it."""
    from torchvision import transforms

    from conceptkit.extraction._fingerprint import callable_identity, module_digest

    same = transforms.Compose([transforms.Lambda(lambda x: x)])
    inverted = transforms.Compose([transforms.Lambda(lambda x: 1 - x)])
    assert callable_identity(same) != callable_identity(inverted)
    assert callable_identity(_Shift(1.0)) != callable_identity(_Shift(0.2))
    assert callable_identity(_Shift(0.2)) == callable_identity(_Shift(0.2))
    standard = transforms.Compose([transforms.Normalize([0.5], [0.2]), transforms.ToTensor()])
    twin = transforms.Compose([transforms.Normalize([0.5], [0.2]), transforms.ToTensor()])
    assert callable_identity(standard) == callable_identity(twin)
    # what conceptkit described before: a module by weights and repr, an object by its repr
    assert callable_identity(_Shift(0.2), legacy=True) == (
        f"module:{module_digest(_Shift(0.2))}:{repr(_Shift(0.2))}")
    name = f"{type(same).__module__}.{type(same).__qualname__}"
    assert callable_identity(inverted, legacy=True) == f"object:{name}:{inverted!r}"


def test_a_folder_file_replaced_with_its_size_and_mtime_kept_is_noticed(tmp_path):
    """A new file (another inode) of the same size with the old modification time restored
    (``rsync -t``, ``cp -p``, ``os.utime``) used to resume the store from the old image."""
    folder = _image_folder(tmp_path / "images", IMAGES)
    path = tmp_path / "store"
    write_store(_extractor(), folder, path, chunk_size=3, progress=False)
    target = folder.samples[1][0]
    stat = os.stat(target)
    replacement = tmp_path / "new.png"
    with open(target, "rb") as fh:  # another file of the same size (contents are not read)
        replacement.write_bytes(fh.read())
    os.replace(replacement, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(target).st_size == stat.st_size and os.stat(target).st_ino != stat.st_ino
    again = type(folder)(folder.root, transform=folder.transform)
    with pytest.raises(ValueError, match="inputs"):
        write_store(_extractor(), again, path, chunk_size=3, progress=False)


# ---------------------------------------------------------------------------------------------
# Two writers in one directory
# ---------------------------------------------------------------------------------------------

def test_a_writer_never_reuses_a_chunk_computed_under_another_fingerprint(tmp_path):
    """Writer A is between chunks when writer B replaces the store (``overwrite=True``) and
    writes chunk 0; A then writes chunk 1. B used to reuse A's chunk 1 and finalize a store
    serving A's activations."""
    from conceptkit.extraction._store import finalize_store

    path = tmp_path / "store"

    def b(start, stop):
        return torch.full((stop - start, 4), -1.0)

    def a(start, stop):
        if start == 4:  # meanwhile, B replaces the store and writes its chunk 0
            write_chunks(b, 8, path, chunk_size=4, indices=[0], fingerprint={"model": "B"},
                         overwrite=True, progress=False)
        return torch.full((stop - start, 4), 7.0)

    write_chunks(a, 8, path, chunk_size=4, fingerprint={"model": "A"}, progress=False)
    with pytest.raises(ValueError, match="another extraction"):  # A is refused
        finalize_store(path, 8, chunk_size=4, layout="pooled", fingerprint={"model": "A"})
    with pytest.raises(ValueError, match="chunk 1 was not computed by this extraction"):
        finalize_store(path, 8, chunk_size=4, layout="pooled", fingerprint={"model": "B"})
    assert write_chunks(b, 8, path, chunk_size=4, fingerprint={"model": "B"},
                        progress=False) == [1]  # A's chunk is recomputed, B's own reused
    store = finalize_store(path, 8, chunk_size=4, layout="pooled", fingerprint={"model": "B"})
    np.testing.assert_array_equal(ActivationStore(path).read(), np.full((8, 4), -1.0))
    assert sorted(p.name for p in path.iterdir()) == ["chunk-000000.npy", "chunk-000001.npy",
                                                     "manifest.json"]  # no origin files left
    # a finished store resumes from its manifest's digests: nothing recomputed
    assert write_chunks(b, 8, path, chunk_size=4, fingerprint={"model": "B"},
                        progress=False) == []
    assert store.manifest["fingerprint"]["model"] == "B"


def test_a_chunk_without_an_origin_in_an_unfinished_store_is_recomputed(tmp_path):
    """An earlier conceptkit wrote no origin files: its finished stores resume from their
    manifest, its unfinished ones recompute the chunks they hold."""
    path = tmp_path / "store"
    write_chunks(lambda s, e: torch.ones(e - s, 2), 4, path, chunk_size=2, indices=[0],
                 progress=False)
    (path / ".chunk-000000.origin").unlink()  # as an earlier conceptkit left it
    assert write_chunks(lambda s, e: torch.ones(e - s, 2), 4, path, chunk_size=2,
                        progress=False) == [0, 1]


def test_a_store_of_an_earlier_conceptkit_is_recomputed_once(tmp_path):
    """Its manifest records the weights but not the structure: a rerun says why it cannot
    resume, and ``overwrite=True`` recomputes it."""
    path = tmp_path / "store"
    write_store(_extractor(), IMAGES, path, chunk_size=3, progress=False)
    _edit(path, lambda m: m["fingerprint"].pop("model_structure"))
    with pytest.raises(ValueError, match=r"earlier conceptkit.*recomputed once.*overwrite=True"):
        write_store(_extractor(), IMAGES, path, chunk_size=3, progress=False)
    store = write_store(_extractor(), IMAGES, path, chunk_size=3, progress=False, overwrite=True)
    assert "model_structure" in store.manifest["fingerprint"]


def test_where_timm_loaded_the_weights_from_is_not_the_models_structure():
    """timm keeps a record of the checkpoint (its path, hub id, tag) on the model: the same
    model loaded from a copied checkpoint read as another structure, and stores, attach and the
    atlas refused it."""
    timm = pytest.importorskip("timm")
    from conceptkit.extraction._fingerprint import structure_digest

    a = timm.create_model("resnet18", pretrained=False, pretrained_cfg_overlay={"file": "/a.pth"})
    b = timm.create_model("resnet18", pretrained=False, pretrained_cfg_overlay={"file": "/b.pth"})
    assert a.pretrained_cfg["file"] != b.pretrained_cfg["file"]
    assert structure_digest(a) == structure_digest(b)
    b.global_pool = nn.Identity()  # a real change still shows
    assert structure_digest(a) != structure_digest(b)


def test_a_meta_a_reader_would_refuse_is_refused_before_anything_is_computed(tmp_path,
                                                                              monkeypatch):
    """A manifest is read only up to MANIFEST_LIMITS; a store whose `meta` (labels or paths of
    millions of inputs) took it past them was computed in full, written, and then refused as
    corrupted. The limits are made small here so that the test is quick."""
    from conceptkit.extraction import _store, _store_read
    from conceptkit.io import JsonLimits

    limits = JsonLimits(max_bytes=200_000, max_containers=3_000, max_values=30_000)
    monkeypatch.setattr(_store, "MANIFEST_LIMITS", limits)
    monkeypatch.setattr(_store_read, "MANIFEST_LIMITS", limits)
    calls = []

    def extractor(x):
        calls.append(len(x))
        return x.flatten(1)[:, :4]

    images = torch.rand(40, 3, 4, 4)
    with pytest.raises(ValueError, match="`meta` is too large"):
        write_store(extractor, images, tmp_path / "big", chunk_size=4, progress=False,
                    meta={"labels": list(range(40)) * 500})
    assert calls == [] and not (tmp_path / "big" / "manifest.json").exists()
    # whatever the check lets through, a reader reads: meta just inside the room, many chunks
    n_chunks = 10
    for size in (5_000, 10_000, 15_000, 18_000):
        meta = {"labels": list(range(size))}
        try:
            _store.check_meta(meta, 40, 4)
        except ValueError:
            continue
        store = write_store(extractor, images, tmp_path / f"ok{size}", chunk_size=40 // n_chunks,
                            progress=False, meta=meta)
        assert ActivationStore(tmp_path / f"ok{size}").manifest["meta"] == meta
        assert store.n_rows == 40
