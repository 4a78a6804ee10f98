"""Fixes of a fourth review of transformer tokens: the CLS path on a ViT with register tokens
but no class token, the token grid at a layer run before the prefix tokens are added, ViTs built
for non-square images, and the refusal of layers whose activations never reach the output (a
model whose output ignores its input, the last-block reason only where it applies, the nearest
layer that works found in the order the modules run, the CLS path checked like the patch path)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from conceptkit import ConceptExplainer
from conceptkit.extraction import ActivationExtractor, cls_windows, extract, split_model
from conceptkit.extraction._extractor import TokenHead, infer_prefix_tokens
from conceptkit.extraction._sizes import ImageSizeError
from conceptkit.pipeline._handle import ModelAtLayer

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

warnings.filterwarnings("ignore", message=".*pretrained.*")


def small_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, num_classes=5)
    args.update(kw)
    return VisionTransformer(**args).eval()


def tv_vit(head_std=None):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                              hidden_dim=64, mlp_dim=128, num_classes=5).eval()
    if head_std is not None:  # torchvision starts its head at zero: give it weights
        nn.init.normal_(model.heads.head.weight, std=head_std)
    return model


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _raw(model, layer, x):
    return extract(model, layer, x, tokens="raw", progress=False)


# ------------------------------------------------------------------ 1. no class token
def test_the_cls_path_refuses_a_vit_whose_prefix_tokens_are_register_tokens_only(images):
    model = small_vit(global_pool="avg", class_token=False, reg_tokens=4)
    assert model.cls_token is None and model.num_prefix_tokens == 4
    with pytest.raises(ValueError, match=r"'blocks\.1' gives no CLS token.*4 prefix tokens are "
                                         r"register tokens.*tokens='patches'"):
        cls_windows(model, "blocks.1", images[:1], progress=False)
    with pytest.raises(ValueError, match=r"`tokens`='cls'.*no CLS token"):
        ConceptExplainer(model, "blocks.1", n_concepts=3, tokens="cls", progress=False)
    # 'auto' reads the patch tokens there (the head averages them)
    explainer = ConceptExplainer(model, "blocks.1", n_concepts=3, progress=False)
    assert explainer.reads(images) == "patches"
    # with a class token in front of the registers, each cell is that CLS token (prefix 0), the
    # one the head reads: a window covering the image gives the image's own CLS token
    with_cls = small_vit(reg_tokens=4)
    whole = cls_windows(with_cls, "blocks.1", images[:1], window=64, progress=False)
    raw = _raw(with_cls, "blocks.1", images[:1])
    torch.testing.assert_close(whole[0, :, 2, 1], raw[0, 0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(raw[0, 0], raw[0, 1], atol=1e-3)  # not a register token


# ------------------------------------------------------------------ 2. grid before the prefix
def test_patch_embed_of_a_register_vit_on_a_3x3_grid_keeps_its_nine_patch_tokens():
    model = small_vit(img_size=24, reg_tokens=4)  # 1 CLS + 4 registers; 9 - 5 = 4 is square
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    raw = _raw(model, "patch_embed", x)
    assert raw.shape == (2, 9, 64)
    extractor = ActivationExtractor(model, "patch_embed", progress=False)
    maps = extractor(x)
    assert maps.shape == (2, 64, 3, 3) and extractor.prefix_.shape[1] == 0
    torch.testing.assert_close(maps, raw.transpose(1, 2).reshape(2, 64, 3, 3))
    # after the prefix tokens are added, the 5 of them are dropped from the same 3 x 3 grid
    block = ActivationExtractor(model, "blocks.0", progress=False)
    block_maps = block(x)
    block_raw = _raw(model, "blocks.0", x)
    assert block.prefix_.shape[1] == 5
    torch.testing.assert_close(block_maps, block_raw[:, 5:].transpose(1, 2).reshape(2, 64, 3, 3))
    assert infer_prefix_tokens(model, 9) == 0 and infer_prefix_tokens(model, 14) == 5


# ------------------------------------------------------------------ 3. non-square ViT
def test_a_vit_built_for_non_square_images_is_laid_out_on_its_own_grid():
    model = small_vit(img_size=(32, 48))
    assert tuple(model.patch_embed.grid_size) == (4, 6)
    x = torch.rand(4, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    extractor = ActivationExtractor(model, "blocks.1", progress=False)
    maps = extractor(x)
    raw = _raw(model, "blocks.1", x)
    assert maps.shape == (4, 64, 4, 6)
    for i, j in [(0, 0), (1, 5), (3, 2)]:  # row-major on the 4 x 6 grid, after the CLS token
        torch.testing.assert_close(maps[:, :, i, j], raw[:, 1 + i * 6 + j])
    _, h = split_model(model, "blocks.1", example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(TokenHead(h)(maps, extractor.prefix_), model(x),
                                   rtol=1e-4, atol=1e-5)
    result = ConceptExplainer(model, "blocks.1", n_concepts=3, tokens="patches", seed=0,
                              progress=False).fit(x, 1)
    assert result.activations.shape == (4, 64, 4, 6)
    assert result.concept_maps().shape == (4, 3, 32, 48)
    # square images do not fit this model: the error names the size it takes, not a square
    with pytest.raises(ImageSizeError, match=r"takes images of 32x48 pixels \(height x width\) "
                                             r"only.*resize the images to 32x48 pixels, not to "
                                             r"a square"):
        ConceptExplainer(model, "blocks.1", n_concepts=3, progress=False).fit(x[..., :32], 1)


# ------------------------------------------------------------------ 4. reaching the output
def test_a_model_whose_output_ignores_its_input_is_refused_as_such(images):
    model = tv_vit()  # weights=None: an all-zero head, the same logits for every image
    assert torch.equal(model(images), model(images[:1]).expand(6, -1))
    with pytest.raises(ValueError, match="does not depend on its input") as err:
        ConceptExplainer(model, "encoder.layers.encoder_layer_0", n_concepts=3, method="craft",
                         progress=False).fit(images, 1)
    assert "last block" not in str(err.value) and "tokens='cls'" not in str(err.value)
    # the CLS path (the default at its last block) is checked like the patch path: no
    # explanation whose every importance is 0
    explainer = ConceptExplainer(model, "encoder.layers.encoder_layer_2", n_concepts=3, seed=0,
                                 progress=False)
    assert explainer.reads(images) == "cls"
    with pytest.raises(ValueError, match="does not depend on its input"):
        explainer.fit(images, 1)


def _reaches(model, layer, x):
    handle = ModelAtLayer(model, layer, progress=False)
    acts, context = handle.activations(x, with_context=True)
    return handle.reaches_output(acts, context)


@pytest.mark.parametrize("make, layer, nearest", [
    (small_vit, "norm", "blocks.1"),
    (lambda: tv_vit(head_std=0.5), "encoder.ln", "encoder.layers.encoder_layer_1"),
])
def test_the_nearest_layer_that_works_is_found_in_the_order_the_modules_run(images, make, layer,
                                                                           nearest):
    model = make()
    with pytest.raises(ValueError, match=rf"CLS-pooled.*pass layer='{nearest}'"):
        ConceptExplainer(model, layer, n_concepts=3, method="craft", progress=False).fit(images, 1)
    # what it names is right: that layer's patch tokens reach the output, the later block's not
    assert _reaches(model, nearest, images[:4])
    last = "blocks.2" if layer == "norm" else "encoder.layers.encoder_layer_2"
    assert not _reaches(model, last, images[:4])


def test_the_cls_path_refuses_a_cls_token_the_head_never_reads(images):
    """An average-pooled ViT with a class token: the head averages the patch tokens, so the CLS
    token of its last block never reaches the output; concepts read from it are refused as
    patch tokens that never reach it are, and the patch tokens there are explained."""
    model = small_vit(global_pool="avg")
    assert model.cls_token is not None
    with pytest.raises(ValueError, match=r"'blocks\.2': the CLS token it gives does not reach.*"
                                         r"layer='blocks\.1'.*tokens='patches'"):
        ConceptExplainer(model, "blocks.2", n_concepts=3, tokens="cls", seed=0,
                         progress=False).fit(images, 1)
    # so it is: replacing that CLS token leaves the logits as they are, the patch tokens not
    raw = _raw(model, "blocks.2", images[:4])
    _, h = split_model(model, "blocks.2")
    with torch.no_grad():
        base = h(raw)
        assert torch.equal(h(torch.cat([torch.zeros_like(raw[:, :1]), raw[:, 1:]], 1)), base)
        assert not torch.equal(h(torch.cat([raw[:, :1], raw[:, 1:].flip(0)], 1)), base)
    result = ConceptExplainer(model, "blocks.2", n_concepts=3, seed=0, progress=False).fit(images, 1)
    assert result.params["tokens"] == "patches"
    # where the head does read the CLS token, the last-block reason and the CLS path are named
    with pytest.raises(ValueError, match=r"CLS-pooled transformer at its last block.*"
                                         r"tokens='cls'"):
        ConceptExplainer(small_vit(), "blocks.2", n_concepts=3, method="craft",
                         progress=False).fit(images, 1)
