"""Findings of the second review of the command line: stale reports, options accepted and
ignored, notes left out of reports, errors naming Python arguments, progress bars in logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from _shared import cli_error, make_report

from conceptkit.cli import main

TINY_CBM = ["--n-train", "12", "--n-val", "4", "--n-test", "10", "--trials", "2"]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPLBACKEND="Agg")
    env.pop("CONCEPTKIT_DEBUG", None)
    return env


@pytest.fixture
def no_datasets(monkeypatch):
    """Fail the test if a command draws the concept dataset (its options must be checked first)."""
    import conceptkit.datasets as datasets

    def no_work(*args, **kwargs):
        raise AssertionError("the command drew the datasets before checking its options")

    monkeypatch.setattr(datasets, "make_concept_dataset", no_work)


@pytest.fixture(scope="module")
def maps_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store") / "acts"
    assert main(["extract", "--model", "reference", "--concept-dataset", "2", "--layout", "maps",
                 "--chunk-size", "8", "--quiet", "--out", str(store)]) == 0
    return store


# --- 1. atlas --no-report into an earlier run's folder ------------------------------------------

def test_atlas_no_report_removes_the_report_an_earlier_run_wrote(maps_store, tmp_path, capsys):
    out = tmp_path / "atlas-run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a user's file: never touched
    common = ["atlas", "--store", str(maps_store), "--model", "reference", "--max-iter", "2",
              "--importance", "gradient_input", "--quiet", "--out", str(out)]
    assert main([*common, "--n-concepts", "3"]) == 0
    assert (out / "report" / "index.html").is_file()
    assert main([*common, "--n-concepts", "4", "--no-report"]) == 0
    capsys.readouterr()
    assert not (out / "report").exists()  # the 3-concept report is gone, folders and all
    assert (out / "notes.txt").read_text() == "mine" and (out / "atlas.safetensors").is_file()
    # a report this command has no record of writing (an older conceptkit's) is left be, but said
    (out / "report").mkdir()
    (out / "report" / "index.html").write_text("<p>an old atlas</p>")
    assert main([*common, "--n-concepts", "4", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "holds the report of an earlier atlas" in err
    assert (out / "report" / "index.html").read_text() == "<p>an old atlas</p>"


# --- 2. train-cbm --concept-loss-weight outside --mode joint ----------------------------------

@pytest.mark.parametrize("mode", ["independent", "sequential", "standard"])
def test_train_cbm_refuses_a_concept_loss_weight_its_mode_ignores(mode, tmp_path, capsys,
                                                                  no_datasets):
    err = cli_error(["train-cbm", "--mode", mode, "--concept-loss-weight", "5", "--out",
                     str(tmp_path / "cbm")], capsys)
    assert "`--concept-loss-weight`" in err and f"`--mode {mode}`" in err
    assert "`--mode joint`" in err
    assert not (tmp_path / "cbm").exists()


# --- 3 and 11. the CBM report: under-training, settings; the console warning -------------------

@pytest.fixture(scope="module")
def cbm_run(tmp_path_factory):
    """``train-cbm`` for 2 epochs (its loss still falls), run as a user runs it: stderr is a pipe."""
    out = tmp_path_factory.mktemp("cbm") / "run"
    run = subprocess.run([sys.executable, "-m", "conceptkit", "train-cbm", "--out", str(out),
                          "--epochs", "2", "--lr", "1e-3", *TINY_CBM], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


def test_the_cbm_report_says_the_model_is_under_trained(cbm_run):
    out, _ = cbm_run
    metrics = json.loads((out / "metrics.json").read_text())
    stages = metrics["history"]["stages"]
    assert [s["stage"] for s in stages] == ["joint"] and stages[0]["still_improving"] is True
    assert metrics["history"]["under_trained"] == ["joint"]
    assert "still falling" in stages[0]["summary"]
    page = (out / "index.html").read_text()
    assert "Under-trained: the &#x27;joint&#x27; stage stopped at the epoch limit" in page


def test_the_under_training_warning_names_the_option_without_a_source_line(cbm_run):
    _, run = cbm_run
    lines = [line for line in run.stderr.splitlines() if "still falling" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "pass a larger `--epochs`" in lines[0] and "(--epochs 2)" in lines[0]
    assert "_train.py" not in run.stderr and "warnings.warn" not in run.stderr
    assert "UserWarning" not in run.stderr


def test_the_cbm_settings_are_an_object_shown_as_a_table(cbm_run):
    out, _ = cbm_run
    settings = json.loads((out / "metrics.json").read_text())["extra"]["settings"]
    assert settings["epochs"] == 2 and settings["layer"] == "block3"
    assert settings["mode"] == "joint" and settings["concept_loss_weight"] == 1.0
    page = (out / "index.html").read_text()
    assert "<h2>Settings</h2>" in page and "{&quot;" not in page and '{"out"' not in page
    assert "<td>block3</td>" in page


def test_progress_bars_stay_out_of_a_log(cbm_run):
    _, run = cbm_run  # no --no-progress, but stderr is no terminal
    assert "\r" not in run.stderr and "it/s" not in run.stderr


def test_progress_bars_are_shown_on_a_terminal(monkeypatch):
    from conceptkit.cli._checks import show_progress

    monkeypatch.setattr(sys, "stderr", SimpleNamespace(isatty=lambda: True))
    assert show_progress(False) is True and show_progress(True) is False
    monkeypatch.setattr(sys, "stderr", SimpleNamespace(isatty=lambda: False))
    assert show_progress(False) is False


def test_explain_writes_no_progress_bar_into_a_captured_stderr(images, tmp_path, capsys):
    assert main(["explain", "--model", "reference", "--images", str(images), "--class", "0",
                 "--n-concepts", "2", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err


# --- 4 and 6. the demo's notes and console lines ----------------------------------------------

def _truth(pointing_game: float):
    loc = SimpleNamespace(best_concept=np.array([1, 0]), part_names=["red disk", "magenta square"],
                          pointing_game=np.array([[0.0, pointing_game], [0.9, 0.0]]))
    reliance = SimpleNamespace(values=lambda kind: np.array([0.5, 0.03]))
    return SimpleNamespace(localisation=loc, reliance=reliance)


def test_the_demo_says_no_concept_points_at_a_part_no_map_points_at():
    from conceptkit.cli._demo import cue_line, part_note, truth_of_class

    cc = SimpleNamespace(ranking=np.array([1, 0]))
    parts = truth_of_class(cc, _truth(0.0), [0], 1)
    cue = parts["magenta square"]
    assert cue["concept"] is None and cue["importance_rank"] is None and cue["pointing_game"] == 0
    assert parts["red disk"]["concept"] == 1 and parts["red disk"]["importance_rank"] == 1
    note = part_note("magenta square", cue, {0: "concept 0: red disk", 1: "concept 1: red disk"})
    assert note == ("spurious cue 'magenta square': reliance 0.03; no concept's map points at it "
                    "(pointing_game 0.00 for every concept).")
    assert "no concept points at it" in cue_line(cue, 2) and "c0" not in cue_line(cue, 2)
    pointed = truth_of_class(cc, _truth(0.5), [0], 1)["magenta square"]
    assert pointed["concept"] == 0 and pointed["importance_rank"] == 2


def test_the_demo_ranks_a_concept_among_those_its_class_kept():
    from conceptkit.cli._demo import cue_line

    part = {"reliance": 0.03, "concept": 4, "pointing_game": 0.8, "importance_rank": 4,
            "causal": False}
    # ACE keeps 5-11 of its 15 clusters: the rank is out of the class's own count
    assert cue_line(part, 6) == ("spurious cue: reliance 0.03; concept 4 (pointing_game 0.80), "
                                 "importance rank 4 of 6")


# --- 5. the exemplar figure shows the exemplars the labels count ------------------------------

def test_the_exemplar_figure_draws_every_exemplar_of_the_report(tmp_path, monkeypatch):
    import dataclasses

    import conceptkit.report._write as write

    report = make_report()
    report = make_report(concepts=[  # ten exemplars each, as the demo's pages hold
        dataclasses.replace(c, exemplars=np.tile(c.exemplars[:1], (10, 1, 1, 1)),
                            exemplar_sources=list(range(10))) for c in report.concepts])
    drawn = []
    original = write.plot_exemplar_grid

    def spy(exemplars, *args, **kwargs):
        drawn.append(kwargs.get("n_exemplars", 8))
        return original(exemplars, *args, **kwargs)

    monkeypatch.setattr(write, "plot_exemplar_grid", spy)
    page = write.write_class_report(report, tmp_path)
    assert drawn == [10]
    assert "Top 10 exemplars of each concept" in page.read_text()


# --- 8. extract --split / --seed ---------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--seed", "3"), ("--split", "test")])
def test_extract_refuses_dataset_options_with_images(flag, value, images, tmp_path, capsys):
    err = cli_error(["extract", "--model", "reference", "--images", str(images), flag, value,
                     "--out", str(tmp_path / "store")], capsys)
    assert f"`{flag}` goes with `--concept-dataset`" in err
    assert not (tmp_path / "store").exists()


def test_extract_checks_the_dataset_seed_up_front(tmp_path, capsys, no_datasets):
    err = cli_error(["extract", "--model", "reference", "--concept-dataset", "2", "--seed", "-1",
                     "--out", str(tmp_path / "store")], capsys)
    assert "`--seed` must be an integer in [0," in err


# --- 9. errors name the options, not the Python arguments -------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["--layer", "blockX"], "`--layer` 'blockX' is not a submodule"),
    (["--device", "foo"], "`--device` must be a torch device"),
    (["--size", "8"], "`--size` must lie in [32, 512]"),
    (["--concept-loss-weight", "-1"], "`--concept-loss-weight` must be a number >= 0"),
])
def test_train_cbm_names_its_options_before_drawing_the_datasets(argv, expected, tmp_path,
                                                                 capsys, no_datasets):
    err = cli_error(["train-cbm", *argv, "--out", str(tmp_path / "cbm")], capsys)
    assert expected in err
    assert "`layer`" not in err and "`device`" not in err and "`image_size`" not in err


def test_atlas_names_the_labels_file_it_cannot_read(maps_store, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("a b\n")
    err = cli_error(["atlas", "--store", str(maps_store), "--model", "reference", "--labels",
                     str(labels), "--out", str(tmp_path / "run")], capsys)
    assert f"`--labels` {str(labels)!r} cannot be read as class indices" in err
    assert "could not convert string 'a'" in err


def test_atlas_names_its_importance_option(maps_store, tmp_path, capsys):
    err = cli_error(["atlas", "--store", str(maps_store), "--model", "reference", "--importance",
                     "nosuch", "--out", str(tmp_path / "run")], capsys)
    assert err.startswith("error: `--importance` must be one of")
    err = cli_error(["atlas", "--store", str(tmp_path / "nostore"), "--model", "reference",
                     "--out", str(tmp_path / "run")], capsys)
    assert "`--store`" in err and "`path`" not in err


def test_the_report_argument_is_the_path_its_errors_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    usage = capsys.readouterr().out
    assert "--out OUT path" in usage and "saved" not in usage.split("\n")[0]
    err = cli_error(["report", str(tmp_path / "missing.safetensors"), "--out",
                     str(tmp_path / "r")], capsys)
    assert err.startswith("error: `path` ")


def test_explain_names_n_concepts_in_the_factorizers_limit(images, tmp_path, capsys):
    err = cli_error(["explain", "--model", "reference", "--images", str(images), "--class", "0",
                     "--n-concepts", "100", "--quiet", "--out", str(tmp_path / "out")], capsys)
    assert "needs --n-concepts <= 64" in err and "n_concepts" not in err


def test_warnings_of_a_command_are_one_line_in_its_terms():
    from conceptkit.cli._checks import command_terms

    with command_terms({"method": "--method", "epochs": "--epochs"}):
        text = warnings.formatwarning(UserWarning("Read it with care, or use method='ice' (the "
                                                  "default). Pass a larger `epochs` (epochs=40)."),
                                      UserWarning, "/lib/x.py", 3, "warnings.warn(...)")
    assert text == ("warning: Read it with care, or use --method ice (the default). Pass a "
                    "larger `--epochs` (--epochs 40).\n")
    assert warnings.formatwarning(UserWarning("x"), UserWarning, "f.py", 1, "") != "warning: x\n"


# --- 10. an --out that cannot be written ------------------------------------------------------

def test_an_existing_out_that_cannot_be_written_is_refused_first(tmp_path, capsys, monkeypatch,
                                                                 no_datasets):
    out = tmp_path / "read-only"
    out.mkdir()
    real = os.access

    def access(path, mode, *args, **kwargs):  # as a non-root user sees a 0o555 folder
        if Path(path) == out and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    for argv in (["train-cbm", "--out", str(out)], ["demo", "--quiet", "--out", str(out)]):
        err = cli_error(argv, capsys)
        assert f"`--out` {str(out)!r} is not writable" in err


# --- 11. bench --only, the demo's --out -------------------------------------------------------

def test_bench_only_that_matches_nothing_lists_the_benchmarks(capsys):
    err = cli_error(["bench", "--only", "nomatch"], capsys)
    assert "`--only` 'nomatch' matches no benchmark" in err and "cbm" in err


def test_a_refused_demo_leaves_no_out_folder_behind(tmp_path, capsys):
    out = tmp_path / "new" / "demo"
    err = cli_error(["demo", "--n-per-class", "2", "--n-concepts", "2", "--method", "ace",
                     "--out", str(out), "--quiet"], capsys, seconds=120)
    assert "`--n-per-class` must be at least 3" in err  # (refused before any work)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    cli_error(["demo", "--n-per-class", "2", "--n-concepts", "2", "--method", "ace",
               "--out", str(kept), "--quiet"], capsys, seconds=120)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
