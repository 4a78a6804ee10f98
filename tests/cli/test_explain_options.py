"""``conceptkit explain`` features: classes by name, file names as image ids, errors in the
command line's own terms (options, not Python arguments), likely layers when none is known."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

import conceptkit
from conceptkit.cli import main
from conceptkit.cli._explain import command_line_terms

FAST = ["--n-concepts", "3", "--batch-size", "8", "--quiet"]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["explain", *args, *FAST])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_class_by_name_and_file_names_everywhere(shape_images, tmp_path, capsys):
    out = tmp_path / "out"
    code, printed, err = run(["--model", "reference", "--images", str(shape_images), "--class",
                              "Green Triangle + Yellow Ring", "--out", str(out)], capsys)
    assert code == 0, err
    assert "explained 6 images of 'green triangle + yellow ring' (class 2)" in printed
    files = {f"photo_{i:02d}.png" for i in range(6)}
    # The printed ranking names the source files of each concept's top exemplars.
    assert "top exemplars from photo_0" in printed
    report = json.loads((out / "class-2-green-triangle-yellow-ring" / "report.json").read_text())
    assert set(report["shown_image_ids"]) == files
    for concept in report["concepts"]:
        assert concept["exemplar_sources"] and set(concept["exemplar_sources"]) <= files
    html = (out / "class-2-green-triangle-yellow-ring" / "index.html").read_text()
    assert "photo_03.png" in html
    saved = conceptkit.load(out / "explanation.safetensors")
    assert set(saved.image_ids.tolist()) == files
    _, sources = saved.top_examples(int(saved.ranking[0]), 3)
    assert set(sources.tolist()) <= files


def test_a_typo_in_the_class_name_suggests_close_names(shape_images, tmp_path, capsys):
    code, _, err = run(["--model", "reference", "--images", str(shape_images), "--class",
                        "green triangel + yellow ring", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert "`--class` 'green triangel + yellow ring' is not a class name" in err
    assert "Did you mean 'green triangle + yellow ring'" in err
    assert not (tmp_path / "out").exists()


def test_nmf_on_signed_activations_speaks_command_line(shape_images, tmp_path, capsys):
    # block4.0 is the convolution before batch norm and ReLU: signed activations.
    code, _, err = run(["--model", "reference", "--layer", "block4.0", "--images",
                        str(shape_images), "--class", "2", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert "`--factorizer semi_nmf`" in err and "`--layer` 'block4.0'" in err
    assert "found on the first image, before extracting all 6" in err
    assert "SemiNMF(k)" not in err and "factorizer=" not in err


def test_patch_size_without_craft_is_refused_in_command_line_terms(shape_images, tmp_path,
                                                                    capsys):
    code, _, err = run(["--model", "reference", "--images", str(shape_images), "--class", "2",
                        "--patch-size", "16", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("error:") == 1
    assert "`--patch-size` is the side of CRAFT's crops; `--method` 'ice' does not crop" in err
    assert "Pass `--method` 'craft' with it" in err
    assert not (tmp_path / "out").exists()


def test_missing_layer_lists_likely_layers(shape_images, tmp_path, capsys):
    code, _, err = run(["--model", "timm:vit_tiny_patch16_224", "--weights", "random",
                        "--images", str(shape_images),
                        "--class", "0", "--size", "224", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert "`--layer` is required for VisionTransformer" in err
    assert "'norm', 'blocks', 'blocks.10'" in err and "--layer NAME" in err


def test_python_argument_names_become_options():
    assert command_line_terms("`n_concepts`=50 is larger than the number of crops (48)") == \
        "`--n-concepts`=50 is larger than the number of crops (48)"
    assert command_line_terms("pass factorizer=SemiNMF(k) or factorizer=NMF(k, relu=True)") == \
        "pass `--factorizer semi_nmf` or `--factorizer nmf`"
    assert command_line_terms("`patch_size` must be >= 4") == "`--patch-size` must be >= 4"


def test_world_models_by_name_with_their_class_names(shape_images, tmp_path, capsys):
    bundle = conceptkit.models.load("world:textures")
    assert bundle.layer == "layer3" and bundle.preprocess is None
    assert bundle.class_names[1] == "checkerboard + dots"
    code, _, err = run(["--model", "world:textures", "--images", str(shape_images), "--class",
                        "checkerbord + dots", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "Did you mean 'checkerboard + dots'" in err


def test_a_vit_last_block_through_its_cls_token_from_the_command_line(tmp_path, capsys):
    """The shapes ViT's last block is explained through its CLS token by default (``--tokens
    auto``) and with ``--tokens cls``; its patch tokens are refused there, with an error that
    points to ``--tokens cls``; settings the path cannot honour are one ``error:`` line in the
    command line's terms."""
    from conceptkit.datasets import load_world

    data = load_world("shapes").sample(6, seed=0, split="test")
    folder = tmp_path / "class0"
    folder.mkdir()
    for i, image in enumerate(data.images[data.labels == 0]):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    common = ["--model", "world:shapes:vit", "--layer", "blocks.3", "--images", str(folder),
              "--class", "0"]
    code, _, err = run([*common, "--tokens", "patches", "--out", str(tmp_path / "patches")],
                       capsys)
    assert code == 2 and "--tokens cls" in err and "--layer blocks.2" in err
    code, printed, err = run([*common, "--tokens", "cls", "--out", str(tmp_path / "cls")], capsys)
    assert code == 0, err
    saved = conceptkit.load(tmp_path / "cls" / "explanation.safetensors")
    assert saved.params["tokens"] == "cls" and saved.params["window"] == 16
    assert saved.importances.max() > 0.5  # a region whose removal takes the class away
    code, printed, err = run([*common, "--out", str(tmp_path / "auto")], capsys)
    assert code == 0, err
    by_default = conceptkit.load(tmp_path / "auto" / "explanation.safetensors")
    assert by_default.params["tokens"] == "cls"
    np.testing.assert_array_equal(by_default.importances, saved.importances)
    code, _, err = run([*common, "--tokens", "cls", "--importance", "sobol", "--out",
                        str(tmp_path / "x")], capsys)
    assert code == 2 and err.count("error:") == 1 and "--importance pixel_ablation" in err
