"""ActivationExtractor and the crop / position / segment decompositions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conceptkit.extraction import (
    ActivationExtractor,
    crops,
    extract,
    positions,
    segments,
    split_model,
)
from conceptkit.extraction._extractor import maps_to_tokens, tokens_to_maps


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def test_extractor_matches_g_for_tensor_dataset_and_loader(snapshot):
    model = _cnn().train()  # a model in train mode must come back in train mode
    x = torch.rand(10, 3, 16, 16)
    g, _ = split_model(model, "4")
    with torch.no_grad():
        model.eval()
        expected = g(x)
        model.train()
    before = snapshot(model)
    extractor = ActivationExtractor(model, "4", batch_size=3, progress=False)
    for inputs in (x, TensorDataset(x, torch.zeros(10)), DataLoader(TensorDataset(x), batch_size=4)):
        got = extractor(inputs)
        assert got.shape == (10, 16, 8, 8)
        assert torch.allclose(got, expected, atol=1e-6)
        assert not got.requires_grad
    assert snapshot(model) == before


def test_extractor_restores_model_when_forward_raises(snapshot):
    model = _cnn().train()
    model[1].weight.requires_grad_(False)
    before = snapshot(model)

    class Boom(Exception):
        pass

    def explode(*_):
        raise Boom

    handle = model[0].register_forward_pre_hook(explode)
    before["hooks"] += 0  # the user's own hook counts as part of the model as found
    before = snapshot(model)
    with pytest.raises(Boom):
        ActivationExtractor(model, "4", progress=False)(torch.rand(2, 3, 16, 16))
    assert snapshot(model) == before
    handle.remove()


def test_vit_tokens_come_back_as_maps_without_cls():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    maps = ActivationExtractor(model, "blocks.2", progress=False)(x)
    assert maps.shape == (2, 192, 2, 2)
    raw = ActivationExtractor(model, "blocks.2", progress=False, tokens="raw")(x)
    assert raw.shape == (2, 5, 192)
    assert torch.allclose(tokens_to_maps(raw, 1), maps)
    assert torch.allclose(maps_to_tokens(maps, raw[:, :1]), raw)


def test_register_tokens_are_removed():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, reg_tokens=4, num_classes=3).eval()
    maps = ActivationExtractor(model, "blocks.0", progress=False)(torch.rand(1, 3, 32, 32))
    assert maps.shape == (1, 192, 2, 2)


class _TupleLayer(nn.Module):
    def forward(self, x):
        return x, x * 2


def test_tuple_output_needs_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _TupleLayer())
    with pytest.raises(ValueError, match="take `output` to say which element"):
        ActivationExtractor(model, "1", progress=False)(torch.rand(1, 3, 4, 4))
    out = ActivationExtractor(model, "1", progress=False, output=1)(torch.rand(1, 3, 4, 4))
    assert out.shape == (1, 4, 4, 4)


def test_output_index_is_the_deprecated_name_of_output():
    # every other entry point says output=; ActivationExtractor said output_index=
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _TupleLayer())
    images = torch.rand(1, 3, 4, 4)
    new = ActivationExtractor(model, "1", progress=False, output=1)
    with pytest.warns(DeprecationWarning, match=r"`output_index` of ActivationExtractor\(\) is "
                                                r"deprecated .* use `output`"):
        old = ActivationExtractor(model, "1", progress=False, output_index=1)
    assert old.output == new.output == 1 and old.output_index == 1
    torch.testing.assert_close(old(images), new(images))
    with pytest.warns(DeprecationWarning, match="output_index"):
        out = extract(model, "1", images, progress=False, output_index=0)
    torch.testing.assert_close(out, extract(model, "1", images, progress=False, output=0))
    with pytest.raises(TypeError, match="pass only `output`"):
        ActivationExtractor(model, "1", output=0, output_index=0)
    # store fingerprints read the setting under its old name: digests of stores stay the same
    from conceptkit.extraction._fingerprint import extractor_identity

    assert extractor_identity(old) == extractor_identity(new)
    assert extractor_identity(old) != extractor_identity(
        ActivationExtractor(model, "1", progress=False, output=0))


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 16, 16), "4 dimensions"),
    (torch.rand(2, 1, 16, 16), "3 channels"),
    (torch.rand(0, 3, 16, 16), "empty"),
    (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    (torch.randint(0, 255, (1, 3, 16, 16)), "floating point"),
])
def test_extractor_bad_input(bad, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        ActivationExtractor(_cnn(), "4", progress=False)(bad)
    assert "`inputs`" in str(info.value)


def test_unknown_layer_names_close_candidates():
    with pytest.raises(ValueError, match=r"Close names: \['4'") as info:
        ActivationExtractor(_cnn(), "44")
    assert "`layer`" in str(info.value)


def test_crops_match_craft_unfold_and_resize():
    x = torch.rand(3, 3, 224, 224)
    cs = crops(x, 64)
    assert cs.stride == 51 and len(cs) == 3 * 16
    # the reference: unfold with kernel p and stride int(0.8 p), bilinear resize back to 224
    ref = F.unfold(x, kernel_size=64, stride=51)
    ref = ref.transpose(1, 2).reshape(-1, 3, 64, 64)
    ref = F.interpolate(ref, size=224, mode="bilinear", align_corners=False)
    assert torch.allclose(cs.images, ref, atol=1e-6)
    assert np.array_equal(cs.provenance.image_ids, np.repeat(np.arange(3), 16))
    assert cs.provenance.boxes[5].tolist() == [51, 51, 115, 115]
    mask = cs.provenance.masks([5])[0]
    assert mask.sum() == 64 * 64 and mask[51, 51] and not mask[50, 51]


def test_crops_non_square_and_errors():
    cs = crops(torch.rand(2, 3, 40, 64), 20, stride=10, image_size=32)
    assert cs.images.shape == (2 * 3 * 5, 3, 32, 32)
    with pytest.raises(ValueError, match="patch_size"):
        crops(torch.rand(1, 3, 32, 32), 40)


def test_positions_rows_and_provenance():
    a = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    ps = positions(a, image_size=(40, 50))
    assert ps.rows.shape == (40, 3)
    row = 1 * 20 + 2 * 5 + 3  # image 1, y=2, x=3
    assert torch.equal(ps.rows[row], a[1, :, 2, 3])
    assert ps.provenance.cells[row].tolist() == [2, 3]
    assert ps.provenance.boxes[row].tolist() == [20, 30, 30, 40]
    with pytest.raises(ValueError, match="activations"):
        positions(torch.rand(3, 4))


def test_segments_find_an_object_and_fill_grey():
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 14 ** 2
    img = np.zeros((1, 3, 64, 64), dtype=np.float32)
    img[0, 1] = 0.9  # green background
    img[0, 0][disc], img[0, 1][disc] = 1.0, 0.0  # red disc
    ss = segments(torch.from_numpy(img), n_segments=(2, 15, 30), progress=False)
    masks = ss.provenance.masks()
    jaccard = [np.logical_and(m, disc).sum() / np.logical_or(m, disc).sum() for m in masks]
    best = int(np.argmax(jaccard))
    assert jaccard[best] > 0.85
    # no kept pair is a near-duplicate (ACE's Jaccard <= 0.5 rule)
    for i in range(len(masks)):
        for j in range(i):
            inter = np.logical_and(masks[i], masks[j]).sum()
            assert inter / np.logical_or(masks[i], masks[j]).sum() <= 0.5
    patch = ss.batch(np.array([best]))[0]
    assert patch.shape == (3, 64, 64)
    # the disc's bounding box corners lie outside the disc: ACE grey; the centre is red
    assert torch.allclose(patch[:, 0, 0], torch.full((3,), 117 / 255), atol=1e-4)
    assert torch.allclose(patch[:, 32, 32], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)
    assert np.abs(ss.provenance.boxes[best] - np.array([19, 19, 46, 46])).max() <= 2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        segments(torch.rand(1, 3, 32, 32) * 3, progress=False)
