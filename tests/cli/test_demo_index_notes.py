"""The demo's index shows each class's notes (README: "each class's notes"), as
ConceptManager.report's index does; before, its notes column said "none" for every class."""

from __future__ import annotations

import json
import re

from conceptkit.cli import main


def test_the_demo_index_shows_each_class_notes(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--n-per-class", "8", "--n-concepts", "4", "--out", str(out),
                 "--quiet"]) == 0
    index = json.loads((out / "index.json").read_text(encoding="utf-8"))
    html = (out / "index.html").read_text(encoding="utf-8")
    assert len(index["classes"]) == 6
    for row in index["classes"]:
        page = out / row["page"]
        notes = json.loads((page.parent / "report.json").read_text(encoding="utf-8"))["notes"]
        assert notes and row["notes"] == notes  # every class page has notes; the index has them
        assert f'href="{row["page"]}#notes">{len(notes)} note' in html
    # the notes column of no row reads "none"
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)[1:]
    assert len(rows) == 6
    assert not any(row.endswith('<span class="small">none</span></td>') for row in rows)
