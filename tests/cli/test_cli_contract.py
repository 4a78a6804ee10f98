"""The command line's contract: every command turns a user error into one ``error: ...`` line
and exit status 2 before doing any work (counts of 0, an ``--out`` that is a file, unreadable
images named with their path), and ``extract`` refuses to resume a store of another extraction
unless ``--overwrite`` is given."""

from __future__ import annotations

import numpy as np
import pytest
from _shared import cli_error as _error
from PIL import Image

from conceptkit.cli import main
from conceptkit.extraction import ActivationStore


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a directory")
    return path


def _explain(images, out, *extra):
    return ["explain", "--model", "reference", "--images", str(images), "--class", "0",
            "--out", str(out), "--quiet", *extra]


def _extract(out, *extra):
    return ["extract", "--model", "reference", "--layer", "block3", "--concept-dataset", "2",
            "--chunk-size", "4", "--quiet", "--out", str(out), *extra]


COUNTS = {"explain --size 0": ("size", lambda i, t: _explain(i, t / "o", "--size", "0")),
          "explain --n-concepts 0": ("n-concepts", lambda i, t: _explain(i, t / "o", "--n-concepts", "0")),
          "explain --batch-size 0": ("batch-size", lambda i, t: _explain(i, t / "o", "--batch-size", "0")),
          "demo --n-per-class 0": ("n-per-class", lambda i, t: ["demo", "--n-per-class", "0",
                                                                 "--out", str(t / "o")]),
          "extract --chunk-size 0": ("chunk-size", lambda i, t: _extract(t / "s", "--chunk-size", "0")),
          "extract --size 0": ("size", lambda i, t: _extract(t / "s", "--size", "0")),
          "train-cbm --epochs 0": ("epochs", lambda i, t: ["train-cbm", "--epochs", "0",
                                                           "--out", str(t / "o")])}


@pytest.mark.parametrize("case", sorted(COUNTS))
def test_counts_of_zero_are_refused(case, images, tmp_path, capsys):
    flag, argv = COUNTS[case]
    err = _error(argv(images, tmp_path), capsys)
    assert f"`--{flag}` must be at least" in err


OUT_IS_A_FILE = {"explain": lambda i, f: _explain(i, f),
                 "report": lambda i, f: ["report", str(f), "--out", str(f)],
                 "demo": lambda i, f: ["demo", "--out", str(f)],
                 "extract": lambda i, f: _extract(f),
                 "train-cbm": lambda i, f: ["train-cbm", "--out", str(f)],
                 "under-a-file": lambda i, f: _explain(i, f / "sub")}


@pytest.mark.parametrize("command", sorted(OUT_IS_A_FILE))
def test_an_out_that_is_a_file_is_refused_before_any_work(command, images, a_file, capsys):
    err = _error(OUT_IS_A_FILE[command](images, a_file), capsys, seconds=5.0)
    assert "`--out`" in err and str(a_file) in err
    assert a_file.read_text() == "not a directory"


def test_a_decompression_bomb_is_named_with_its_path(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x40 images are now "bombs"
    err = _error(_explain(images, tmp_path / "o"), capsys)
    assert "`--images`: cannot read" in err and "0.png" in err and "DecompressionBomb" in err


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a" + b"\x01" * 30])
def test_corrupt_images_are_named_with_their_path(data, images, tmp_path, capsys):
    (images / "1.png").write_bytes(data)
    err = _error(_explain(images, tmp_path / "o"), capsys)
    assert "cannot read" in err and "1.png" in err


def test_errors_inside_extract_and_train_cbm_are_one_line(tmp_path, capsys):
    err = _error(_extract(tmp_path / "s", "--layer", "block9"), capsys, seconds=60)
    assert "`--layer` 'block9' is not a submodule" in err
    err = _error(["extract", "--model", "reference", "--out", str(tmp_path / "s")], capsys)
    assert "--images" in err


def test_extract_refuses_a_stale_store_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "store"
    assert main(_extract(out)) == 0
    capsys.readouterr()
    first = ActivationStore(out).read()
    err = _error(_extract(out, "--layer", "block4"), capsys, seconds=120)
    assert "--overwrite" in err and "layer ('block3' in the store, 'block4' now)" in err
    np.testing.assert_array_equal(ActivationStore(out).read(), first)  # untouched
    assert main(_extract(out, "--layer", "block4", "--overwrite")) == 0
    store = ActivationStore(out)
    assert store.n_features == 64 and store.manifest["fingerprint"]["layer"] == "block4"


@pytest.mark.parametrize("content,suffix", [(b"notanimage", ".safetensors"), (b"notanimage", ".pt"),
                                            (None, "")])
def test_a_weights_file_that_is_not_one_is_an_error_line(content, suffix, images, tmp_path, capsys):
    weights = tmp_path / f"bad{suffix}"
    if content is None:
        weights.mkdir()  # a folder
    else:
        weights.write_bytes(content)
    err = _error(_explain(images, tmp_path / "o", "--weights", str(weights)), capsys)
    assert "`--weights`" in err and str(weights) in err


@pytest.mark.parametrize("device", ["foo", "meta"])
def test_extract_refuses_a_device_it_cannot_use(device, tmp_path, capsys):
    err = _error(_extract(tmp_path / "s", "--device", device), capsys)
    assert "--device" in err


def test_a_size_beyond_any_model_is_refused_before_reading(images, tmp_path, capsys):
    err = _error(_explain(images, tmp_path / "o", "--size", "100000"), capsys)
    assert "--size" in err and "4096" in err


def test_extract_refuses_two_sources_of_inputs(images, tmp_path, capsys):
    err = _error(_extract(tmp_path / "s", "--images", str(images)), capsys)
    assert "not both" in err


def test_sixteen_bit_and_rotated_images_are_read_as_a_viewer_shows_them(tmp_path):
    from conceptkit.cli._images import load_images

    ramp = np.tile(np.linspace(0, 65535, 32), (32, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")   # mode I;16: convert("RGB") made it white
    deep = load_images(str(tmp_path / "deep.png"), 32)[0][0]
    np.testing.assert_allclose(deep[0, 0].numpy(), np.round(np.linspace(0, 255, 32)) / 255,
                               atol=1 / 255)
    # a photo stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to view")
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255                                # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    shown = load_images(str(tmp_path / "sideways.jpg"), 20)[0][0]
    assert shown.shape == (3, 20, 20)
    # rotated clockwise, the stored left half is the top half on screen
    assert shown[:, :8].mean() > 0.9 and shown[:, 12:].mean() < 0.1


@pytest.mark.parametrize("extra,match", [
    (["--vocabulary", "words.txt"], "`--vocabulary` goes with --name-with clip"),
    (["--name-with", "classes", "--vocabulary", "imagenet"], "`--vocabulary` goes with"),
    (["--visualize-steps", "5"], "`--visualize-steps` goes with --visualize"),
])
def test_options_of_a_mode_not_asked_for_are_refused(extra, match, images, tmp_path, capsys):
    err = _error(_explain(images, tmp_path / "o", *extra), capsys)
    assert match in err


def test_explain_into_the_same_out_keeps_only_this_runs_class(images, tmp_path, capsys):
    """--class 0 then --class 1 into one --out left class-0's folder beside class-1's, while
    explanation.safetensors held class 1 only."""
    out = tmp_path / "o"
    (out / "notes.txt").parent.mkdir(parents=True)
    (out / "notes.txt").write_text("a user's own file")
    base = ["explain", "--model", "reference", "--images", str(images), "--out", str(out),
            "--quiet", "--n-concepts", "3"]
    assert main([*base, "--class", "0"]) == 0
    first = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(first) == 1 and first[0].startswith("class-0")
    assert main([*base, "--class", "1"]) == 0
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 1 and folders[0].startswith("class-1"), folders
    assert (out / "notes.txt").exists() and (out / "explanation.safetensors").exists()
    capsys.readouterr()


def test_model_loading_takes_paths_checkpoints_and_names_typos(tmp_path):
    import torch

    from conceptkit.datasets import reference_model
    from conceptkit.models import load as load_model

    state = reference_model().state_dict()
    # a training checkpoint saved from DataParallel: {"model": {"module.<name>": ...}, "epoch"}
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
               tmp_path / "ckpt.pt")
    bundle = load_model("reference", weights=tmp_path / "ckpt.pt")  # a Path, not only a str
    assert torch.equal(bundle.model.fc.weight, state["fc.weight"])
    with pytest.raises(ValueError, match="unknown timm model 'resnet1800'"):
        load_model("timm:resnet1800", weights="pretrained")  # a typo, not "offline"
    with pytest.raises(TypeError, match="`weights`"):
        load_model("reference", weights=5)
    with pytest.raises(FileNotFoundError, match="`weights`"):
        load_model("efficientnet_lite0", weights=tmp_path / "missing.pt")  # was ignored
