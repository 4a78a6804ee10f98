"""Fifth review of the ground-truth worlds: the shipped weights are pinned by SHA-256 and new
weights files always carry a digest; each World has its own settings; the reference CNN trains
on one thread; derived datasets share nothing with their parent; every shipped record says
``shipped``."""

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from conceptkit.datasets import (
    SmallResNet,
    _generate,
    _reference,
    _shipped,
    _world,
    add_concept,
    load_world,
    reference_info,
    reference_model,
    train_reference,
    train_world,
)
from conceptkit.datasets import _world_training as world_training
from conceptkit.datasets._reference import WEIGHTS_KIND, WEIGHTS_PATH, WEIGHTS_VERSION
from conceptkit.datasets._world import WEIGHTS_DIR, WORLD_WEIGHTS_KIND, WORLD_WEIGHTS_VERSION
from conceptkit.io import FormatError, peek_kind, save_file

DOCS = Path(__file__).resolve().parents[2] / "docs" / "worlds.md"


def _rewrite(source, target, *, negate=False, strip_digest=False, version=None):
    """A copy of the conceptkit file ``source``: its classifier's weights negated, its digest
    removed or its format version changed (the bytes of every other tensor kept)."""
    raw = bytearray(Path(source).read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    info = json.loads(header["__metadata__"]["conceptkit"])
    if strip_digest:
        info.pop("digest", None)
    if version is not None:
        info["format_version"] = version
    header["__metadata__"]["conceptkit"] = json.dumps(info)
    if negate:
        key = "fc.weight" if "fc.weight" in header else "head.weight"
        start, end = header[key]["data_offsets"]
        for j in range(start + 3, end, 4):  # the sign bit of every float32
            body[j] ^= 0x80
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(target).write_bytes(struct.pack("<Q", len(text)) + text + bytes(body))
    return Path(target)


@pytest.fixture
def package_dir(tmp_path, monkeypatch):
    """A stand-in for the package's weights folder (the shipped files may not be touched)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(_shipped, "SHIPPED_DIR", folder.resolve())
    monkeypatch.setattr(_world, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(_reference, "WEIGHTS_PATH", folder / "reference_cnn.safetensors")
    return folder


# 1. the shipped files are pinned; new files carry a digest -----------------------------------

def test_a_tampered_file_in_the_package_is_refused_and_the_shipped_one_loads(package_dir):
    shutil.copyfile(WEIGHTS_DIR / "scales_resnet.safetensors", package_dir / "scales_resnet.safetensors")
    scales = load_world("scales")
    assert scales.info()["test_accuracy"] == 1.0 and scales.info()["shipped"] is True
    assert isinstance(scales.model(), SmallResNet)
    _rewrite(WEIGHTS_DIR / "scales_resnet.safetensors", package_dir / "scales_resnet.safetensors",
             negate=True)
    with pytest.raises(FormatError, match=r"shipped weights file .*scales_resnet\.safetensors.* "
                                          r"SHA-256 .* Reinstall conceptkit") as err:
        load_world("scales").model()
    assert "train_world --world scales --arch resnet" in str(err.value)
    # the reference CNN, which carries no digest either
    _rewrite(WEIGHTS_PATH, package_dir / "reference_cnn.safetensors", negate=True)
    with pytest.raises(FormatError, match=r"reference_cnn\.safetensors.* SHA-256 .*train_reference"):
        reference_model()
    # a shipped file whose digest was removed (shapes_vit carries one)
    _rewrite(WEIGHTS_DIR / "shapes_vit.safetensors", package_dir / "shapes_vit.safetensors",
             strip_digest=True)
    with pytest.raises(FormatError, match="SHA-256"):
        load_world("shapes").info("vit")


def test_a_retrain_written_over_a_shipped_file_is_checked_by_its_digest(package_dir):
    # train_world without --out rewrites the shipped file: a version-2 file with a digest loads
    config = {"n_classes": 4, "width": 2, "n_blocks": 1}
    torch.manual_seed(0)
    state = SmallResNet(**config).state_dict()
    record = {"world": "scales", "architecture": "resnet", "config": config, "layer": "layer3"}
    path = package_dir / "scales_resnet.safetensors"
    save_file(path, state, record, kind=WORLD_WEIGHTS_KIND, version=WORLD_WEIGHTS_VERSION)
    assert load_world("scales").info()["config"]["width"] == 2
    assert "shipped" not in load_world("scales").info()  # not the shipped file
    _rewrite(path, path, negate=False, strip_digest=True)
    with pytest.raises(FormatError, match="content digest is missing"):
        load_world("scales").model()
    # 0.1.0's train_world wrote version 1 with a digest over the shipped file: it loads (its
    # digest is checked), and a change to it is refused by that digest
    save_file(path, state, record, kind=WORLD_WEIGHTS_KIND, version=1)
    assert load_world("scales").info()["config"]["width"] == 2
    _rewrite(path, path, negate=True, version=1)
    with pytest.raises(FormatError, match="does not match the digest"):
        load_world("scales").model()


def test_a_tampered_copy_of_a_shipped_file_is_refused_wherever_it_is(tmp_path):
    scales = _rewrite(WEIGHTS_DIR / "scales_resnet.safetensors", tmp_path / "s.safetensors", negate=True)
    with pytest.raises(FormatError, match=r"`weights` .*s\.safetensors.* record of the shipped "
                                          r"scales_resnet\.safetensors but not its content"):
        load_world("scales").model(weights=scales)
    reference = _rewrite(WEIGHTS_PATH, tmp_path / "r.safetensors", negate=True)
    with pytest.raises(FormatError, match=r"`path` .*r\.safetensors.* record of the shipped "
                                          r"reference_cnn"):
        reference_model(path=reference)
    with pytest.raises(FormatError, match=r"`weights` .*r\.safetensors.* record of the shipped"):
        load_world("shapes").model(weights=reference)
    # the digest of shapes_vit removed, and its classifier negated
    vit = _rewrite(WEIGHTS_DIR / "shapes_vit.safetensors", tmp_path / "v.safetensors", negate=True,
                   strip_digest=True)
    with pytest.raises(FormatError, match="record of the shipped shapes_vit"):
        load_world("shapes").model("vit", weights=vit)
    # an untouched copy loads, and is the shipped model
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(WEIGHTS_DIR / "context_vit.safetensors", copy)
    assert load_world("context").info(weights=copy)["shipped"] is True


def test_new_files_are_version_2_and_must_carry_their_digest(tmp_path):
    assert WORLD_WEIGHTS_VERSION == 2 and WEIGHTS_VERSION == 2
    config = {"n_classes": 4, "width": 2, "n_blocks": 1}
    record = {"world": "textures", "architecture": "resnet", "config": config, "layer": "layer3"}
    path = tmp_path / "mine.safetensors"
    save_file(path, SmallResNet(**config).state_dict(), record, kind=WORLD_WEIGHTS_KIND,
              version=WORLD_WEIGHTS_VERSION)
    assert peek_kind(path) == ("world_model", 2)
    assert load_world("textures").info(weights=path)["config"] == config
    unsigned = _rewrite(path, tmp_path / "unsigned.safetensors", strip_digest=True)
    with pytest.raises(FormatError, match=r"digest is missing, but every world_model file of "
                                          r"format version 2 is saved with one"):
        load_world("textures").model(weights=unsigned)
    # a user's file of version 1 (conceptkit 0.1.0, no digest) still loads
    old = _rewrite(path, tmp_path / "old.safetensors", strip_digest=True, version=1)
    assert load_world("textures").info(weights=old)["config"] == config
    # the same for the reference CNN's kind
    reference = tmp_path / "reference.safetensors"
    save_file(reference, reference_model().state_dict(), {"architecture": {"n_classes": 6, "width": 16}},
              kind=WEIGHTS_KIND, version=WEIGHTS_VERSION)
    with pytest.raises(FormatError, match="reference_cnn file of format version 2"):
        reference_model(path=_rewrite(reference, tmp_path / "r2.safetensors", strip_digest=True))
    old = _rewrite(reference, tmp_path / "r1.safetensors", strip_digest=True, version=1)
    assert reference_info(old)["architecture"] == {"n_classes": 6, "width": 16}


def test_the_train_commands_write_version_2(tmp_path, monkeypatch):
    def tiny(world, arch=None, **kwargs):  # what train_world_model returns, without training
        config = {"n_classes": 4, "width": 2, "n_blocks": 1}
        return SmallResNet(**config).eval(), {"world": world, "architecture": "resnet",
                                              "config": config, "layer": "layer3",
                                              "train_seconds": 0.0, "test_accuracy": 0.25,
                                              "n_parameters": 0, "reliance": {}}

    monkeypatch.setattr(world_training, "train_world_model", tiny)
    out = tmp_path / "w.safetensors"
    train_world.main(["--world", "textures", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert peek_kind(out) == ("world_model", 2)
    assert load_world("textures").info(weights=out)["config"]["width"] == 2


# 3. the reference CNN's training pins one thread and deterministic algorithms ---------------

def test_train_reference_pins_one_thread_and_deterministic_algorithms(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = tmp_path / "r.safetensors"
        assert train_reference.main(["--out", str(out), "--epochs", "1", "--n-per-class", "2",
                                     "--n-val-per-class", "1", "--n-test-per-class", "1",
                                     "--width", "2", "--no-progress"]) == 0
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)
    assert peek_kind(out) == ("reference_cnn", 2)
    training = reference_info(out)["training"]
    assert training["threads"] == 1 and training["deterministic_algorithms"] is True
    assert reference_info(out)["shipped"] is False
    text = DOCS.read_text()
    assert "threads: 2" in text and "0.9939 against the shipped 0.9933" in text


# 2. each World has its own settings; shipped compares with conceptkit's ----------------------

def test_editing_one_worlds_settings_changes_no_other_world():
    textures = load_world("textures")
    textures.spec().config["width"] = 4
    textures.spec().training["epochs"] = 1
    scales = load_world("scales")
    assert scales.spec().config["width"] == 16 and scales.spec().training["epochs"] == 8
    assert load_world("textures").spec().config["width"] == 16
    assert load_world("context").training_spec("resnet").config["width"] == 16
    assert sum(p.numel() for p in scales.model(pretrained=False).parameters()) == 77940
    # the edited World builds what it says, and it is not the shipped model
    assert textures.training_spec().config["width"] == 4
    assert not textures.shipped(None, epochs=8, n_per_class=500, lr=3e-3, seed=0)
    assert textures.unshipped_settings(None) == ["width=4 (shipped 16)", "epochs=1 (shipped 8)"]
    other = load_world("scales")
    other.spec().training["batch_size"] = 32  # a setting train_world has no flag for
    assert other.unshipped_settings(None) == ["batch_size=32 (shipped 64)"]
    assert load_world("scales").shipped(None)


# 4. docs: parts are placed largest first, whatever their role ---------------------------------

def test_parts_are_placed_largest_first_whatever_their_role(monkeypatch):
    drawn = []
    real = _generate.draw_part

    def record(canvas, part, top, left, side, *args, **kwargs):
        drawn.append((part, side))
        return real(canvas, part, top, left, side, *args, **kwargs)

    monkeypatch.setattr(_generate, "draw_part", record)
    _generate.make_concept_dataset(20, seed=1, split="train")
    causal = set(_generate.PARTS[k] for pair in _generate.CLASS_CONCEPTS for k in pair)
    # some image draws a distractor or the cue before a smaller causal part
    seen_other, found = False, False
    for part, _ in drawn:
        seen_other = seen_other or part not in causal
        found = found or (seen_other and part in causal)
    assert found
    text = " ".join(DOCS.read_text().split())
    assert "happens to the distractors" not in text
    assert "placed largest first, whatever their role" in text


# 5. derived datasets share nothing with their parent ------------------------------------------

def test_subset_and_add_concept_share_nothing_with_their_parent():
    data = load_world("shapes").sample(1, seed=0)
    part = data.subset([0, 1])
    part.class_concepts[0].append(7)
    part.concept_names[0] = "edited"
    part.class_names[0] = "edited"
    part.distractor_concepts.append(0)
    assert data.class_concepts[0] == [0, 1] and data.concept_names[0] == "red disk"
    assert data.class_names[0] != "edited" and 0 not in data.distractor_concepts
    labels = data.labels.clone()
    more = add_concept(data, 6, seed=0)
    more.labels[:] = 0
    more.class_concepts[1].append(9)
    more.concept_names[1] = "edited"
    assert torch.equal(data.labels, labels) and data.class_concepts[1] == [1, 2]
    assert data.concept_names[1] == "blue square"


# 6. every shipped record says shipped ---------------------------------------------------------

@pytest.mark.parametrize("name", ["shapes", "textures", "scales", "context"])
def test_every_shipped_record_says_shipped(name):
    world = load_world(name)
    for arch in world.architectures:
        assert world.info(arch)["shipped"] is True, arch
    assert reference_info()["shipped"] is True
