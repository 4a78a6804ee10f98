"""Second review of the ground-truth worlds: the train commands keep the shipped weights, weights
files are checked before a model is built, the weights caches see replaced files, and the
datasets refuse what they cannot hold."""

import json
import os
import shutil
import struct

import pytest
import torch

from conceptkit.datasets import (
    ConceptDataset,
    ReferenceCNN,
    SmallResNet,
    add_concept,
    load_world,
    make_concept_dataset,
    reference_model,
    train_reference,
    train_world,
    train_world_model,
)
from conceptkit.datasets import _world_training as world_training
from conceptkit.datasets._reference import WEIGHTS_KIND, WEIGHTS_PATH, WEIGHTS_VERSION
from conceptkit.datasets._world import WEIGHTS_DIR, WORLD_WEIGHTS_KIND, WORLD_WEIGHTS_VERSION
from conceptkit.io import FormatError, save_file


def _no_training(monkeypatch):
    """Make every trainer and writer of the train commands fail the test if it is reached: a
    refused command must stop before it trains, let alone writes a shipped file."""
    def reached(*args, **kwargs):
        raise AssertionError("the command went on to train or write")

    monkeypatch.setattr(world_training, "train_world_model", reached)
    monkeypatch.setattr(train_world, "save_file", reached)
    monkeypatch.setattr(train_reference, "train_reference_cnn", reached)
    monkeypatch.setattr(train_reference, "save_file", reached)


@pytest.mark.parametrize("argv", [
    ["--world", "textures", "--epochs", "1", "--n-per-class", "5"],
    ["--world", "scales", "--lr", "0.1"],
    ["--world", "context", "--seed", "3"],
    ["--world", "textures", "--epochs", "1", "--out", str(WEIGHTS_DIR / "textures_resnet.safetensors")],
    ["--world", "shapes", "--epochs", "1"],  # runs train_reference
    ["--world", "shapes", "--arch", "vit", "--n-per-class", "5"],
])
def test_train_world_refuses_to_write_the_shipped_file_with_other_settings(argv, monkeypatch, capsys):
    _no_training(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        train_world.main([*argv, "--no-progress"])
    assert exit_.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_train_reference_refuses_other_settings_without_out_and_another_shipped_file(monkeypatch, capsys):
    _no_training(monkeypatch)
    with pytest.raises(SystemExit):
        train_reference.main(["--epochs", "1", "--n-per-class", "5", "--no-progress"])
    assert "--epochs 1 (shipped 5)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the shipped settings, but over another shipped file
        train_reference.main(["--out", str(WEIGHTS_DIR / "textures_resnet.safetensors")])
    assert "another shipped weights file" in capsys.readouterr().err


def test_the_shipped_flag_compares_the_training_settings():
    textures, shapes = load_world("textures"), load_world("shapes")
    assert textures.shipped("resnet") and textures.shipped(None, epochs=8, n_per_class=500)
    assert not textures.shipped("resnet", epochs=1)
    assert not textures.shipped("vit", n_per_class=5) and not textures.shipped("resnet", seed=1)
    assert shapes.shipped("cnn") and not shapes.shipped("cnn", lr=0.1)
    _, info = train_world_model("textures", epochs=1, n_per_class=1, n_val_per_class=1,
                                n_test_per_class=1, progress=False)
    assert info["shipped"] is False


def _tampered_reference(tmp_path, **architecture):
    """A copy of the shipped reference CNN whose record's architecture is edited (no digest)."""
    raw = WEIGHTS_PATH.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    info = json.loads(header["__metadata__"]["conceptkit"])
    info["meta"]["architecture"].update(architecture)
    info.pop("digest", None)
    header["__metadata__"]["conceptkit"] = json.dumps(info)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "reference_tampered.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return path


def test_a_tampered_reference_width_is_refused_before_a_model_is_built(tmp_path, monkeypatch):
    path = _tampered_reference(tmp_path, width=64)
    built = []
    real_init = ReferenceCNN.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if not self.fc.weight.is_meta:
            built.append(self.width)

    monkeypatch.setattr(ReferenceCNN, "__init__", init)
    with pytest.raises(FormatError, match="not the ones its architecture makes"):
        load_world("shapes").model(weights=path)
    with pytest.raises(FormatError, match="not the ones its architecture makes"):
        reference_model(path=path)
    assert built == []  # only on the meta device


def test_shapes_info_reads_the_reference_files_that_model_loads(tmp_path):
    path = tmp_path / "reference.safetensors"
    shutil.copyfile(WEIGHTS_PATH, path)
    world = load_world("shapes")
    assert isinstance(world.model(weights=path), ReferenceCNN)
    record = world.info(weights=path)
    assert record["test_accuracy"] == world.info()["test_accuracy"]


def test_weights_of_another_class_count_or_layer_are_refused(tmp_path):
    config = {"n_classes": 2, "width": 16, "n_blocks": 1}
    two = tmp_path / "textures_two.safetensors"
    save_file(two, SmallResNet(**config).state_dict(), {"world": "textures", "architecture": "resnet",
              "config": config, "layer": "layer3"}, kind=WORLD_WEIGHTS_KIND, version=WORLD_WEIGHTS_VERSION)
    textures = load_world("textures")
    for load in (textures.model, textures.info):
        with pytest.raises(ValueError, match="`weights` .* 2 classes; the 'textures' world has 4"):
            load(weights=two)
    config = {"n_classes": 4, "width": 16, "n_blocks": 1}
    layer = tmp_path / "textures_layer.safetensors"
    save_file(layer, SmallResNet(**config).state_dict(), {"world": "textures", "architecture": "resnet",
              "config": config, "layer": "layer9"}, kind=WORLD_WEIGHTS_KIND, version=WORLD_WEIGHTS_VERSION)
    with pytest.raises(FormatError, match="layer 'layer9' is not a module"):
        textures.model(weights=layer)
    reference = tmp_path / "reference_two.safetensors"
    save_file(reference, ReferenceCNN(n_classes=2, width=4).state_dict(),
              {"architecture": {"n_classes": 2, "width": 4}}, kind=WEIGHTS_KIND, version=WEIGHTS_VERSION)
    shapes = load_world("shapes")
    for load in (shapes.model, shapes.info):
        with pytest.raises(ValueError, match="`weights` .* 2 classes; the 'shapes' world has 6"):
            load(weights=reference)


def _replace_keeping_mtime(source, target, in_place=True):
    stat = os.stat(target)
    if in_place:  # cp -p: the same inode
        shutil.copyfile(source, target)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:  # rsync -t: a new file with the old time, renamed over the target
        fresh = target.with_name(target.name + ".part")
        shutil.copyfile(source, fresh)
        os.utime(fresh, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(fresh, target)


def test_the_weights_caches_see_a_file_replaced_with_its_modification_time_kept(tmp_path):
    world = load_world("textures")
    path = tmp_path / "model.safetensors"
    shutil.copyfile(WEIGHTS_DIR / "textures_resnet.safetensors", path)
    assert type(world.model(weights=path)).__name__ == "SmallResNet"
    _replace_keeping_mtime(WEIGHTS_DIR / "textures_vit.safetensors", path)
    assert type(world.model(weights=path)).__name__ == "VisionTransformer"
    assert world.info(weights=path)["architecture"] == "vit"
    # the reference CNN's cache, with a file of the same size and time (only the inode tells)
    reference = tmp_path / "reference.safetensors"
    shutil.copyfile(WEIGHTS_PATH, reference)
    before = reference_model(path=reference).fc.weight.detach().clone()
    other = tmp_path / "other.safetensors"
    state = {k: v.clone() for k, v in reference_model().state_dict().items()}
    state["fc.weight"] = state["fc.weight"] + 1.0
    save_file(other, state, {"architecture": {"n_classes": 6, "width": 16}}, kind=WEIGHTS_KIND,
              version=WEIGHTS_VERSION)
    small = tmp_path / "small.safetensors"  # the same record, so the same size as `other`
    save_file(small, reference_model().state_dict(), {"architecture": {"n_classes": 6, "width": 16}},
              kind=WEIGHTS_KIND, version=WEIGHTS_VERSION)
    assert os.path.getsize(small) == os.path.getsize(other)
    shutil.copyfile(small, reference)
    assert torch.equal(reference_model(path=reference).fc.weight, before)
    _replace_keeping_mtime(other, reference, in_place=False)
    assert torch.allclose(reference_model(path=reference).fc.weight, before + 1.0)


def test_a_dataset_too_large_for_memory_is_refused_naming_n_per_class():
    with pytest.raises(ValueError, match=r"`n_per_class` 1000000000 would draw 4000000000 images"):
        load_world("textures").sample(10**9)
    with pytest.raises(ValueError, match=r"`n_per_class` 1000000000 .* of memory"):
        make_concept_dataset(10**9)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="`path` must be a str or os.PathLike"):
        reference_model(path=123)
    data = make_concept_dataset(2, 32, seed=0, split="test")
    reverse = data.subset(slice(None, None, -1))
    assert torch.equal(reverse.labels, data.labels.flip(0))
    assert torch.equal(reverse.images, data.images.flip(0))
    assert torch.equal(data.subset(slice(-2, None)).labels, data.labels[-2:])
    with pytest.raises(ValueError, match="`indices` as a slice"):
        data.subset(slice(0, 4, 0))
    with pytest.raises(TypeError, match="`progress` must be True or False"):
        make_concept_dataset(1, progress="no")
    with pytest.raises(TypeError, match="`progress` must be True or False"):
        add_concept(data, 9, progress="x")


def _fields(**changes):
    good = dict(images=torch.rand(3, 3, 8, 8), labels=torch.tensor([0, 1, 1]),
                concepts=torch.zeros(3, 2), masks=torch.zeros(3, 2, 8, 8, dtype=torch.bool),
                concept_names=["a", "b"], class_names=["x", "y"], class_concepts=[[0], [1]],
                distractor_concepts=[], spurious_concept=-1, spurious_class=-1, spurious=False,
                split="test", seed=0, world="mine")
    return {**good, **changes}


@pytest.mark.parametrize("changes, error, match", [
    ({"labels": torch.tensor([0, 7, 1])}, ValueError, r"`labels` must lie in \[0, 1\]"),
    ({"labels": torch.tensor([0, 1, 1, 0, 1])}, ValueError, "`labels` must have shape"),
    ({"labels": torch.tensor([0.0, 1.0, 1.0])}, TypeError, "`labels` must be a integer"),
    ({"concepts": torch.zeros(2, 2)}, ValueError, "`concepts` must have shape"),
    ({"masks": torch.zeros(3, 2, 8, 8)}, TypeError, "`masks` must be a bool"),
    ({"masks": torch.zeros(3, 1, 8, 8, dtype=torch.bool)}, ValueError, "`masks` must have shape"),
    ({"images": torch.rand(3, 8, 8)}, ValueError, r"`images` must have shape \(N, 3, H, W\)"),
    ({"class_concepts": [[5], [1]]}, ValueError, "`class_concepts` must be <= 1"),
    ({"class_concepts": [[0]]}, ValueError, "`class_concepts` must be a list of 2 lists"),
    ({"distractor_concepts": [3]}, ValueError, "`distractor_concepts` must be <= 1"),
    ({"spurious_concept": 4, "spurious_class": 0}, ValueError, "`spurious_concept` must be <= 1"),
    ({"spurious_concept": 1}, ValueError, "`spurious_concept` and `spurious_class` must both"),
    ({"spurious": True}, ValueError, "`spurious` must be False"),
    ({"split": "bogus"}, ValueError, "`split` must be one of"),
    ({"seed": -3}, ValueError, "`seed` must be >= 0"),
    ({"class_names": []}, TypeError, "`class_names` must be a non-empty list of str"),
    ({"world": None}, TypeError, "`world` must be the name"),
])
def test_concept_dataset_refuses_fields_that_do_not_fit(changes, error, match):
    with pytest.raises(error, match=match):
        ConceptDataset(**_fields(**changes))


def test_concept_dataset_takes_what_the_worlds_and_its_methods_make():
    data = ConceptDataset(**_fields())
    assert "mine" in repr(data) and data.summary()
    assert len(data.subset([])) == 0 and len(data.subset(torch.tensor([True, False, True]))) == 2
    shapes = make_concept_dataset(1, 32, seed=1)
    assert add_concept(shapes, 7).concepts[:, 7].all()
