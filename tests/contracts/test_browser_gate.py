"""The browser tests on a machine without Chromium: skip with a visible reason, fail in CI.

``make test`` on a fresh clone must pass without a browser (the tests skip and say why), while
``.ci/run`` (CI=true) must fail when the browser could not be installed.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _shared import chromium_decision

ROOT = Path(__file__).resolve().parents[2]


def fake_browser(folder: Path, name: str = "chromium") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / name
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


@pytest.mark.parametrize("name", ["chromium", "chromium-browser"])
@pytest.mark.parametrize("ci", [None, "true"])
def test_browser_on_path_runs(tmp_path, name, ci):
    exe = fake_browser(tmp_path / "bin", name)
    assert chromium_decision(str(tmp_path / "bin"), ci) == ("run", str(exe))


@pytest.mark.parametrize("ci", [None, "", "0", "false", "False", "no"])
def test_missing_browser_skips_outside_ci(tmp_path, ci):
    (tmp_path / "empty").mkdir()
    action, reason = chromium_decision(str(tmp_path / "empty"), ci)
    assert action == "skip"
    assert "apt-get install -y chromium" in reason and "-m 'not browser'" in reason


@pytest.mark.parametrize("ci", ["true", "1", "yes", "TRUE"])
def test_missing_browser_fails_in_ci(tmp_path, ci):
    (tmp_path / "empty").mkdir()
    action, reason = chromium_decision(str(tmp_path / "empty"), ci)
    assert action == "fail"
    assert f"CI={ci}" in reason and "apt-get install -y chromium" in reason


def test_a_non_executable_file_is_not_a_browser(tmp_path):
    exe = fake_browser(tmp_path / "bin")
    exe.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert chromium_decision(str(tmp_path / "bin"), None)[0] == "skip"


def _run_browser_tests(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "empty").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(tmp_path / "empty")  # no chromium; python is called by its full path
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-ra",
                           "tests/report/test_browser.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("ci", [None, "true"])
def test_browser_suite_without_chromium(tmp_path, ci):
    """The real suite, run as `make test` would run it on a machine without Chromium."""
    run = _run_browser_tests(tmp_path, ci)
    out = run.stdout + run.stderr
    if ci is None:
        assert run.returncode == 0, out[-3000:]
        assert "3 skipped" in out
        assert "SKIPPED [" in out and "headless Chromium is not installed" in out
    else:
        assert run.returncode == 1, out[-3000:]
        assert "3 errors" in out or "3 failed" in out, out[-3000:]
        assert "The browser tests must run in CI (CI=true)" in out


def test_ensure_chromium_without_permission_installs_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    env = {"PATH": str(tmp_path / "empty"), "CONCEPTKIT_INSTALL_CHROMIUM": "0"}
    run = subprocess.run(["/bin/bash", str(ROOT / ".ci" / "ensure-chromium")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert "will be skipped" in run.stderr and "CONCEPTKIT_INSTALL_CHROMIUM=0" in run.stderr


def test_ensure_chromium_with_a_browser_is_silent(tmp_path):
    fake_browser(tmp_path / "bin")
    run = subprocess.run(["/bin/bash", str(ROOT / ".ci" / "ensure-chromium")],
                         env={"PATH": str(tmp_path / "bin")}, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stderr == ""


def test_make_test_and_ci_use_the_same_script():
    makefile = (ROOT / "Makefile").read_text()
    test_target = makefile.split("\ntest: install\n", 1)[1].split("\n\n", 1)[0]
    assert "bash .ci/ensure-chromium" in test_target
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'export CI="${CI:-true}"' in ci and "make test" in ci
