"""`conceptkit train-cbm` (train_cbm_main) and the CBM report."""

import argparse
import json

import numpy as np
import pytest
import torch
from torch import nn

from conceptkit.bottleneck import (
    ConceptBottleneckModel,
    evaluate_cbm,
    intervention_curve,
    train_cbm,
)
from conceptkit.bottleneck._report import concept_class_weights, write_cbm_report
from conceptkit.cli._train_cbm import train_cbm_main
from conceptkit.datasets import make_concept_dataset, reference_model
from conceptkit.extraction import ActivationExtractor

TINY = ["--n-train", "12", "--n-val", "4", "--n-test", "10", "--epochs", "2", "--trials", "2",
        "--no-progress"]


def test_train_cbm_cli_writes_model_report_and_consistent_numbers(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cbm_main(["--mode", "joint", "--out", str(out), *TINY]) == 0
    for name in ("cbm.safetensors", "index.html", "metrics.json", "weights.png",
                 "concept_accuracy.png", "interventions.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert "task accuracy" in capsys.readouterr().out

    # recompute the test metrics from the saved model on the regenerated test split
    model = ConceptBottleneckModel.load(out / "cbm.safetensors")
    ds = make_concept_dataset(10, seed=0, split="test")
    maps = ActivationExtractor(reference_model(), "block3", progress=False)(ds.images)
    result = evaluate_cbm(model, (maps, ds.concepts, ds.labels))
    assert metrics["evaluation"]["task_accuracy"] == pytest.approx(result.task_accuracy)
    assert metrics["evaluation"]["concept_accuracy"] == pytest.approx(result.concept_accuracy)
    assert metrics["history"]["mode"] == "joint" and len(metrics["history"]["stages"][0]["train_loss"]) == 2
    assert set(metrics["interventions"]) == {"random", "uncertainty", "importance"}
    np.testing.assert_allclose(metrics["head_weights"], model.head.weight.detach().numpy(), rtol=1e-6)

    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "red disk" in page


@pytest.mark.parametrize("features", ["frozen", "end2end"])
def test_train_cbm_cli_gives_the_same_model_for_the_same_seed(tmp_path, features):
    # the probe was built from the global random state: two runs with --seed 0 differed
    tiny = ["--n-train", "3", "--n-val", "2", "--n-test", "2", "--image-size", "32", "--epochs",
            "1", "--trials", "1", "--no-progress", "--features", features]
    states = []
    for run in ("a", "b"):
        torch.manual_seed(len(run) * 7 if run == "a" else 12345)  # a different global state
        assert train_cbm_main(["--out", str(tmp_path / run), *tiny]) == 0
        from safetensors.torch import load_file

        states.append(load_file(tmp_path / run / "cbm.safetensors"))
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_train_cbm_cli_end_to_end_features(tmp_path):
    out = tmp_path / "e2e"
    assert train_cbm_main(["--mode", "independent", "--features", "end2end", "--out", str(out),
                           "--bottleneck", "logits", *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["history"]["stages"]] == ["concepts", "head"]
    assert 0.0 <= metrics["evaluation"]["task_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="concept_encoder` is required"):
        ConceptBottleneckModel.load(out / "cbm.safetensors")


def test_train_cbm_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_cbm_main(["--mode", "jiont", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    # values the library would refuse only after the datasets: refused first, naming the flag
    from conceptkit.cli import main

    for argv, flag in ((["--lr", "-1"], "`--lr`"), (["--patience", "0"], "`--patience`"),
                       (["--seed", str(2**40)], "`--seed`")):
        assert main(["train-cbm", "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and flag in err, err


def test_mlp_head_weights_are_the_mean_jacobian():
    torch.manual_seed(0)
    model = ConceptBottleneckModel(nn.Linear(5, 4), 4, 3, head="mlp", hidden=8)
    values = torch.rand(6, 4)
    weights = concept_class_weights(model, values)
    eps = 1e-3
    numeric = np.zeros((3, 4))
    with torch.no_grad():
        for j in range(4):
            step = torch.zeros(4)
            step[j] = eps
            diff = model.head(values + step) - model.head(values - step)
            numeric[:, j] = (diff / (2 * eps)).mean(0).numpy()
    np.testing.assert_allclose(weights, numeric, atol=1e-3)


def test_report_from_python_with_mlp_head(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(80, 5)
    concepts = (x[:, :4] > 0).float()
    labels = (concepts[:, 0] + concepts[:, 1]).long()
    model = ConceptBottleneckModel(nn.Linear(5, 4), 4, 3, head="mlp")
    train_cbm(model, (x, concepts, labels), mode="joint", epochs=3, seed=0, progress=False)
    result = evaluate_cbm(model, (x, concepts, labels))
    curves = {"random": intervention_curve(model, (x, concepts, labels), n_trials=2)}
    page = write_cbm_report(tmp_path / "r", model, result, curves, extra={"note": "unit test"})
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["extra"]["note"] == "unit test"
    assert np.asarray(metrics["head_weights"]).shape == (3, 4)
    assert metrics["interventions"]["random"]["area"] == pytest.approx(curves["random"].area)
    assert page.name == "index.html" and "unit test" in page.read_text()
    with pytest.raises(ValueError, match="weights"):
        write_cbm_report(tmp_path / "r2", model, result, curves, weights=np.zeros((2, 2)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_cbm_report(tmp_path / "file", model, result, curves)


def test_train_cbm_takes_the_flag_names_of_the_other_commands(capsys):
    # demo/explain/extract say --quiet and --size; train-cbm said --no-progress and --image-size
    from conceptkit.cli._train_cbm import build_parser

    parser = build_parser()
    new = parser.parse_args(["--out", "o", "--quiet", "--size", "32"])
    assert capsys.readouterr().err == ""
    assert new.quiet is True and new.size == 32
    defaults = parser.parse_args(["--out", "o"])
    assert defaults.quiet is False and defaults.size == 64
    old = parser.parse_args(["--out", "o", "--no-progress", "--image-size", "32"])
    assert vars(old) == vars(new)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: `--no-progress` is deprecated and will be removed in conceptkit 0.3; use "
        "`--quiet` instead.",
        "warning: `--image-size` is deprecated and will be removed in conceptkit 0.3; use "
        "`--size` instead."]
    listed = parser.format_help()
    assert "--quiet" in listed and "--size" in listed
    assert "--no-progress" not in listed and "--image-size" not in listed


def _options(parser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"
            and a.help != argparse.SUPPRESS]


def test_every_demo_and_train_cbm_option_has_help_with_its_default():
    # `conceptkit demo --help` showed no help text at all; train-cbm showed few defaults
    from conceptkit.cli._main import build_parser as main_parser
    from conceptkit.cli._train_cbm import build_parser

    commands = next(a for a in main_parser()._actions if a.dest == "command").choices
    for parser in (commands["demo"], build_parser()):
        for action in _options(parser):
            assert action.help, (parser.prog, action.option_strings)
            if action.default not in (None, False) and not action.required:
                text = action.help % {"default": action.default}
                assert f"default: {action.default}" in text or f"default {action.default}" in text, (
                    parser.prog, action.option_strings, text)
