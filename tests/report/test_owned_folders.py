"""Output folders never mix in an earlier run's files: what the previous run listed in the
folder's manifest and this run did not write again is removed; other files stay."""

from __future__ import annotations

import json

import pytest

from conceptkit.report._outputs import MANIFEST, owned_folder, record


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    record(path)


def test_files_of_the_previous_run_not_written_again_are_removed(tmp_path):
    out = tmp_path / "out"
    with owned_folder(out, "w"):
        _write(out / "a.txt")
        _write(out / "class-2" / "index.html")
        _write(out / "class-2" / "visualizations.png")
    (out / "mine.txt").write_text("a user's own notes")
    with owned_folder(out, "w"):
        _write(out / "a.txt", "again")
        _write(out / "class-3" / "index.html")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        MANIFEST, "a.txt", "class-3/index.html", "mine.txt"]
    assert not (out / "class-2").exists()  # left empty, removed
    assert json.loads((out / MANIFEST).read_text())["written"] == {
        "w": ["a.txt", "class-3/index.html"]}


def test_nested_folders_and_failures(tmp_path):
    out = tmp_path / "out"
    with owned_folder(out, "w"):
        with owned_folder(out / "class-1", "page"):
            _write(out / "class-1" / "page.html")
        _write(out / "index.html")
    listed = json.loads((out / MANIFEST).read_text())["written"]["w"]
    assert "class-1/page.html" in listed and f"class-1/{MANIFEST}" in listed
    # a run that fails midway removes nothing
    with pytest.raises(RuntimeError):
        with owned_folder(out, "w"):
            _write(out / "other.html")
            raise RuntimeError("boom")
    assert (out / "class-1" / "page.html").exists() and (out / "index.html").exists()


def test_a_manifest_pointing_outside_the_folder_deletes_nothing_there(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"written": {"w": ["../victim.txt", str(victim)]}}))
    with owned_folder(out, "w"):
        _write(out / "a.txt")
    assert victim.read_text() == "keep me"


def test_a_writer_never_removes_another_writers_files(tmp_path):
    """`conceptkit explain --out D` saves explanation.safetensors in D; a report written into D
    later (write_reports, ConceptManager.report) removed it as "not written again"."""
    out = tmp_path / "out"
    with owned_folder(out, "explain"):
        _write(out / "explanation.safetensors")
        _write(out / "class-0" / "index.html")
    with owned_folder(out, "index"):
        _write(out / "index.html")
        _write(out / "class-0" / "index.html")
    with owned_folder(out, "index"):
        _write(out / "index.html")
        _write(out / "class-1" / "index.html")
    # the index's own earlier class folder goes unless another writer wrote it too
    assert (out / "explanation.safetensors").exists() and (out / "class-0" / "index.html").exists()
    with owned_folder(out, "explain"):
        _write(out / "explanation.safetensors")
    assert (out / "class-1" / "index.html").exists()  # the index's, not explain's
