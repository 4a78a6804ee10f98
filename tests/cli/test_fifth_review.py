"""Fifth review (a newcomer): what the command line prints and offers.

``explain`` printed importances without their intervals and never the explanation's notes, and
had no ``--device``; several ``atlas`` options and ``bench --quick`` had no help;
``train-cbm --epochs`` defaulted to 40, an under-trained model with a warning; the demo's table
named concepts ``c5``; the CBM's metrics.json counted the best epoch from 0 beside a summary
that counts from 1.
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from conceptkit.cli import main
from conceptkit.cli._demo import cue_line, summary_line
from conceptkit.cli._main import build_parser
from conceptkit.cli._train_cbm import build_parser as train_cbm_parser

FAST = ["--n-concepts", "3", "--batch-size", "8", "--quiet"]


def test_explain_prints_each_interval_and_every_note(shape_images, tmp_path, capsys):
    import conceptkit

    out = tmp_path / "out"
    code = main(["explain", "--model", "reference", "--images", str(shape_images), "--class", "2",
                 "--out", str(out), "--device", "cpu", *FAST])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = conceptkit.load(out / "explanation.safetensors")
    lines = re.findall(r"^  concept (\d+): importance ([-0-9.]+) \(95 % CI ([-0-9.]+) to "
                       r"([-0-9.]+)\); top exemplars from ", printed.out, re.M)
    assert [int(c) for c, *_ in lines] == [int(c) for c in result.ranking]
    for c, value, low, high in lines:
        assert float(value) == pytest.approx(result.importances[int(c)], abs=1e-3)
        assert float(low) == pytest.approx(result.ci_low[int(c)], abs=1e-3)
        assert float(high) == pytest.approx(result.ci_high[int(c)], abs=1e-3)
    notes = [line.removeprefix("note: ") for line in printed.out.splitlines()
             if line.startswith("note: ")]
    assert notes and notes == [" ".join(note.split()) for note in result.notes()]


def test_explain_refuses_a_device_it_cannot_use(shape_images, tmp_path, capsys):
    code = main(["explain", "--model", "reference", "--images", str(shape_images), "--class", "2",
                 "--out", str(tmp_path / "out"), "--device", "meta", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "`--device`" in err and "meta" in err
    assert not (tmp_path / "out" / "explanation.safetensors").exists()


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings
            and not isinstance(a, argparse._HelpAction)}


def _atlas_parser() -> argparse.ArgumentParser:
    from conceptkit.cli import _atlas

    caught = {}

    class Stop(Exception):
        pass

    def grab(self, argv=None, namespace=None):
        caught["parser"] = self
        raise Stop

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(Stop):
            _atlas.atlas_main([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return caught["parser"]


def test_every_atlas_option_says_what_it_does_and_its_default():
    options = _options(_atlas_parser())
    for flag in ("--n-concepts", "--tol", "--batch-rows", "--seed", "--max-inputs-per-class",
                 "--max-iter", "--layer"):
        assert options[flag].help and "default" in options[flag].help, flag
    # the defaults themselves are unchanged
    assert (options["--n-concepts"].default, options["--tol"].default,
            options["--batch-rows"].default, options["--seed"].default,
            options["--max-inputs-per-class"].default) == (20, 1e-4, 65536, 0, 512)


def test_bench_quick_and_explain_device_have_help():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert _options(sub.choices["bench"])["--quick"].help
    device = _options(sub.choices["explain"])["--device"]
    assert device.default is None and "default: the CPU" in device.help
    # extract and train-cbm say the same
    assert "default: the CPU" in _options(train_cbm_parser())["--device"].help


def test_train_cbm_epochs_default_is_the_cap_the_docs_recommend():
    epochs = _options(train_cbm_parser())["--epochs"]
    assert epochs.default == 300
    assert "early stopping" in epochs.help and "(default: %(default)s)" in epochs.help


def test_demo_table_names_concepts_as_everywhere_else():
    parts = {"red disk": {"causal": True, "pointing_game": 0.9, "concept": 5,
                          "importance_rank": 1, "reliance": 0.4}}
    row = {"most_relied_part": "red disk", "most_relied_drop": 0.41,
           "most_relied_significant": True, "top_concept": 5, "top_part": "red disk"}
    line = summary_line(0, "red disk + blue square", row, parts)
    assert "concept 5 red disk" in line and not re.search(r"\bc5\b", line)
    cue = {"causal": False, "pointing_game": 0.8, "concept": 4, "importance_rank": 2,
           "reliance": 0.03}
    assert cue_line(cue, 6) == ("spurious cue: reliance 0.03; concept 4 (pointing_game 0.80), "
                                "importance rank 2 of 6")


@pytest.mark.filterwarnings("ignore:train_cbm. the 'joint' stage stopped:UserWarning")
def test_cbm_metrics_count_the_best_epoch_as_the_summary_does(tmp_path):
    from conceptkit.cli._train_cbm import train_cbm_main

    out = tmp_path / "cbm"
    tiny = ["--n-train", "3", "--n-val", "2", "--n-test", "2", "--size", "32", "--epochs", "3",
            "--trials", "1", "--quiet", "--out", str(out)]
    assert train_cbm_main(tiny) == 0
    stage = json.loads((out / "metrics.json").read_text())["history"]["stages"][0]
    index = int(np.argmin(stage["val_loss"]))
    assert stage["best_epoch_index"] == index and stage["best_epoch"] == index + 1
    assert f"best epoch {stage['best_epoch']}," in stage["summary"]
    page = (out / "index.html").read_text()
    row = re.search(r"<td>joint</td><td class=\"num\">3</td><td class=\"num\">(\d+)</td>", page)
    assert row and int(row.group(1)) == stage["best_epoch"]
