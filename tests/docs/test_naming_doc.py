"""docs/naming.md's snippets say what the code does: the first runs as written (names repeat in
its own setup, so it picks a concept by index), and ``ConceptManager.fit`` returns a dict, not
the manager."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_snippet_keeps_the_dict_fit_returns_as_the_manager(page):
    for code in _blocks(page):
        assert not re.search(r"=\s*(conceptkit\.)?ConceptManager\([^)]*\)\.fit\(", code), code


def test_a_concept_by_name_is_refused_when_names_repeat_and_the_doc_says_so():
    text = " ".join((ROOT / "docs/naming.md").read_text(encoding="utf-8").split())
    assert "names concepts [1, 4, 8]; pass one index." in text
    first = _blocks(ROOT / "docs/naming.md")[0]
    assert 'top_examples("green triangle"' not in first and 'visualize("green triangle"' not in first


@pytest.mark.slow
def test_the_first_naming_snippet_runs_as_written(tmp_path):
    code = _blocks(ROOT / "docs/naming.md")[0] + (
        "\nprint('picked', best, [e.concept for e in names if e.name == 'green triangle'])\n"
        "try:\n    result.top_examples('green triangle', 8)\n"
        "except ValueError as err:\n    print('refused:', err)\n")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "picked 1 [1, 4, 8]" in run.stdout
    assert "refused: `concept` 'green triangle' names concepts [1, 4, 8]; pass one index." in run.stdout
    assert (tmp_path / "out").is_dir()
