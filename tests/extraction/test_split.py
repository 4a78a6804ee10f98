"""split_model: h(g(x)) == model(x) for every model family we promise, and clear errors."""

import warnings

import pytest
import torch
import torchvision
from torch import nn

from conceptkit.extraction import CutError, check_split, layer_names, split_model

warnings.filterwarnings("ignore", message=".*pretrained.*")


def _tiny_tv_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=7)


def _open_clip_vit():
    from open_clip.transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=3, heads=2, mlp_ratio=2.0,
                             output_dim=16)


def _open_clip_resnet():
    from open_clip.modified_resnet import ModifiedResNet
    return ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=64, width=16)


def _timm(name, **kw):
    import timm
    return timm.create_model(name, pretrained=False, **kw)


def _reference():
    from conceptkit.datasets import reference_model
    return reference_model()


FAMILIES = {
    "sequential": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)),
                   ["0", "2", "2.0", "4"], 32),
    "tv_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), ["layer4", "layer3.1", "avgpool"], 64),
    "tv_vgg11": (lambda: torchvision.models.vgg11(num_classes=10), ["features.10", "features"], 64),
    "tv_efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), ["features.6", "features.4.1"], 64),
    "tv_vit": (_tiny_tv_vit, ["encoder.layers.encoder_layer_1", "encoder.ln"], 32),
    "timm_resnet18": (lambda: _timm("resnet18", num_classes=10), ["layer4", "layer2.1"], 64),
    "timm_efficientnet_lite0": (lambda: _timm("tf_efficientnet_lite0", num_classes=10), ["blocks.5", "conv_head"], 64),
    "timm_vit": (lambda: _timm("vit_tiny_patch16_224", img_size=32, num_classes=10), ["blocks.6", "norm"], 32),
    "open_clip_vit": (_open_clip_vit, ["transformer.resblocks.1", "ln_post"], 32),
    "open_clip_modified_resnet": (_open_clip_resnet, ["layer4", "layer3"], 64),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_split_is_exact(family, snapshot):
    build, layers, size = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(3, 3, size, size)
    before = snapshot(model)
    for layer in layers:
        g, h = split_model(model, layer)
        with torch.no_grad():
            expected = model(x)
            got = h(g(x))
        assert torch.allclose(expected, got, atol=1e-5, rtol=1e-5), (family, layer)
        # g really stops at the layer: its output is the layer's output
        captured: list = []
        handle = dict(model.named_modules())[layer].register_forward_hook(
            lambda m, i, o, store=captured: store.append(o))
        with torch.no_grad():
            model(x)
        handle.remove()
        with torch.no_grad():
            assert torch.allclose(captured[0], g(x), atol=1e-6)
    assert snapshot(model) == before


def test_split_reference_cnn():
    pytest.importorskip("conceptkit.datasets")
    model = _reference()
    x = torch.rand(4, 3, 64, 64)
    for layer in [n for n in layer_names(model) if "." not in n]:
        g, h = split_model(model, layer)
        assert check_split(model, g, h, x) <= 1e-5


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so split_model must replay."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        if x.mean() > -1e9:  # always true, but a tensor-valued condition
            x = torch.relu(self.a(x))
        x = self.b(x)
        return self.head(x.mean((2, 3)))


class _UntraceableSkip(_Untraceable):
    def forward(self, x):
        if x.mean() > -1e9:
            y = torch.relu(self.a(x))
        z = self.b(y)
        return self.head(z.mean((2, 3))) + x.mean()  # the input crosses the cut


def test_generic_fallback_is_exact():
    torch.manual_seed(0)
    model = _Untraceable().eval()
    x = torch.randn(2, 3, 16, 16)
    g, h = split_model(model, "a", example_input=x)
    assert type(g).__name__ == "ReplayG"
    with torch.no_grad():
        assert torch.allclose(h(g(x)), model(x), atol=1e-6)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_generic_fallback_detects_crossing_path():
    model = _UntraceableSkip().eval()
    with pytest.raises(CutError, match="not a valid cut"):
        split_model(model, "a", example_input=torch.randn(2, 3, 16, 16))


def test_skip_connection_crossing_is_refused():
    model = torchvision.models.resnet18()
    with pytest.raises(CutError, match="skip connection"):
        split_model(model, "layer1.0.conv1")


def test_layer_used_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x)).mean((2, 3))

    with pytest.raises(CutError, match="called 2 times"):
        split_model(Twice(), "conv")


def test_unknown_layer_lists_close_names():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="layer4") as info:
        split_model(model, "layer5")
    assert "`layer`" in str(info.value)


def test_split_restores_flags_when_check_fails(snapshot):
    model = torchvision.models.resnet18().train()
    before = snapshot(model)
    with pytest.raises(TypeError, match="example_input"):
        split_model(model, "layer4", example_input="not a tensor")
    assert snapshot(model) == before
