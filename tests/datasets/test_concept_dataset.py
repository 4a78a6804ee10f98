"""The ground-truth concept dataset and the reference CNN shipped with it."""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from conceptkit.datasets import (
    CLASS_NAMES,
    CONCEPT_NAMES,
    ConceptDataset,
    ReferenceCNN,
    add_concept,
    evaluate_accuracy,
    make_concept_dataset,
    reference_accuracy,
    reference_info,
    reference_model,
    spurious_cue_effect,
    train_reference_cnn,
)
from conceptkit.datasets import _generate as gen
from conceptkit.datasets._parts import PARTS
from conceptkit.datasets._reference import WEIGHTS_PATH, _read_weights
from conceptkit.datasets.train_reference import main as train_main


@pytest.fixture(scope="module")
def train_set() -> ConceptDataset:
    return make_concept_dataset(200, seed=0, split="train")


@pytest.fixture(scope="module")
def heldout_set() -> ConceptDataset:
    return make_concept_dataset(200, seed=0, split="test")


@pytest.fixture(scope="module")
def model() -> ReferenceCNN:
    return reference_model()


# ---------------------------------------------------------------- layout, dtypes, determinism

def test_shapes_dtypes_and_ranges(train_set):
    n = 6 * 200
    assert train_set.images.shape == (n, 3, 64, 64) and train_set.images.dtype == torch.float32
    assert train_set.labels.shape == (n,) and train_set.labels.dtype == torch.int64
    assert train_set.concepts.shape == (n, 10) and train_set.concepts.dtype == torch.float32
    assert train_set.masks.shape == (n, 10, 64, 64) and train_set.masks.dtype == torch.bool
    assert 0.0 <= float(train_set.images.min()) and float(train_set.images.max()) <= 1.0
    assert set(train_set.concepts.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(train_set.labels.bincount(), torch.full((6,), 200))
    assert train_set.concept_names == list(CONCEPT_NAMES) and len(CONCEPT_NAMES) >= 10
    assert train_set.class_names == list(CLASS_NAMES) and len(CLASS_NAMES) >= 6
    assert len(train_set.distractor_concepts) >= 2
    assert (train_set.split, train_set.seed, train_set.spurious) == ("train", 0, True)


def test_same_seed_gives_identical_tensors_and_other_seeds_differ():
    a = make_concept_dataset(5, seed=3, split="val")
    b = make_concept_dataset(5, seed=3, split="val")
    for name in ("images", "labels", "concepts", "masks"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = make_concept_dataset(5, seed=4, split="val")
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.masks, c.masks)


def test_splits_never_share_an_image(train_set, heldout_set):
    val = make_concept_dataset(200, seed=0, split="val")
    sets = [{d.images[i].numpy().tobytes() for i in range(len(d))} for d in (train_set, val, heldout_set)]
    assert all(len(s) == 6 * 200 for s in sets)  # no duplicates inside a split either
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]


@pytest.mark.parametrize("image_size", [32, 96])
def test_other_image_sizes_keep_masks_consistent(image_size):
    ds = make_concept_dataset(4, image_size=image_size, seed=1)
    assert ds.images.shape[-2:] == (image_size, image_size)
    assert torch.equal(ds.masks.any(dim=(2, 3)), ds.concepts.bool())


# ---------------------------------------------------------------- the ground truth itself

def test_mask_nonempty_iff_concept_present_and_masks_disjoint(train_set):
    assert torch.equal(train_set.masks.any(dim=(2, 3)), train_set.concepts.bool())
    assert int(train_set.masks.sum(1).max()) == 1  # no pixel belongs to two parts
    areas = train_set.masks.sum(dim=(2, 3))[train_set.concepts.bool()]
    assert int(areas.min()) >= 20  # every drawn part is large enough to be seen


def test_mask_pixels_show_the_part_colour(train_set):
    # The mean colour under each plain-coloured part's mask is the part's colour (up to the
    # +-0.06 jitter and the noise), so masks sit exactly on the drawn pixels.
    images = train_set.images.permute(0, 2, 3, 1)
    for k, part in enumerate(PARTS):
        if part.shape in ("stripes", "checkerboard"):
            continue
        rows = train_set.concepts[:, k].bool().nonzero().flatten()[:30]
        for i in rows:
            mean = images[i][train_set.masks[i, k]].mean(0)
            assert torch.allclose(mean, torch.tensor(part.colour), atol=0.08), (part.name, int(i))


def test_textures_alternate_dark_and_light(train_set):
    images = train_set.images.mean(1)
    for k, part in enumerate(PARTS):
        if part.shape not in ("stripes", "checkerboard"):
            continue
        i = int(train_set.concepts[:, k].bool().nonzero()[0])
        values = images[i][train_set.masks[i, k]]
        assert 0.2 < float((values > 0.5).float().mean()) < 0.8


def test_every_image_follows_its_class_definition(train_set, heldout_set):
    for ds in (train_set, heldout_set):
        present = ds.concepts.bool()
        causal = sorted({k for pair in ds.class_concepts for k in pair})
        for i in range(len(ds)):
            label = int(ds.labels[i])
            own = set(ds.class_concepts[label])
            assert all(present[i, k] for k in own)
            # No other class's causal pair is complete, so the label is unambiguous.
            for c, pair in enumerate(ds.class_concepts):
                if c != label:
                    assert not all(present[i, k] for k in pair)
            extras = [k for k in causal if present[i, k] and k not in own]
            assert len(extras) <= 1
            assert not extras or extras[0] in gen.ALLOWED_EXTRAS[label]


def test_allowed_extras_follow_the_cycle():
    # Class c = {c, c+1}: the extra may not be c-1 or c+2 (that would complete a neighbour's pair).
    for c in range(6):
        assert sorted(gen.ALLOWED_EXTRAS[c]) == sorted([(c + 3) % 6, (c + 4) % 6])


def test_no_single_concept_decides_a_class(train_set):
    for k in sorted({k for pair in train_set.class_concepts for k in pair}):
        assert sum(k in pair for pair in train_set.class_concepts) == 2


def test_distractor_extra_and_spurious_rates(train_set, heldout_set):
    for ds in (train_set, heldout_set):
        rates = ds.concept_rates()
        for k in ds.distractor_concepts:
            assert abs(float(ds.concepts[:, k].mean()) - gen.DISTRACTOR_RATE) < 0.05
            assert float((rates[:, k] - gen.DISTRACTOR_RATE).abs().max()) < 0.12
        causal = torch.tensor(sorted({k for pair in ds.class_concepts for k in pair}))
        extra_rate = float((ds.concepts[:, causal].sum(1) > 2).float().mean())
        assert abs(extra_rate - gen.EXTRA_RATE) < 0.04
    cue, cls = train_set.spurious_concept, train_set.spurious_class
    train_rates = train_set.concept_rates()[:, cue]
    others = [c for c in range(6) if c != cls]
    assert abs(float(train_rates[cls]) - 0.9) < 0.07
    assert abs(float(train_rates[others].mean()) - 0.05) < 0.03
    test_rates = heldout_set.concept_rates()[:, cue]
    assert not heldout_set.spurious
    assert float((test_rates - 0.05).abs().max()) < 0.06


def test_spurious_flag_defaults_and_override():
    assert make_concept_dataset(1, split="val").spurious
    assert not make_concept_dataset(1, split="test").spurious
    correlated = make_concept_dataset(60, split="test", spurious=True)
    assert float(correlated.concept_rates()[correlated.spurious_class, correlated.spurious_concept]) > 0.75
    assert not make_concept_dataset(1, split="train", spurious=False).spurious


# ---------------------------------------------------------------- container behaviour

def test_dataset_protocol_subset_and_class_indices(train_set):
    image, label = train_set[7]
    assert torch.equal(image, train_set.images[7]) and int(label) == int(train_set.labels[7])
    assert len(train_set) == 1200
    loader = torch.utils.data.DataLoader(train_set, batch_size=50)
    images, labels = next(iter(loader))
    assert images.shape == (50, 3, 64, 64) and torch.equal(labels, train_set.labels[:50])
    idx = train_set.class_indices(3)
    assert len(idx) == 200 and bool((train_set.labels[idx] == 3).all())
    sub = train_set.subset(idx[:10])
    assert len(sub) == 10 and torch.equal(sub.masks, train_set.masks[idx[:10]])
    assert sub.class_concepts == train_set.class_concepts and sub.split == "train"
    assert len(train_set.subset(train_set.labels == 0)) == 200
    assert torch.equal(train_set.subset(slice(0, 4)).images, train_set.images[:4])
    with pytest.raises(dataclasses.FrozenInstanceError):
        train_set.seed = 3
    with pytest.raises(ValueError, match="class_id"):
        train_set.class_indices(6)
    with pytest.raises(ValueError, match="indices"):
        train_set.subset([0, 5000])
    with pytest.raises(TypeError, match="indices"):
        train_set.subset([0.5])


def test_summary_reports_classes_and_measured_rates(train_set):
    text = train_set.summary()
    for name in CLASS_NAMES:
        assert name in text
    cue_rate = float(train_set.concept_rates()[0, train_set.spurious_concept])
    assert f"{cue_rate:.2f} of class 0" in text
    assert "magenta square" in text and "n=200" in text


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"n_per_class": 0}, ValueError, "n_per_class"),
        ({"n_per_class": 2.5}, TypeError, "n_per_class"),
        ({"n_per_class": 2, "image_size": 16}, ValueError, "image_size"),
        ({"n_per_class": 2, "split": "tset"}, ValueError, "split.*'test'"),
        ({"n_per_class": 2, "seed": -1}, ValueError, "seed"),
        ({"n_per_class": 2, "spurious": "yes"}, TypeError, "spurious"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        make_concept_dataset(**kwargs)


def test_add_concept_draws_only_the_new_part(heldout_set):
    ds = heldout_set.subset(range(0, 1200, 20))
    cue = ds.spurious_concept
    out = add_concept(ds, cue, seed=1)
    assert bool(out.concepts[:, cue].all())
    assert torch.equal(out.masks.any(dim=(2, 3)), out.concepts.bool())
    assert int(out.masks.sum(1).max()) == 1
    # Pixels outside the new masks are untouched; the other concepts are unchanged.
    new = (out.masks[:, cue] & ~ds.masks[:, cue])[:, None].expand(-1, 3, -1, -1)
    assert torch.equal(out.images[~new], ds.images[~new])
    keep = [k for k in range(10) if k != cue]
    assert torch.equal(out.concepts[:, keep], ds.concepts[:, keep])
    assert torch.equal(add_concept(ds, cue, seed=1).images, out.images)
    with pytest.raises(ValueError, match="causal"):
        add_concept(ds, 0)
    with pytest.raises(TypeError, match="dataset"):
        add_concept(ds.images, cue)


# ---------------------------------------------------------------- the reference CNN

def test_reference_cnn_is_a_pure_chain_of_children():
    net = ReferenceCNN(width=4).eval()
    names = [name for name, _ in net.named_children()]
    assert names == ["block1", "block2", "block3", "block4", "pool", "flatten", "fc"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        h = x
        for child in net.children():
            h = child(h)
        assert torch.allclose(h, net(x))
    with torch.no_grad():
        features = net.block4(net.block3(net.block2(net.block1(x))))
    assert features.shape == (2, 16, 8, 8) and float(features.min()) >= 0.0
    assert isinstance(net.block4[-1], torch.nn.ReLU)


def test_shipped_weights_small_safetensors_and_never_unpickled(monkeypatch):
    path = WEIGHTS_PATH
    assert path.stat().st_size < 5 * 1024 * 1024
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    assert "__metadata__" in header and "fc.weight" in header

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    _read_weights.cache_clear()
    net = reference_model()
    assert not net.training and not any(m.training for m in net.modules())


def test_reference_model_reaches_95_percent_on_fresh_spurious_free_data(model):
    fresh = make_concept_dataset(100, seed=7, split="test", spurious=False)
    accuracy = evaluate_accuracy(model, fresh)
    assert accuracy >= 0.95
    assert reference_accuracy() >= 0.95
    info = reference_info()
    assert info["architecture"] == {"n_classes": 6, "width": model.width}
    assert info["dataset"]["class_names"] == list(CLASS_NAMES)
    assert info["test_accuracy_with_spurious"] >= 0.95


def test_reference_model_uses_the_spurious_cue_more_than_a_distractor(model):
    fresh = make_concept_dataset(50, seed=11, split="test", spurious=False)
    cue = spurious_cue_effect(model, fresh, seed=0)
    control = spurious_cue_effect(model, fresh, seed=0, concept=fresh.distractor_concepts[1])
    assert cue["n_images"] >= 0.9 * len(fresh)
    assert cue["spurious_margin_shift"] > 0.5
    assert cue["spurious_margin_shift"] > 4 * abs(control["spurious_margin_shift"])
    assert cue["spurious_probability_shift"] > control["spurious_probability_shift"]


def test_untrained_reference_model_and_bad_arguments(tmp_path):
    net = reference_model(pretrained=False)
    assert isinstance(net, ReferenceCNN) and not net.training
    with pytest.raises(TypeError, match="pretrained"):
        reference_model(pretrained="yes")
    with pytest.raises(FileNotFoundError, match="not found"):
        reference_model(path=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="width"):
        ReferenceCNN(width=0)


def test_training_is_deterministic_and_leaves_global_rng_alone():
    settings = dict(epochs=1, n_per_class=8, n_val_per_class=2, n_test_per_class=2, width=4,
                    batch_size=16, progress=False)
    state = torch.get_rng_state()
    first, info = train_reference_cnn(**settings)
    assert torch.equal(torch.get_rng_state(), state)
    second, _ = train_reference_cnn(**settings)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert 0.0 <= info["test_accuracy"] <= 1.0 and 0.0 <= info["test_accuracy_with_spurious"] <= 1.0
    assert len(info["history"]) == 1 and np.isfinite(info["history"][0]["train_loss"])
    with pytest.raises(ValueError, match="epochs"):
        train_reference_cnn(epochs=0)


def test_training_script_writes_loadable_weights(tmp_path, capsys):
    out = tmp_path / "cnn.safetensors"
    assert train_main(["--out", str(out), "--epochs", "1", "--n-per-class", "8",
                       "--n-val-per-class", "2", "--n-test-per-class", "2", "--width", "4",
                       "--no-progress"]) == 0
    net = reference_model(path=out)
    assert net.width == 4 and "held-out accuracy" in capsys.readouterr().out
    assert reference_info(out)["training"]["epochs"] == 1


def test_the_summary_prints_each_concept_kind_whole():
    """Kinds were cut to five letters ("causa", "distr", "spuri"; found by the CLI review)."""
    text = make_concept_dataset(2, seed=0).summary()
    for kind in ("causal", "distractor", "spurious"):
        assert f" {kind} " in text
    assert "distr " not in text and "causa " not in text
