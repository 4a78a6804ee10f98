"""Files on disk: saving refuses to replace a read-only file, keeps the permissions of a file
it replaces, follows a symbolic link to the file it names, and turns a read-only directory, a
full disk, a link loop or a bytes path into a clear error naming the destination, leaving no
temporary file behind."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

import numpy as np
import pytest
import torch

from conceptkit import bottleneck, concepts, io
from conceptkit.extraction import Provenance

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def bank():
    rows = np.abs(np.random.default_rng(0).normal(size=(20, 5)))
    provenance = Provenance("image", np.arange(20), np.tile([0, 0, 4, 4], (20, 1)), (4, 4))
    return concepts.bank_from_activations(concepts.NMF(2, random_state=0), rows, provenance)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_read_only_file_is_not_replaced(tmp_path, bank):
    path = tmp_path / "bank.safetensors"
    path.write_bytes(b"keep me")
    path.chmod(0o444)
    with pytest.raises(PermissionError, match="`path` .* is read-only") as err:
        bank.save(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == b"keep me" and _leftovers(tmp_path) == []


def test_a_replaced_file_keeps_its_permissions(tmp_path, bank):
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    path.chmod(0o640)
    bank.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    np.testing.assert_array_equal(concepts.ConceptBank.load(path).components, bank.components)


def test_a_symlink_is_followed_and_kept(tmp_path, bank):
    target = tmp_path / "real.safetensors"
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    bank.save(link)
    assert link.is_symlink() and target.is_file()
    np.testing.assert_array_equal(concepts.ConceptBank.load(link).components, bank.components)


def test_a_symlink_loop_is_a_clear_error(tmp_path, bank):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.symlink_to(b)
    b.symlink_to(a)
    for call in (lambda: bank.save(a), lambda: concepts.ConceptBank.load(a)):
        with pytest.raises(OSError, match="`path` .* is a symbolic link loop") as err:
            call()
        assert err.value.errno == errno.ELOOP
    assert a.is_symlink() and b.is_symlink()


def test_a_bytes_path_is_a_clear_error(tmp_path, bank):
    raw = os.fsencode(tmp_path / "bank.safetensors")
    for call in (lambda: bank.save(raw), lambda: concepts.ConceptBank.load(raw),
                 lambda: io.peek_kind(raw)):
        with pytest.raises(TypeError, match=r"`path` is a bytes path .*os.fsdecode"):
            call()


def test_a_read_only_directory_names_the_destination(tmp_path, bank, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    path = folder / "cbm.safetensors"
    if IS_ROOT:  # root writes anyway: simulate the operating system's refusal
        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and os.path.samefile(dir, folder):
                raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, "x.tmp"))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    torch.manual_seed(0)
    cbm = bottleneck.ConceptBottleneckModel(torch.nn.Linear(4, 3), 3, 2)
    with pytest.raises(OSError, match=r"cannot write `path` .*cbm.safetensors.*: Permission denied") as err:
        cbm.save(path)
    assert err.value.errno == errno.EACCES and ".tmp" not in str(err.value)
    assert "Safetensor" not in type(err.value).__name__
    folder.chmod(0o755)
    assert list(folder.iterdir()) == []


def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(tmp_path, bank, monkeypatch):
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write `path` .*bank.safetensors.*No space left") as err:
        bank.save(path)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
