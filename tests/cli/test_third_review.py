"""Findings of the third command-line review: each test failed before its fix."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptkit.cli import main
from conceptkit.cli._checks import CommandError, check_out_dir


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def explain_args(images, out, *extra) -> list[str]:
    return ["explain", "--model", "reference", "--images", str(images), "--class", "0",
            "--n-concepts", "2", "--out", str(out), "--quiet", *extra]


# 1. an image of an extreme aspect ratio is refused before it is resized --------------------

def test_an_extremely_thin_image_is_refused_naming_the_file(tmp_path, capsys):
    from conceptkit.cli._images import load_images

    folder = tmp_path / "thin"
    folder.mkdir()
    Image.new("RGB", (5000, 1)).save(folder / "thin.png")  # 64 px high: 320,000 px long
    with pytest.raises(OSError, match="thin.png") as info:
        load_images(str(folder), 64)
    assert "`--images`" in str(info.value)
    code, _, err = run(explain_args(folder, tmp_path / "out"), capsys)
    assert code == 2
    one_error(err, "--images", "thin.png")


def test_a_memory_error_is_one_error_line(monkeypatch, capsys):
    import conceptkit.cli._main as cli_main

    def exhausted(argv):
        raise MemoryError()

    monkeypatch.setattr(cli_main, "_run", exhausted)
    code, _, err = run(["demo"], capsys)
    assert code == 1
    one_error(err, "out of memory")


# 2. a hub model without --weights is refused, --weights random opts in ----------------------

@pytest.mark.parametrize("model", ["torchvision:resnet18", "timm:resnet18", "open_clip:RN50"])
def test_hub_models_without_weights_are_refused(model, images, tmp_path, capsys):
    code, _, err = run(["explain", "--model", model, "--images", str(images), "--class", "0",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    one_error(err, "`--weights`", "random", model)


@pytest.mark.parametrize("model", ["torchvision:resnet18", "timm:resnet18", "open_clip:RN50"])
def test_python_load_refuses_hub_models_without_weights(model):
    """conceptkit.models.load, as the command line: a hub model without weights would be a
    randomly initialised network explained as if trained."""
    from conceptkit.models import load

    with pytest.raises(ValueError, match=r"`weights` is required.*weights='random'"):
        load(model)


def test_weights_random_builds_the_network_on_purpose():
    from conceptkit.models import load

    bundle = load("torchvision:resnet18", "random")
    assert bundle.layer == "layer4" and bundle.class_names == []


# 3. a local copy of a torchvision classifier gets torchvision's class names -----------------

def test_local_torchvision_weights_get_the_imagenet_class_names(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from conceptkit.models import load
    from conceptkit.models._candidates import class_index

    net = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    path = tmp_path / "mobilenet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    bundle = load("torchvision:mobilenet_v3_small", str(path))
    assert len(bundle.class_names) == 1000
    assert class_index("tiger cat", bundle.class_names, "`--class`") == 282


# 4. explain --out: a user's file or a symbolic link in the way is refused --------------------

def test_explain_refuses_to_overwrite_a_users_file(images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "explanation.safetensors"
    mine.write_text("my own file")
    code, _, err = run(explain_args(images, out), capsys)
    assert code == 2
    one_error(err, "`--out`", "explanation.safetensors")
    assert mine.read_text() == "my own file"


def test_explain_refuses_a_symbolic_link_in_out(images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (out / "class-0-red-disk-blue-square").symlink_to(outside, target_is_directory=True)
    code, _, err = run(explain_args(images, out), capsys)
    assert code == 2
    one_error(err, "`--out`", "symbolic link")
    assert list(outside.iterdir()) == []


def test_files_conceptkit_wrote_are_not_in_the_way(tmp_path):
    from conceptkit.cli._checks import check_out_targets
    from conceptkit.report._outputs import owned_folder, record

    out = tmp_path / "out"
    with owned_folder(out, "conceptkit explain"):
        (out / "sub").mkdir()
        for name in ("explanation.safetensors", "sub/index.html"):
            (out / name).write_text("x")
            record(out / name)
    check_out_targets(out, ["explanation.safetensors", "sub"])  # a rerun: fine
    (out / "sub" / "notes.txt").write_text("mine")
    with pytest.raises(CommandError, match="notes.txt"):
        check_out_targets(out, ["explanation.safetensors", "sub"])
    check_out_targets(tmp_path / "missing", ["explanation.safetensors"])  # nothing there yet


# 5. train-cbm --out: owned like explain's; check_out_dir probes that it can write ------------

def test_train_cbm_refuses_a_users_file_before_any_work(tmp_path, capsys):
    out = tmp_path / "cbm"
    out.mkdir()
    (out / "index.html").write_text("my page")
    code, _, err = run(["train-cbm", "--out", str(out), "--quiet"], capsys)
    assert code == 2
    one_error(err, "`--out`", "index.html")
    assert (out / "index.html").read_text() == "my page"


def test_train_cbm_lists_what_it_writes(tmp_path):
    import json

    from conceptkit.cli._checks import owned_cbm_folder, record_outputs

    out = tmp_path / "cbm"
    with owned_cbm_folder(out):
        for name in ("cbm.safetensors", "metrics.json", "index.html"):
            (out / name).write_text("x")
        record_outputs(*(out / n for n in ("cbm.safetensors", "metrics.json", "index.html")))
    listed = json.loads((out / ".conceptkit-outputs.json").read_text())["written"]
    assert sorted(listed["conceptkit train-cbm"]) == ["cbm.safetensors", "index.html",
                                                      "metrics.json"]


def test_check_out_dir_probes_the_folder(tmp_path, monkeypatch):
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refused)  # what /proc does to root
    with pytest.raises(CommandError, match="`--out`.*cannot be written"):
        check_out_dir(str(tmp_path / "new"))
    monkeypatch.undo()
    check_out_dir(str(tmp_path / "new"))
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not (sys.platform.startswith("linux") and os.geteuid() == 0),
                    reason="/proc refuses new entries even to root")
def test_out_under_proc_is_refused_at_once():
    with pytest.raises(CommandError, match="`--out`"):
        check_out_dir("/proc/conceptkit-out")


# 6. --clip / --clip-weights are checked before any work, naming the flags --------------------

def test_an_unknown_clip_architecture_names_clip(images, tmp_path, capsys):
    pytest.importorskip("open_clip")
    code, _, err = run(explain_args(images, tmp_path / "o", "--name-with", "clip", "--clip",
                                    "NoSuchArch", "--clip-weights", "openai"), capsys)
    assert code == 2
    one_error(err, "`--clip`", "NoSuchArch")


def test_an_unknown_clip_tag_names_clip_weights(images, tmp_path, capsys):
    pytest.importorskip("open_clip")
    code, _, err = run(explain_args(images, tmp_path / "o", "--name-with", "clip", "--clip",
                                    "RN50", "--clip-weights", "nosuchtag"), capsys)
    assert code == 2
    one_error(err, "`--clip-weights`", "nosuchtag", "openai")


def test_loading_clip_is_quiet_and_in_the_commands_terms(monkeypatch, capsys):
    import logging

    from conceptkit.bottleneck import ClipEncoders
    from conceptkit.cli._naming import load_clip_encoders

    def failing(model, pretrained=None, **kwargs):
        logging.error("Pretrained weights not found")  # what open_clip does
        raise ValueError(f"`model` {model!r} could not be loaded with `pretrained` {pretrained!r}")

    monkeypatch.setattr(ClipEncoders, "from_open_clip", staticmethod(failing))
    args = argparse.Namespace(clip="RN50", clip_weights="x")
    with pytest.raises(CommandError, match="`--clip` 'RN50'.*`--clip-weights`"):
        load_clip_encoders(args)
    assert "Pretrained" not in capsys.readouterr().err


# 7. --class: ASCII digits only ------------------------------------------------------------

def test_class_index_takes_ascii_digits_only():
    from conceptkit.models._candidates import class_index

    with pytest.raises(ValueError, match="no class names"):
        class_index("²", [], "`--class`")
    with pytest.raises(ValueError, match="not a class name"):
        class_index("٣", ["a", "b", "c", "d"], "`--class`")
    assert class_index(" 3 ", ["a", "b", "c", "d"], "`--class`") == 3


# 8. Python names do not leak into the command's messages ---------------------------------

def extract(out, *extra) -> list[str]:
    return ["extract", "--model", "reference", "--concept-dataset", "1", "--out", str(out),
            "--quiet", *extra]


def test_extract_speaks_its_options(tmp_path, capsys):
    code, _, err = run(extract(tmp_path / "s", "--layer", "block9"), capsys)
    assert code == 2
    line = one_error(err, "`--layer` 'block9'")
    assert "`layer`" not in line
    assert run(extract(tmp_path / "s", "--layer", "block3"), capsys)[0] == 0
    code, _, err = run(extract(tmp_path / "s", "--layer", "block4"), capsys)
    assert code == 2
    line = one_error(err, "`--out`", "--overwrite")
    assert "overwrite=True" not in line and "`path`" not in line


def test_extract_names_concept_dataset_for_a_huge_draw(tmp_path, capsys):
    code, _, err = run(["extract", "--model", "reference", "--concept-dataset", "1000000000",
                        "--out", str(tmp_path / "s")], capsys)
    assert code == 2
    assert "n_per_class" not in one_error(err, "`--concept-dataset`")


def test_atlas_and_demo_terms():
    from conceptkit.cli._atlas import ATLAS_FLAGS
    from conceptkit.cli._checks import command_line_terms
    from conceptkit.cli._main import _images_are_n_per_class

    text = command_line_terms("`n_concepts`=5000 is larger than the number of rows of `A` (768)"
                              "; the store was extracted from another model than `model`",
                              ATLAS_FLAGS)
    assert "`A`" not in text and "`model`" not in text and "`--store`" in text
    with pytest.raises(CommandError, match=r"the 2 images of a class \(`--n-per-class`\)"):
        with _images_are_n_per_class():
            raise CommandError("every cluster came from too few of the 2 `images`")


# 9. demo --n-per-class: one minimum; ACE's known up front ----------------------------------

def test_demo_says_one_minimum(tmp_path, capsys):
    for n in ("0", "1"):
        code, _, err = run(["demo", "--n-per-class", n, "--out", str(tmp_path / "d")], capsys)
        assert code == 2
        one_error(err, "`--n-per-class` must be at least 2")


def test_demo_ace_with_too_few_images_is_refused_at_once(tmp_path, capsys):
    code, _, err = run(["demo", "--method", "ace", "--n-per-class", "2", "--out",
                        str(tmp_path / "d")], capsys)
    assert code == 2
    one_error(err, "`--n-per-class` must be at least 3", "--method ace")
    assert not (tmp_path / "d").exists()


# 10. an empty --class-name is refused; --tokens at a CNN is documented ---------------------

def test_an_empty_class_name_is_refused(images, tmp_path, capsys):
    code, _, err = run(explain_args(images, tmp_path / "o", "--class-name", " "), capsys)
    assert code == 2
    one_error(err, "`--class-name`")


# 11. folders named like images are skipped; ** globs are recursive -------------------------

def test_image_folders_and_recursive_globs(tmp_path):
    from conceptkit.cli._images import load_images

    root = tmp_path / "imgs"
    (root / "sub.png").mkdir(parents=True)
    (root / "deep" / "er").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for path in (root / "a.png", root / "deep" / "er" / "b.png"):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(path)
    images, files = load_images(str(root), 8)
    assert [Path(f).name for f in files] == ["a.png"]
    images, files = load_images(str(root / "**" / "*.png"), 8)
    assert sorted(Path(f).name for f in files) == ["a.png", "b.png"]


# 12. train-cbm reads the weights files explain reads ---------------------------------------

def test_train_cbm_takes_a_plain_state_dict(tmp_path):
    from conceptkit.cli._train_cbm import _check_arguments, build_parser
    from conceptkit.datasets import reference_model

    path = tmp_path / "ref.pth"
    torch.save(reference_model().state_dict(), path)
    args = build_parser().parse_args(["--out", str(tmp_path / "o"), "--weights", str(path)])
    _check_arguments(args)  # was: "not a safetensors file"


# 13. every option of explain, report and extract says what it does -------------------------

def test_every_option_has_help():
    from conceptkit.cli._main import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("explain", "report"):
        for action in subs.choices[command]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (command, action.option_strings)
    text = subs.choices["explain"].format_help()
    assert "default: pixel_ablation" in " ".join(text.split())
    assert "CNN layer" in " ".join(text.split())


def test_extract_and_atlas_help(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--chunk-size", "--layout", "--batch-size", "--layer", "--weights"):
        assert text.count(flag) >= 2, flag
    with pytest.raises(SystemExit):
        main(["atlas", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pixel_ablation is refused" in text
