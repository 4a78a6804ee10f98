"""Fixes of a second review of extraction and model loading: channels-last maps, dict outputs,
train-mode splits, Sequential subclasses, tuple layers, likely layers, reused layers, the CLS
path's argument names and distilled DeiT, and timm's patch-size divisibility error."""

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conceptkit.extraction import (
    CutError,
    ImageSizeError,
    check_split,
    cls_windows,
    extract,
    head_reads_cls,
    split_model,
)
from conceptkit.models import likely_layers

warnings.filterwarnings("ignore", message=".*pretrained.*")


def _tiny_swin():
    torch.manual_seed(0)
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[1, 1],
                                              num_heads=[1, 1], window_size=[2, 2],
                                              num_classes=3).eval()


def _timm(name, **kw):
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


def _capture(model, layer, x):
    out = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return out[0]


# ------------------------------------------------------------------------------ channels-last
def test_swin_channels_last_stage_is_refused_and_permute_is_exact(snapshot):
    model = _tiny_swin()
    x = torch.rand(2, 3, 32, 32)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'features.1' gives channels-last maps .*'permute'"):
        extract(model, "features.1", x, progress=False)
    assert snapshot(model) == before
    # the layer the message names gives the same values as (N, C, H, W) maps
    maps = extract(model, "permute", x, progress=False)
    normed = _capture(model, "norm", x)  # (N, H, W, C)
    assert maps.shape == (2, 24, 4, 4)
    assert torch.allclose(maps, normed.permute(0, 3, 1, 2), atol=1e-6)
    # raw output is still available to those who ask for it as it is
    raw = extract(model, "features.1", x, progress=False, tokens="raw")
    assert raw.shape == (2, 8, 8, 12)


def test_timm_vit_dynamic_size_patch_embed_is_refused_but_blocks_are_read():
    model = _timm("vit_tiny_patch16_224", img_size=32, dynamic_img_size=True, num_classes=3)
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'patch_embed' gives channels-last maps \(N, H, W, C\) "
                                         r"= \(1, 2, 2, 192\)"):
        extract(model, "patch_embed", x, progress=False)
    assert extract(model, "blocks.0", x, progress=False).shape == (1, 192, 2, 2)
    # ordinary NCHW maps of CNNs (ConvNeXt's blocks permute back; ResNet) are never flagged
    convnext = torchvision.models.ConvNeXt(
        [torchvision.models.convnext.CNBlockConfig(8, 16, 1),
         torchvision.models.convnext.CNBlockConfig(16, None, 1)], num_classes=3).eval()
    for layer in ("features.1", "features.3", "features"):
        assert torch.equal(extract(convnext, layer, x, progress=False),
                           _capture(convnext, layer, x))


def test_swin_default_layer_and_likely_layers_are_nchw():
    from conceptkit.models import load

    assert load("torchvision:swin_t", "random").layer == "permute"  # no download
    assert likely_layers(_tiny_swin(), 32) == ["permute"]


# ------------------------------------------------------------------------------ dict outputs
class _DictNet(nn.Module):
    def __init__(self, untraceable=False):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Linear(4, 5)
        self.untraceable = untraceable

    def forward(self, x):
        if self.untraceable and x.sum() > -1e9:  # data-dependent: torch.fx cannot trace it
            y = self.a(x)
        else:
            y = self.a(x)
        return {"logits": self.b(y.mean((2, 3))), "features": y}


class _WrongHead(nn.Module):
    def forward(self, a):
        return {"logits": torch.zeros(a.shape[0], 5), "features": a}


def test_check_split_compares_every_key_of_a_dict_output():
    torch.manual_seed(0)
    model = _DictNet().eval()
    x = torch.rand(2, 3, 16, 16)
    g, h = split_model(model, "a")
    assert check_split(model, g, h, x) < 1e-6
    with pytest.raises(CutError, match=r"at output\['logits'\]"):
        check_split(model, g, _WrongHead(), x)


def test_replay_split_of_an_untraceable_dict_model_is_exact():
    torch.manual_seed(0)
    model = _DictNet(untraceable=True).eval()
    x = torch.rand(2, 3, 16, 16)
    g, h = split_model(model, "a", example_input=x)
    with torch.no_grad():
        got, expected = h(g(x)), model(x)
    assert torch.allclose(got["logits"], expected["logits"], atol=1e-6)
    assert torch.allclose(got["features"], expected["features"])


# ------------------------------------------------------------------------------ training mode
class _DropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.c(x)
        x = F.dropout(x.mean((2, 3)), 0.5, training=self.training)
        return self.fc(x)


def test_split_of_a_train_mode_model_is_the_eval_model():
    torch.manual_seed(0)
    model = _DropNet()  # train mode, as constructed
    x = torch.rand(2, 3, 16, 16)
    g, h = split_model(model, "c")
    assert model.training  # left as found
    model.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(h(g(x)), expected)
        assert torch.equal(h(g(x)), expected)  # deterministic
    model.train()
    split_model(model, "c", example_input=x)  # the check passes in train mode too
    assert model.training


def test_check_split_names_training_mode():
    torch.manual_seed(0)
    model = _DropNet()

    class TrainHead(nn.Module):
        def forward(self, a):
            return model.fc(F.dropout(a.mean((2, 3)), 0.5, training=True))

    with pytest.raises(CutError, match="training mode"):
        check_split(model, model.c, TrainHead(), torch.rand(8, 3, 16, 16))


# ------------------------------------------------------------------------------ Sequential
class _ResSeq(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


def test_sequential_subclass_with_its_own_forward_is_not_cut_as_a_chain():
    torch.manual_seed(0)
    model = nn.Sequential(_ResSeq(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(CutError, match="skip connection"):
        split_model(model, "0.1")
    g, h = split_model(model, "0")  # the whole residual block is a valid cut
    with torch.no_grad():
        assert torch.allclose(h(g(x)), model(x), atol=1e-6)


# ------------------------------------------------------------------------------ tuple layers
class _TupleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return (torch.relu(self.c(x)),)


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blk = _TupleBlock()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.blk(torch.relu(self.stem(x)))[0]
        return self.fc(x.mean((2, 3)))


def test_tuple_layer_errors_say_what_to_do():
    from conceptkit import ConceptExplainer

    torch.manual_seed(0)
    model = _TupleNet().eval()
    x = torch.rand(4, 3, 16, 16)
    g, h = split_model(model, "blk", example_input=x[:2])
    with torch.no_grad():
        assert torch.allclose(h(g(x)), model(x), atol=1e-6)
        with pytest.raises(CutError, match=r"returns a tuple .* h\(g\(x\)\)"):
            h(g(x)[0])
    explainer = ConceptExplainer(model, "blk", n_concepts=2, seed=0, progress=False)
    with pytest.raises(ValueError, match="ConceptExplainer .* submodule of 'blk'"):
        explainer.fit(torch.rand(4, 3, 16, 16), 0)


# ------------------------------------------------------------------------------ likely_layers
def test_likely_layers_keeps_blocks_of_listed_containers_and_half_models():
    import copy

    from conceptkit.datasets import reference_model

    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v3_small(num_classes=3)
    assert likely_layers(mobilenet, 64, n_layers=4) == ["features", "features.11", "features.10",
                                                         "features.9"]
    model = reference_model()
    full = likely_layers(model, 64)
    assert full and likely_layers(copy.deepcopy(model).half(), 64) == full


# ------------------------------------------------------------------------------ reused layers
class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)
        self.d = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.c(F.relu(self.c(x)))
        return self.fc(self.d(x).mean((2, 3)))


def test_extract_refuses_a_layer_called_twice_and_reads_others_as_before(snapshot):
    torch.manual_seed(0)
    model = _Twice().eval()
    x = torch.rand(2, 3, 16, 16)
    before = snapshot(model)
    with pytest.raises(ValueError, match="'c' is called more than once"):
        extract(model, "c", x, progress=False)
    assert snapshot(model) == before
    assert torch.equal(extract(model, "d", x, progress=False), _capture(model, "d", x))


# ------------------------------------------------------------------------------ CLS windows
def test_cls_windows_errors_name_images():
    model = _timm("vit_tiny_patch16_224", img_size=32, num_classes=3)
    with pytest.raises(ValueError, match="`images` of 48x48 pixels"):
        cls_windows(model, "blocks.1", torch.rand(1, 3, 48, 48), progress=False)


def test_head_reads_cls_is_false_for_distilled_deit():
    assert head_reads_cls(_timm("vit_tiny_patch16_224", img_size=32), "blocks.1")
    assert not head_reads_cls(_timm("deit_tiny_distilled_patch16_224", img_size=32), "blocks.1")


def test_patch_size_divisibility_is_an_image_size_error():
    model = _timm("vit_tiny_patch16_224", img_size=32, dynamic_img_size=True, num_classes=3)
    with pytest.raises(ImageSizeError, match=r"`inputs` of 40x40 pixels .* multiples of 16"
                                             r" pixels.*32x32 or 48x48"):
        extract(model, "blocks.0", torch.rand(1, 3, 40, 40), progress=False)
