"""Errors say what to do in the user's terms: the command line names the flag that was typed
(one ``error:`` line, exit status 2), the Python API the argument and how to fix it."""

from __future__ import annotations

import json
import re

import pytest
import torch
from _shared import cli_error
from PIL import Image

from conceptkit.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _error(argv, capsys):  # some of these run a little work before the refusal
    return cli_error(argv, capsys, seconds=300.0)


def _explain(images, out, *extra):
    return ["explain", "--model", "reference", "--images", str(images), "--out", str(out),
            "--quiet", *extra]


def test_help_lists_every_command():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    description = parser.format_help().split("\n\n")[1]
    listed = re.findall(r"[a-z][a-z-]*", description.split("conceptkit", 1)[1])
    assert sorted(listed) == sorted(commands), listed  # every command, each once
    assert "atlas" in listed


def test_explain_help_says_which_factorizer_the_code_uses_on_tokens():
    from conceptkit.cli._explain import FACTORIZER_CHOICES
    from conceptkit.pipeline._explainer import token_factorizer

    explain = next(a for a in build_parser()._actions if a.dest == "command").choices["explain"]
    factorizer = next(a for a in explain._actions if a.dest == "factorizer")
    text = " ".join(factorizer.help.split())
    on_tokens = type(token_factorizer(4, 0)).__name__
    choice = next(c for c, cls in FACTORIZER_CHOICES.items() if cls == on_tokens)
    assert f"{choice}," in text and "ViT/CLIP tokens" in text, text
    assert "semi_nmf" not in text, text


def test_a_negative_class_is_an_index_error_not_a_name(images, tmp_path, capsys):
    err = _error(_explain(images, tmp_path / "o", "--class", "-1"), capsys)
    assert "`--class` must be a class index >= 0" in err and "not a class name" not in err


def test_model_loading_errors_name_the_flags(images, tmp_path, capsys):
    err = _error(_explain(images, tmp_path / "o", "--class", "0", "--weights",
                          str(tmp_path / "nosuch.pth")), capsys)
    assert "`--weights`" in err and "nosuch.pth" in err
    err = _error(_explain(images, tmp_path / "o", "--class", "0", "--model", "world:shapez"),
                 capsys)
    assert "`--model`" in err and "`name`" not in err and "'shapes'" in err
    err = _error(_explain(images, tmp_path / "o", "--class", "0", "--model", "world:shapes:vitt"),
                 capsys)
    assert "`--model`" in err and "`arch`" not in err
    err = _error(["train-cbm", "--weights", str(tmp_path / "nosuch.pth"), "--out",
                  str(tmp_path / "cbm")], capsys)
    assert "`--weights`" in err


def test_the_demo_suggests_what_it_can_change_when_ace_keeps_no_cluster(tmp_path, capsys):
    # 3 images per class: the fewest ACE is run on (2 are refused before the fit)
    err = _error(["demo", "--n-per-class", "3", "--n-concepts", "2", "--method", "ace",
                  "--out", str(tmp_path / "demo"), "--quiet"], capsys)
    assert "ACE kept no cluster" in err
    assert "lower `min_cluster_size`" not in err and "`--n-per-class`" in err


def test_extract_records_the_concept_datasets_labels_for_the_atlas(tmp_path, capsys):
    from conceptkit.datasets import make_concept_dataset
    from conceptkit.extraction import ActivationStore

    store = tmp_path / "acts-maps"
    assert main(["extract", "--model", "reference", "--concept-dataset", "2", "--layout", "maps",
                 "--chunk-size", "8", "--quiet", "--out", str(store)]) == 0
    labels = ActivationStore(store).manifest["meta"]["labels"]
    assert labels == make_concept_dataset(2, seed=0, split="train").labels.tolist()
    assert main(["atlas", "--store", str(store), "--model", "reference", "--n-concepts", "3",
                 "--max-iter", "2", "--importance", "gradient_input", "--no-report", "--quiet",
                 "--out", str(tmp_path / "atlas-run")]) == 0  # no --labels: the store's
    assert "6 classes" in capsys.readouterr().out


def test_atlas_on_a_store_without_labels_asks_for_the_flag(images, tmp_path, capsys):
    store = tmp_path / "acts-images"
    assert main(["extract", "--model", "reference", "--images", str(images), "--layout", "maps",
                 "--quiet", "--out", str(store)]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert "labels" not in manifest["meta"]
    err = _error(["atlas", "--store", str(store), "--model", "reference", "--out",
                  str(tmp_path / "atlas-run")], capsys)
    assert "`--labels` is required" in err


def test_api_errors_say_how_to_turn_pil_images_or_a_path_into_a_tensor(tmp_path):
    from conceptkit._validation import check_images

    pil = [Image.new("RGB", (8, 8)) for _ in range(2)]
    with pytest.raises(TypeError, match=r"torch\.stack\(\[torchvision\.transforms\.functional"
                                        r"\.to_tensor\(im"):
        check_images(pil)
    with pytest.raises(TypeError, match=r"A path is not read.*conceptkit explain --images"):
        check_images(str(tmp_path))
    with pytest.raises(TypeError, match="A path is not read"):
        check_images(tmp_path)
    # the advice runs as written
    from torchvision.transforms.functional import to_tensor

    assert check_images(torch.stack([to_tensor(im.convert("RGB")) for im in pil])).shape == (2, 3, 8, 8)


def test_a_class_name_on_a_model_without_names_points_to_class_names():
    from conceptkit.models._candidates import class_index

    with pytest.raises(ValueError, match=r"no class names.*`class_names=\[\.\.\.\]`"):
        class_index("cat", [])
    with pytest.raises(ValueError, match="no class names; give the class index instead.$"):
        class_index("cat", [], "`--class`")  # the command line has no class_names
    with pytest.raises(ValueError, match="`class_id` must be >= 0"):
        class_index(-1, ["a"])
    assert class_index(" 2 ", []) == 2
