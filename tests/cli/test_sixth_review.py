"""Sixth review (a fuzzer of the command line): ``report``, ``atlas`` and ``demo`` overwrote a
user's files in ``--out``; NaN weights were loaded (``extract`` wrote an all-NaN store, and the
other commands blamed the split or the training data); ``extract --concept-dataset`` ignored
``--size``; a pickled ``--weights`` gave torch's advice cut short, with terminal escapes and a
torch warning; ``--image-size 32 --size 48`` let the last win unsaid; 32-bit integer images were
scaled by their own maximum; ``explain --size 1`` blamed ``--images``; the pixel-ablation error
on blank images spoke only of signed codes."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import cli_error
from PIL import Image

from conceptkit.cli import main

FAST = ["--n-concepts", "3", "--batch-size", "8", "--quiet"]
MINE = "MY OWN NOTES - not written by conceptkit"
CLASS_2 = "class-2-green-triangle-yellow-ring"
ATLAS = ["--model", "reference", "--n-concepts", "3", "--max-iter", "2", "--importance",
         "gradient_input", "--quiet"]


def _mine(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MINE)
    return path


def _kept(path: Path) -> bool:
    return path.read_bytes() == MINE.encode()


@pytest.fixture(scope="module")
def explanation(tmp_path_factory) -> Path:
    """A saved explanation of class 2 of the reference CNN (what ``explain`` saves)."""
    import conceptkit
    from conceptkit.datasets import make_concept_dataset
    from conceptkit.models import load

    data = make_concept_dataset(6, seed=0)
    result = conceptkit.ConceptExplainer(load("reference"), n_concepts=3, seed=0,
                                         progress=False).fit(data.images[data.labels == 2], 2)
    return Path(result.save(tmp_path_factory.mktemp("explained") / "explanation.safetensors"))


@pytest.fixture(scope="module")
def maps_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store") / "acts"
    assert main(["extract", "--model", "reference", "--concept-dataset", "2", "--layout", "maps",
                 "--quiet", "--out", str(store)]) == 0
    return store


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory) -> Path:
    """The reference CNN's state dict with NaN in one tensor, as a .safetensors file."""
    from safetensors.torch import save_file

    from conceptkit.datasets import reference_model

    state = {k: v.clone() for k, v in reference_model().state_dict().items()}
    state["block2.0.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path_factory.mktemp("weights") / "nan.safetensors"
    save_file(state, str(path))
    return path


# --- 1. report --out -----------------------------------------------------------------------------

def test_report_refuses_a_file_it_did_not_write(explanation, tmp_path, capsys):
    out = tmp_path / "out"
    page = _mine(out / CLASS_2 / "index.html")
    err = cli_error(["report", str(explanation), "--out", str(out)], capsys, seconds=5)
    assert "`--out`" in err and f"'{CLASS_2}/index.html'" in err and "Move it away" in err
    assert _kept(page)
    assert sorted(p.name for p in (out / CLASS_2).iterdir()) == ["index.html"]  # nothing written


@pytest.mark.slow
def test_report_and_atlas_rewrite_their_own_outputs(explanation, maps_store, tmp_path):
    """What a command wrote into --out before (listed in the folders' manifests) is rewritten."""
    out = tmp_path / "report"
    for _ in range(2):
        assert main(["report", str(explanation), "--out", str(out)]) == 0
    assert (out / CLASS_2 / "report.json").is_file()
    out = tmp_path / "atlas"
    for _ in range(2):
        assert main(["atlas", "--store", str(maps_store), *ATLAS, "--out", str(out)]) == 0
    assert (out / "atlas.safetensors").is_file() and (out / "report" / "index.html").is_file()


# --- 2. atlas --out ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["atlas.safetensors", "report/index.html"])
def test_atlas_refuses_a_file_it_did_not_write_before_any_work(name, maps_store, tmp_path,
                                                               capsys, monkeypatch):
    import conceptkit.pipeline as pipeline

    def no_fit(*args, **kwargs):
        raise AssertionError("the atlas was fitted before --out was checked")

    monkeypatch.setattr(pipeline.ConceptAtlas, "fit", no_fit)
    out = tmp_path / "out"
    mine = _mine(out / name)
    err = cli_error(["atlas", "--store", str(maps_store), *ATLAS, "--out", str(out)], capsys)
    assert "`--out`" in err and repr(name) in err
    assert _kept(mine)


def test_atlas_checks_out_again_before_writing(maps_store, tmp_path, capsys, monkeypatch):
    """A file put in --out while the atlas is fitted is not overwritten either."""
    import conceptkit.pipeline as pipeline

    out = tmp_path / "out"
    fit = pipeline.ConceptAtlas.fit

    def fit_then_a_user_writes(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        _mine(out / "atlas.safetensors")
        return result

    monkeypatch.setattr(pipeline.ConceptAtlas, "fit", fit_then_a_user_writes)
    err = cli_error(["atlas", "--store", str(maps_store), *ATLAS, "--out", str(out)], capsys)
    assert "'atlas.safetensors'" in err and _kept(out / "atlas.safetensors")
    assert not (out / "report").exists()


def test_atlas_accepts_its_own_atlas(maps_store, tmp_path, capsys):
    from conceptkit.cli._checks import check_out_targets

    out = tmp_path / "out"
    assert main(["atlas", "--store", str(maps_store), *ATLAS, "--no-report", "--out",
                 str(out)]) == 0
    check_out_targets(out, ["atlas.safetensors"])  # a rerun's check: listed, so not refused


# --- 3. demo --out -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["index.html", "class-0-red-disk-blue-square/report.json",
                                  "thumbnails/class-3.png"])
def test_demo_refuses_a_file_it_did_not_write_before_any_work(name, tmp_path, capsys,
                                                              monkeypatch):
    import conceptkit.datasets as datasets

    def no_work(*args, **kwargs):
        raise AssertionError("the demo drew its dataset before --out was checked")

    monkeypatch.setattr(datasets, "make_concept_dataset", no_work)
    out = tmp_path / "out"
    mine = _mine(out / name)
    err = cli_error(["demo", "--n-per-class", "2", "--n-concepts", "2", "--quiet", "--out",
                     str(out)], capsys, seconds=5)
    assert "`--out`" in err and repr(name) in err
    assert _kept(mine)


def test_demo_targets_are_the_folders_it_writes():
    from conceptkit.cli._demo import demo_targets
    from conceptkit.datasets import CLASS_NAMES

    targets = demo_targets()
    assert targets[:3] == ["index.html", "index.json", "thumbnails"]
    assert targets[3:] == ["class-0-red-disk-blue-square", "class-1-blue-square-green-triangle",
                           "class-2-green-triangle-yellow-ring", "class-3-yellow-ring-striped-patch",
                           "class-4-striped-patch-checkerboard-patch",
                           "class-5-checkerboard-patch-red-disk"]
    assert len(targets) == 3 + len(CLASS_NAMES)


# --- 4 and 6. NaN weights ------------------------------------------------------------------------

def test_extract_refuses_nan_weights_and_writes_no_store(nan_weights, tmp_path, capsys):
    out = tmp_path / "store"
    err = cli_error(["extract", "--model", "reference", "--weights", str(nan_weights),
                     "--concept-dataset", "2", "--quiet", "--out", str(out)], capsys)
    assert err == (f"error: `--weights` {str(nan_weights)!r} holds NaN or Inf values in "
                   f"'block2.0.weight': a model with them computes NaN or Inf, and its "
                   f"explanation would mean nothing. Give weights with finite values (a training "
                   f"run that diverged saves such weights).")
    assert not out.exists()


def test_explain_and_train_cbm_blame_the_weights_not_the_split_or_the_data(
        nan_weights, shape_images, tmp_path, capsys):
    err = cli_error(["explain", "--model", "reference", "--weights", str(nan_weights),
                     "--images", str(shape_images), "--class", "2", "--out",
                     str(tmp_path / "e"), *FAST], capsys)
    assert err.startswith(f"error: `--weights` {str(nan_weights)!r} holds NaN or Inf values")
    assert "split" not in err
    err = cli_error(["train-cbm", "--weights", str(nan_weights), "--epochs", "1", "--quiet",
                     "--out", str(tmp_path / "c")], capsys)
    assert err.startswith(f"error: `--weights` {str(nan_weights)!r} holds NaN or Inf values")
    assert "train_data" not in err


def test_load_state_names_the_first_tensor_that_is_not_finite(tmp_path):
    from conceptkit.models import load_state

    path = tmp_path / "w.pt"
    torch.save({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")]),
                "c": torch.tensor([float("nan")]), "steps": torch.tensor([3])}, path)
    with pytest.raises(ValueError, match=r"`weights` .* holds NaN or Inf values in 'b' \(and 1 "
                                         r"more tensors\)"):
        load_state(path)
    torch.save({"a": torch.ones(2), "steps": torch.tensor([3])}, path)
    assert sorted(load_state(path)) == ["a", "steps"]


def test_a_reference_file_with_nan_is_refused_too(tmp_path):
    """A file of train_reference (its architecture recorded) is read by another route."""
    from conceptkit.datasets import reference_info, reference_model
    from conceptkit.datasets._reference import WEIGHTS_KIND, WEIGHTS_VERSION
    from conceptkit.io import save_file
    from conceptkit.models import load

    state = {k: v.clone() for k, v in reference_model().state_dict().items()}
    state["fc.weight"][0, 0] = float("nan")
    path = tmp_path / "trained.safetensors"
    save_file(path, state, reference_info(), kind=WEIGHTS_KIND, version=WEIGHTS_VERSION)
    with pytest.raises(ValueError, match="holds NaN or Inf values in 'fc.weight'"):
        load("reference", str(path))


def test_extract_refuses_activations_that_are_not_finite(tmp_path, capsys):
    """Finite weights whose activations overflow: nothing of them is stored."""
    from safetensors.torch import save_file

    from conceptkit.datasets import reference_model

    state = {k: v.clone() for k, v in reference_model().state_dict().items()}
    state["block1.0.weight"] *= 1e37  # finite; the pooled block4 maps overflow float32
    weights = tmp_path / "huge.safetensors"
    save_file(state, str(weights))
    out = tmp_path / "store"
    err = cli_error(["extract", "--model", "reference", "--weights", str(weights),
                     "--concept-dataset", "2", "--quiet", "--out", str(out)], capsys)
    assert err == ("error: the model's activations at `--layer` 'block4' are NaN or Inf (for "
                   "input 0); nothing of them is stored. The model computes non-finite values: "
                   "check its weights (`--weights`).")
    assert not out.exists()


def test_extract_checks_every_chunk_before_writing_it(tmp_path, capsys, monkeypatch):
    """Activations that turn non-finite after the first input: the chunk is not written."""
    from conceptkit.cli import _extract

    real = _extract.ActivationExtractor

    class LaterNaN(real):
        def __call__(self, inputs):
            out = real.__call__(self, inputs)
            return out if len(inputs) == 1 else out * float("nan")

    monkeypatch.setattr(_extract, "ActivationExtractor", LaterNaN)
    out = tmp_path / "store"
    err = cli_error(["extract", "--model", "reference", "--concept-dataset", "2",
                     "--chunk-size", "4", "--quiet", "--out", str(out)], capsys)
    assert "`--layer` 'block4' are NaN or Inf (for inputs 0 to 3)" in err
    assert not list(out.glob("chunk-*.npy"))


# --- 5. extract --concept-dataset --size ---------------------------------------------------------

def test_extract_draws_the_concept_dataset_at_size(tmp_path):
    for size, side in ((32, 4), (128, 16)):
        out = tmp_path / f"s{size}"
        assert main(["extract", "--model", "reference", "--concept-dataset", "1", "--layout",
                     "maps", "--size", str(size), "--quiet", "--out", str(out)]) == 0
        assert np.load(out / "chunk-000000.npy").shape == (6, 64, side, side)  # block4: side/8


def test_extract_refuses_a_size_the_concept_dataset_cannot_draw(tmp_path, capsys):
    err = cli_error(["extract", "--model", "reference", "--concept-dataset", "1", "--size", "16",
                     "--quiet", "--out", str(tmp_path / "s")], capsys, seconds=5)
    assert err == ("error: `--size` must lie in [32, 512] with `--concept-dataset` (the side in "
                   "pixels its images are drawn at); got 16.")


# --- 7. a pickled --weights ----------------------------------------------------------------------

class _Anything:
    """A class whose pickle torch's safe loader refuses (not an allowed global)."""


@pytest.mark.parametrize("kind", ["whole model", "pickle protocol 4"])
def test_a_pickled_weights_file_is_said_in_our_words(kind, shape_images, tmp_path, capsys):
    path = tmp_path / "w.pt"
    if kind == "whole model":
        torch.save(torch.nn.Linear(2, 2), path)
        holds = ", here a `torch.nn.modules.linear.Linear`"
    else:  # torch warns about the protocol before it refuses
        path.write_bytes(pickle.dumps({"w": _Anything()}, protocol=4))
        holds = ""
    err = cli_error(["explain", "--model", "reference", "--weights", str(path), "--images",
                     str(shape_images), "--class", "2", "--out", str(tmp_path / "o"), *FAST],
                    capsys)  # one line: no torch warning before it
    assert "\x1b" not in err
    assert err == (f"error: `--weights` {str(path)!r} is not a plain state dict (a pickled "
                   f"object{holds}, which conceptkit does not unpickle: it can run code); save "
                   f"`model.state_dict()` with torch.save, or a .safetensors file.")


def test_a_weights_file_of_no_known_format_and_an_empty_one(tmp_path):
    from conceptkit.models import load_state

    garbage = tmp_path / "g.pt"
    garbage.write_bytes(bytes(range(7, 200)))
    with pytest.raises(ValueError, match=r"neither a file written by torch.save nor a "
                                         r"\.safetensors file"):
        load_state(garbage)
    empty = tmp_path / "e.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"`weights` .* is an empty file; give a torch state "
                                         r"dict\."):
        load_state(empty)


# --- 8. old and new name of an option, with different values -------------------------------------

@pytest.mark.parametrize("order", [["--image-size", "32", "--size", "48"],
                                   ["--size", "48", "--image-size", "32"]])
def test_old_and_new_names_with_different_values_are_refused(order, tmp_path, capsys):
    start = time.perf_counter()
    code = main(["train-cbm", "--out", str(tmp_path / "c"), *order])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.perf_counter() - start < 5
    assert [line for line in err if line.startswith("error:")] == [
        "error: `--image-size` 32 and `--size` 48 set the same option (`--image-size` is its "
        "deprecated name) to different values; give `--size` once."]
    assert all(line.startswith(("warning: `--image-size` is deprecated", "error:"))
               for line in err)


def test_old_and_new_names_with_one_value_still_parse():
    from conceptkit.cli._train_cbm import build_parser

    parser = build_parser()
    args = parser.parse_args(["--out", "x", "--image-size", "48", "--size", "48",
                              "--no-progress", "--quiet"])
    assert args.size == 48 and args.quiet is True
    assert not any(name.startswith("_") for name in vars(args))  # (metrics.json lists them)
    # a second parse with the same parser starts afresh
    assert parser.parse_args(["--out", "x", "--size", "40"]).size == 40
    assert parser.parse_args(["--out", "x", "--image-size", "32"]).size == 32


# --- 9. 32-bit integer images --------------------------------------------------------------------

def _int_tiff(path: Path, top: int) -> Path:
    ramp = np.tile(np.linspace(0, top, 32), (32, 1)).astype(np.int32)
    Image.fromarray(ramp, mode="I").save(path)  # a 32-bit signed TIFF (BitsPerSample 32)
    return path


def test_a_32_bit_image_is_scaled_by_its_bit_depth(tmp_path, capsys):
    from conceptkit.cli._images import load_images

    full = load_images(str(_int_tiff(tmp_path / "full.tif", 2**31 - 1)), 32)[0][0]
    np.testing.assert_allclose(full[0, 0].numpy(), np.round(np.linspace(0, 255, 32)) / 255,
                               atol=1 / 255)
    assert capsys.readouterr().err == ""
    # a dark image stays dark (it was scaled by its own maximum: 200 read as white, 0.78)
    dark = load_images(str(_int_tiff(tmp_path / "dark.tif", 200)), 32)[0][0]
    assert float(dark.max()) == 0.0
    err = capsys.readouterr().err.strip()
    assert err == (f"warning: `--images`: {str(tmp_path / 'dark.tif')!r} reads as black: its "
                   f"largest value, 200, is below one grey level of its full scale, 2147483647 "
                   f"(its bit depth). Rescale the image to its bit depth's range, or save it as "
                   f"an 8- or 16-bit image.")


def test_a_32_bit_image_of_no_stated_depth_keeps_the_rule_and_says_it(tmp_path, capsys,
                                                                      monkeypatch):
    from conceptkit.cli import _images

    monkeypatch.setattr(_images, "_full_scale", lambda img: None)
    path = _int_tiff(tmp_path / "dark.tif", 200)
    image = _images.load_images(str(path), 32)[0][0]
    assert float(image.max()) == pytest.approx(200 / 255, abs=1 / 255)
    err = capsys.readouterr().err.strip()
    assert err == (f"warning: `--images`: {str(path)!r} holds integers (PIL mode 'I') of no "
                   f"stated bit depth; its values are scaled to [0, 1] by 255 (the smallest of "
                   f"255 and 65535 that holds its largest value, 200, else that value).")


def test_sixteen_bit_images_are_read_as_before(tmp_path, capsys):
    from conceptkit.cli._images import load_images

    dark = np.tile(np.linspace(0, 1000, 32), (32, 1)).astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.png")  # mode I;16: full scale 65535
    Image.fromarray(dark).save(tmp_path / "dark.tif")
    for name in ("dark.png", "dark.tif"):
        image = load_images(str(tmp_path / name), 32)[0][0]
        assert float(image.max()) == pytest.approx(round(1000 / 65535 * 255) / 255)
    assert capsys.readouterr().err == ""


# --- 10. explain --size too small; blank images ---------------------------------------------------

def test_explain_size_too_small_names_size(images, tmp_path, capsys):
    err = cli_error(["explain", "--model", "reference", "--images", str(images), "--class", "2",
                     "--size", "1", "--out", str(tmp_path / "o"), *FAST], capsys)
    assert err.startswith("error: `--size` 1 makes images of 1x1 pixels, which are too small "
                          "for ReferenceCNN")
    assert "pass `--size 8` or more (or leave `--size` out: the model's own input size)" in err
    assert "`--images`" not in err and "resize the images" not in err


def test_blank_images_are_named_as_a_cause_of_maps_positive_nowhere(tmp_path, capsys):
    folder = tmp_path / "blank"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((1, 1, 3), (40 * i, 0, 0), np.uint8)).save(folder / f"{i}.png")
    code = main(["explain", "--model", "reference", "--images", str(folder), "--class", "2",
                 "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after NMF's note on its fit)
    assert code == 2 and err.startswith("error: pixel_ablation: no concept map is positive")
    assert "Constant or blank images (one colour everywhere, e.g. tiny images enlarged)" in err
