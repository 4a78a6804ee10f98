"""``conceptkit explain --name-with ... --visualize``: names and pictures reach the file and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conceptkit
from conceptkit.cli import main
from conceptkit.datasets import make_concept_dataset

FAST = ["--n-concepts", "3", "--batch-size", "8", "--quiet"]

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def class_images(tmp_path_factory) -> Path:
    data = make_concept_dataset(8, seed=0)
    folder = tmp_path_factory.mktemp("shapes-class-2")
    for i, image in enumerate(data.images[data.labels == 2]):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{i:02d}.png")
    return folder


def _report(out: Path) -> dict:
    (page,) = out.glob("class-*/report.json")
    return json.loads(page.read_text())


def test_explain_names_by_dissection_and_visualizes(class_images, tmp_path, capsys):
    out = tmp_path / "dissect"
    code = main(["explain", "--model", "reference", "--images", str(class_images), "--class", "2",
                 "--out", str(out), "--name-with", "dissect", "--probe", "shapes", "--visualize",
                 "--visualize-steps", "2", *FAST])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "ConceptNames(method='dissect'" in printed.out
    result = conceptkit.load(out / "explanation.safetensors")
    assert result.names is not None and result.names.method == "dissect"
    assert sorted(result.visualizations) == [0, 1, 2]
    assert result.visualizations[0].params["steps"] == 2
    report = _report(out)
    labels = {row["index"]: row["label"] for row in report["concepts"]}
    assert labels == {j: result.labels[j] for j in range(3)}
    assert any(label in ("green triangle", "yellow ring") for label in labels.values())
    assert all(row["visualized"] for row in report["concepts"])
    assert "visualizations" in report["figures"]
    assert any("Concept names: method 'dissect'" in note for note in report["notes"])
    named = [row for row in report["concepts"] if not row["label"].startswith("concept ")]
    assert all("name score (IoU)" in row["extra"] for row in named)


def test_explain_names_by_classes(class_images, tmp_path, capsys):
    out = tmp_path / "classes"
    code = main(["explain", "--model", "reference", "--images", str(class_images), "--class", "2",
                 "--out", str(out), "--name-with", "classes", *FAST])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = conceptkit.load(out / "explanation.safetensors")
    names = set(make_concept_dataset(1, seed=0).class_names)
    assert {e.name for e in result.names if e.name is not None} <= names - {result.class_name}
    assert not result.visualizations


@pytest.mark.parametrize("extra, message", [
    (["--name-with", "dissect"], "--probe"),
    (["--name-with", "dissect", "--probe", "mars"], "--probe"),
    (["--name-with", "clip"], "--clip"),
    (["--name-with", "clip", "--clip", "ViT-B-32", "--vocabulary", "nowhere.txt"], "--vocabulary"),
    (["--clip", "ViT-B-32"], "--name-with clip"),
    # without weights open_clip builds a random CLIP (and only logs it): names would mean nothing
    (["--name-with", "clip", "--clip", "ViT-B-32"], "--clip-weights"),
    (["--name-with", "classes", "--probe", "shapes"], "--probe"),
    (["--probe", "shapes"], "--probe"),
    (["--visualize", "--visualize-steps", "0"], "--visualize-steps"),
])
def test_naming_arguments_are_checked(extra, message, class_images, tmp_path, capsys):
    code = main(["explain", "--model", "reference", "--images", str(class_images), "--class", "2",
                 "--out", str(tmp_path / "bad"), *extra, *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "bad").exists()  # refused before any work
