"""Second review: report.json speaks of concepts by their index (as README promises), and the
index page carries each class's notes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import two_block_cnn

import conceptkit
from conceptkit.report import index_entry, write_class_report, write_index
from conceptkit.report._structure import concept_cooccurrence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def explained():
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cc = conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=3, seed=0,
                                     progress=False).fit(images, 1)
    assert cc.ranking.tolist() != [0, 1, 2]  # else rank and index could not be told apart
    return cc


def test_report_json_clusters_and_cooccurrence_are_indexed_by_concept(explained, tmp_path):
    cc = explained
    page = Path(cc.report(tmp_path, dpi=30, n_images=2, n_exemplars=2))
    data = json.loads((page.parent / "report.json").read_text())
    per_input = cc.importance.per_input
    clusters = data["strategic_clusters"]
    assert clusters["concepts"] == [0, 1, 2]
    assert clusters["top_concept"] == per_input.argmax(axis=1).tolist()
    assert clusters["counts"] == np.bincount(per_input.argmax(axis=1), minlength=3).tolist()
    co = data["cooccurrence"]
    assert co["concepts"] == [0, 1, 2]
    expected = concept_cooccurrence(cc.bank.codes.numpy(), "correlation", 0.9)
    np.testing.assert_allclose(np.array(co["matrix"], dtype=float), expected, atol=1e-9)
    # the concept table still lists the concepts in importance order, each with its index
    assert [c["index"] for c in data["concepts"]] == cc.ranking.tolist()


def test_write_index_shows_each_class_notes(explained, tmp_path):
    from conceptkit.pipeline import build_class_report

    report = build_class_report(explained, n_images=2, n_exemplars=2,
                                notes=["First note.", "Second <note>."])
    page = write_class_report(report, tmp_path, dpi=30)
    entry = index_entry(report, page, tmp_path)
    index = write_index([entry], tmp_path, notes=[report.notes])
    html = index.read_text()
    assert f'href="{entry.page}#notes">{len(report.notes)} note' in html
    assert "<li>Second &lt;note&gt;.</li>" in html
    data = json.loads((tmp_path / "index.json").read_text())
    assert data["classes"][0]["notes"] == report.notes
    with pytest.raises(TypeError, match=r"`notes\[0\]` must be a list of str"):
        write_index([entry], tmp_path, notes=["one str, not a list per entry"])
    # without notes: an empty list per class, and the row says so
    write_index([entry], tmp_path)
    assert json.loads((tmp_path / "index.json").read_text())["classes"][0]["notes"] == []
