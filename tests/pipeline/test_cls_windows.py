"""Concepts through the CLS token (``ConceptExplainer(tokens="cls")``,
``conceptkit.extraction.cls_windows``).

Each position of the CLS feature map is the CLS token the layer gives for the image painted with
its median colour outside a window around that patch cell: checked against that image run by
hand. The path explains the last block of a CLS-pooled transformer (whose patch tokens never
reach the output) with a non-empty explanation, survives save / load / attach, and refuses the
settings it cannot honour with errors naming the fix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conceptkit import ConceptExplainer, load
from conceptkit.extraction import cls_windows
from conceptkit.extraction._windows import window_boxes

timm = pytest.importorskip("timm")


def tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                             num_classes=3, global_pool="token").eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _cls_by_hand(model, layer_index, image, box):
    y0, x0, y1, x1 = box
    fill = image.flatten(1).median(-1).values[:, None, None]
    painted = fill.expand_as(image).clone()
    painted[:, y0:y1, x0:x1] = image[:, y0:y1, x0:x1]
    seen = {}
    hook = model.blocks[layer_index].register_forward_hook(lambda m, i, o: seen.update(x=o))
    try:
        with torch.no_grad():
            model(painted[None])
    finally:
        hook.remove()
    return seen["x"][0, 0]


def test_each_position_is_the_cls_token_of_its_window_shown_alone(images):
    model = tiny_vit().train()
    flags = [p.requires_grad for p in model.parameters()]
    maps = cls_windows(model, "blocks.1", images[:2], window=12, progress=False)
    assert maps.shape == (2, 32, 4, 4)  # (N, C, the 4x4 patch grid)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    boxes = window_boxes((32, 32), (4, 4), 12)
    # cell (0, 0) is centred at (4, 4): its 12 px window is clipped to [0, 10); cell (2, 1) at
    # (20, 12): [14, 26) x [6, 18)
    assert boxes[0].tolist() == [0, 0, 10, 10] and boxes[9].tolist() == [14, 6, 26, 18]
    model.eval()
    for n, (i, j) in [(0, (0, 0)), (1, (2, 1)), (1, (3, 3))]:
        expected = _cls_by_hand(model, 1, images[n], boxes[i * 4 + j].tolist())
        torch.testing.assert_close(maps[n, :, i, j], expected, rtol=1e-4, atol=1e-5)
    # a window covering the image gives the CLS token of the image itself, at every cell
    whole = cls_windows(model, "blocks.1", images[:1], window=64, progress=False)
    torch.testing.assert_close(whole[0, :, 1, 2], _cls_by_hand(model, 1, images[0], [0, 0, 32, 32]),
                               rtol=1e-4, atol=1e-5)


def test_a_layer_without_a_cls_token_and_a_bad_window_are_refused(images):
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.LazyLinear(2))
    cnn(images[:1])
    with pytest.raises(ValueError, match="no CLS token.*tokens='patches'"):
        cls_windows(cnn, "1", images[:2], progress=False)
    with pytest.raises(ValueError, match="window"):
        cls_windows(tiny_vit(), "blocks.1", images[:2], window=0, progress=False)


def test_the_last_block_of_a_cls_pooled_vit_is_explained_through_its_cls_token(images, tmp_path):
    model = tiny_vit()
    explainer = ConceptExplainer(model, "blocks.2", n_concepts=3, tokens="cls", window=12,
                                 seed=0, progress=False)
    result = explainer.fit(images, 0)
    assert result.params["tokens"] == "cls" and result.params["window"] == 12
    from conceptkit.pipeline._notes import CLS_NOTE, TOKEN_LIMITATION

    assert CLS_NOTE in result.notes() and TOKEN_LIMITATION not in result.notes()
    # an untrained model's probabilities barely move; never exactly 0 as patch tokens would be
    assert np.all(np.isfinite(result.importances)) and np.abs(result.importances).min() > 0
    fitted = result.concept_maps()
    assert fitted.shape == (6, 3, 32, 32)
    torch.testing.assert_close(result.concept_maps(images), fitted)  # new images: same path
    # the same seed, the same explanation
    again = ConceptExplainer(model, "blocks.2", n_concepts=3, tokens="cls", window=12, seed=0,
                             progress=False).fit(images, 0)
    np.testing.assert_array_equal(again.importances, result.importances)
    # saved, loaded and re-attached: the maps of new images are the CLS maps again
    path = tmp_path / "cls.safetensors"
    result.save(path)
    loaded = load(path)
    assert loaded.params["tokens"] == "cls" and loaded.params["window"] == 12
    assert CLS_NOTE in loaded.notes()
    torch.testing.assert_close(loaded.attach(model).concept_maps(images), fitted)
    with pytest.raises(ValueError, match="CLS tokens.*'coefficient'"):
        result.concept_maps(kind="pixel")


def test_the_patch_token_error_at_the_last_block_points_to_the_cls_path(images):
    with pytest.raises(ValueError, match="tokens='cls'"):
        ConceptExplainer(tiny_vit(), "blocks.2", n_concepts=3, seed=0, tokens="patches",
                         progress=False).fit(images, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"tokens": "cls", "method": "craft"}, "method='ice'"),
    ({"tokens": "cls", "importance": "sobol"}, "importance='pixel_ablation'"),
    ({"tokens": "patches", "window": 12}, "tokens='cls'"),
    ({"tokens": "cls", "window": 0}, "window"),
    ({"tokens": "CLS"}, "tokens"),
    # refused when the explainer is made, not after the windowed extraction
    ({"tokens": "cls", "importance_kwargs": {"kind": "gradient"}}, r"\['kind'\] 'gradient'"),
    ({"tokens": "cls", "importance_kwargs": {"kind": "scale_matched"}}, "tokens='patches'"),
])
def test_settings_the_cls_path_cannot_honour_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConceptExplainer(tiny_vit(), "blocks.2", n_concepts=3, **kwargs)


def test_the_shapes_vit_last_block_through_its_cls_token_finds_what_the_class_relies_on():
    """The shipped shapes ViT at ``blocks.3``, its last block (patch tokens refused there): the
    top concept's region, painted out, removes the class, and its maps point at one of the two
    parts the class is defined by (both drop the class by 0.96-1.00)."""
    from conceptkit.datasets import load_world
    from conceptkit.evaluate import localisation

    world = load_world("shapes")
    data = world.sample(10, seed=0, split="test")
    rows = np.flatnonzero(np.asarray(data.labels) == 0)
    images, masks = data.images[rows], data.masks[rows]
    result = ConceptExplainer(world.model(arch="vit"), "blocks.3", n_concepts=4, tokens="cls",
                              seed=0, progress=False).fit(images, 0)
    top = int(np.argmax(result.importances))
    assert result.importances[top] > 0.5
    located = localisation(result.concept_maps(), images, masks, list(data.concept_names))
    causal = [int(p) for p in data.class_concepts[0]]
    assert max(float(located.pointing_game[top, p]) for p in causal) >= 0.9


def test_what_reads_patch_tokens_refuses_cls_concepts(images):
    """Naming, MACO, gradient and pixel maps and importances through ``h`` read the layer's
    patch tokens: given concepts of CLS tokens they say so instead of mixing the two spaces."""
    from conceptkit.maps import gradient_maps, pixel_maps
    from conceptkit.naming import name_by_classes, name_by_masks

    model = tiny_vit()
    result = ConceptExplainer(model, "blocks.1", n_concepts=3, tokens="cls", window=12, seed=0,
                              progress=False).fit(images, 0)
    assert result.bank.params["tokens"] == "cls"
    masks = torch.zeros(6, 2, 32, 32, dtype=torch.bool)
    masks[:, 0, :16], masks[:, 1, 16:] = True, True
    probe = (images, masks, ["top", "bottom"])
    for call in (lambda: gradient_maps(model, images, result.bank),
                 lambda: pixel_maps(model, images, result.bank),
                 lambda: name_by_masks(result.bank, probe, model=model),
                 # new images' patch tokens would be encoded with the CLS dictionary
                 lambda: name_by_classes(result, images=images),
                 lambda: result.name_concepts("classes", images=images)):
        with pytest.raises(ValueError, match="CLS tokens"):
            call()
    for call in (lambda: name_by_classes(result), lambda: result.model_at_layer.maps_head):
        with pytest.raises(ValueError, match="pixel ablation"):
            call()
    # naming an explanation reads its own (CLS) maps: it works
    from conceptkit.naming._dissect import dissect_scores
    from conceptkit.naming._probe import as_probe

    named = name_by_masks(result, probe, min_score=None, quantile=0.2, class_images_only=False)
    table, _ = dissect_scores(result.concept_maps().float(), as_probe(probe, need_masks=True), 0.2)
    assert len(named) == 3
    for entry in named:
        assert entry.score == pytest.approx(table[entry.concept].max())
    assert result.metrics["importance"] == {}  # none through h; the extraction metrics stay
    assert result.metrics["extraction"]


def test_a_window_covering_the_whole_image_from_every_cell_is_refused(images):
    """Every position would be the same CLS token: flat maps, every concept region the whole
    image, importances that cannot mean anything. An error naming `window` instead."""
    with pytest.raises(ValueError, match=r"`window` 64: every window covers the whole image"):
        ConceptExplainer(tiny_vit(), "blocks.1", n_concepts=3, tokens="cls", window=64, seed=0,
                         progress=False).fit(images, 0)


def test_auto_reads_the_cls_token_where_the_head_reads_it_and_the_patch_tokens_elsewhere(images):
    """``tokens="auto"`` (the default) is the CLS path for ICE with a pixel importance on a
    transformer that classifies from its CLS token, giving the same explanation as
    ``tokens="cls"``; the patch tokens for any other importance or method, for an average-pooled
    transformer, and at a convolutional layer."""
    from timm.models.vision_transformer import VisionTransformer

    model = tiny_vit()
    auto = ConceptExplainer(model, "blocks.1", n_concepts=3, seed=0, progress=False)
    assert auto.tokens == "auto" and auto.reads(images) == "cls"
    by_default = auto.fit(images, 0)
    asked = ConceptExplainer(model, "blocks.1", n_concepts=3, seed=0, tokens="cls",
                             progress=False).fit(images, 0)
    assert by_default.params["tokens"] == "cls" and by_default.params["window"] == 8
    assert by_default.bank.params["tokens"] == "cls"
    np.testing.assert_array_equal(by_default.importances, asked.importances)
    # on tokens pixel ablation paints the map's regions alone (not grown to superpixels), and
    # a user's n_segments is honoured
    assert by_default.importance.params["n_segments"] is None
    grown = ConceptExplainer(model, "blocks.1", n_concepts=3, seed=0, progress=False,
                             importance_kwargs={"n_segments": 8}).fit(images, 0)
    assert grown.importance.params["n_segments"] == 8
    torch.testing.assert_close(by_default.activations, asked.activations, rtol=0, atol=0)
    for kwargs in ({"importance": "sobol"}, {"importance": "gradient_input"},
                   {"method": "craft", "n_concepts": 2}):
        explainer = ConceptExplainer(model, "blocks.1", seed=0, progress=False,
                                     **{"n_concepts": 3, **kwargs})
        assert explainer.reads(images) == "patches", kwargs
    torch.manual_seed(0)
    pooled = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                               num_classes=3, global_pool="avg").eval()
    result = ConceptExplainer(pooled, "blocks.1", n_concepts=3, seed=0,
                              progress=False).fit(images, 0)
    assert result.params["tokens"] == "patches" and result.params["layer_gives_tokens"]
    # a window where the patch tokens are read cannot be honoured: an error naming it
    with pytest.raises(ValueError, match="`window`.*tokens='cls'"):
        ConceptExplainer(pooled, "blocks.1", n_concepts=3, window=8, progress=False).fit(images, 0)
    windowed = ConceptExplainer(pooled, "blocks.1", n_concepts=3, window=8, progress=False)
    for _ in range(2):  # the resolution is kept; the refusal is not lost with it
        with pytest.raises(ValueError, match="`window`"):
            windowed.reads(images)
    with pytest.raises(ValueError, match="`window`"):
        windowed.fit(images, 0)
    # the resolution follows the settings when they change
    auto.importance = "sobol"
    assert auto.reads(images) == "patches"
    auto.importance = "pixel_ablation"
    assert auto.reads(images) == "cls"
    # regions asked of pixel or gradient maps, which a CLS explanation has not: patch tokens
    auto.importance_kwargs = {"kind": "pixel"}
    assert auto.reads(images) == "patches"
    auto.importance_kwargs = {"kind": "coefficient"}
    assert auto.reads(images) == "cls"
    # reads() checks its images like fit does
    with pytest.raises(ValueError, match="`images`.*0-255"):
        auto.reads(images * 255)
    # explicit tokens="cls" with settings changed after the explainer was made: refused at fit
    changed = ConceptExplainer(model, "blocks.1", n_concepts=3, tokens="cls", seed=0,
                               progress=False)
    changed.method = "craft"
    with pytest.raises(ValueError, match="`method` 'craft'"):
        changed.fit(images, 0)
    changed.method, changed.importance = "ice", "sobol"
    with pytest.raises(ValueError, match="`importance` 'sobol'"):
        changed.fit(images, 0)


def test_non_square_images_at_a_token_layer_are_refused(images):
    """Token maps are square grids: a transformer that takes any size (timm
    ``dynamic_img_size``) gives 4 x 16 tokens for 32 x 128 images, which would be laid out
    8 x 8, and 6 x 8 + CLS for 48 x 64 images, whose CLS token would be counted as a patch.
    Both are errors naming the size and the fix, whatever is read."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                              num_classes=3, global_pool="token", dynamic_img_size=True).eval()
    for size in ((32, 128), (48, 64)):
        wide = torch.nn.functional.interpolate(images, size=size, mode="bilinear")
        for tokens in ("auto", "cls", "patches"):
            with pytest.raises(ValueError, match=rf"images of {size[0]} x {size[1]} pixels.*square"):
                ConceptExplainer(model, "blocks.1", n_concepts=3, tokens=tokens, seed=0,
                                 progress=False).fit(wide, 0)
    # square images of another size are explained
    square = torch.nn.functional.interpolate(images, size=(48, 48), mode="bilinear")
    result = ConceptExplainer(model, "blocks.1", n_concepts=3, seed=0, progress=False).fit(square, 0)
    assert result.activations.shape[-2:] == (6, 6)


def test_head_reads_cls_knows_the_common_transformers():
    import torchvision
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    from conceptkit.extraction import head_reads_cls

    def vit(pool):
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                                 num_classes=3, global_pool=pool)

    assert head_reads_cls(vit("token"), "blocks.0")
    assert not head_reads_cls(vit("avg"), "blocks.0")
    assert not head_reads_cls(VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                                num_heads=2, num_classes=3, class_token=False,
                                                global_pool="avg"), "blocks.0")
    wrapped = nn.Sequential(nn.Identity(), vit("token"))  # e.g. a normalisation in front
    assert head_reads_cls(wrapped, "1.blocks.0")
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                              num_heads=2, hidden_dim=16, mlp_dim=32,
                                              num_classes=3)
    assert head_reads_cls(tv, "encoder.layers.encoder_layer_0")
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    assert not head_reads_cls(cnn, "0")
    with pytest.raises(ValueError, match="layer"):
        head_reads_cls(cnn, "nope")


def test_exemplars_of_cls_concepts_show_the_window_the_code_was_read_from(images):
    """A CLS-token position's code describes its whole window, so exemplars are the windows,
    not the patch cells: the pixels the CLS token saw, in place, and past the image's border
    (a window around a border cell) the image's median colour, never pixels it did not see."""
    result = ConceptExplainer(tiny_vit(), "blocks.1", n_concepts=3, seed=0, tokens="cls",
                              window=16, progress=False).fit(images, 0)
    prov = result.bank.provenance
    n_rows = len(prov.image_ids)
    checked_border = 0
    for concept in range(3):
        rows = result.bank.top_rows(concept, n_rows, present_only=True)  # where its code > 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # fewer rows than asked: said
            examples, _ = result.top_examples(concept, n_rows)
        assert examples.shape == (len(rows), 3, 16, 16)
        for example, row in zip(examples, rows):
            i, j = (int(v) for v in prov.cells[row])
            y0, x0 = round((i + 0.5) * 8 - 8), round((j + 0.5) * 8 - 8)  # 8 px cells, 32 px
            image = images[prov.image_ids[row]]
            expected = image.flatten(1).median(1).values[:, None, None].expand(3, 16, 16).clone()
            sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y0 + 16, 32), min(x0 + 16, 32)
            expected[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[:, sy0:sy1, sx0:sx1]
            torch.testing.assert_close(example, expected, rtol=0, atol=1e-6)
            checked_border += (y0 < 0 or x0 < 0)
    assert checked_border > 0  # windows of border cells were among them
    patches = ConceptExplainer(tiny_vit(), "blocks.1", n_concepts=3, seed=0, tokens="patches",
                               progress=False).fit(images, 0)
    assert patches.top_examples(0, 2)[0].shape[-1] == 8  # patch tokens: the cell


def test_the_report_of_cls_concepts_says_what_its_maps_hold(images, tmp_path):
    import json

    result = ConceptExplainer(tiny_vit(), "blocks.1", n_concepts=3, seed=0, tokens="cls",
                              progress=False).fit(images, 0)
    page = result.report(tmp_path / "cls", n_images=2)
    html = open(page, encoding="utf-8").read()
    assert "code in the CLS token of the image shown only in a window" in html
    data = json.loads((tmp_path / "cls" / "class-0" / "report.json").read_text())
    assert data["maps_read"] == "cls" and data["maps_kind"] == "coefficient"
    loaded = load(result.save(tmp_path / "cls.safetensors"))
    assert "CLS token of the image" in open(loaded.report(tmp_path / "again", n_images=2),
                                            encoding="utf-8").read()
    patches = ConceptExplainer(tiny_vit(), "blocks.1", n_concepts=3, seed=0, tokens="patches",
                               progress=False).fit(images, 0)
    html = open(patches.report(tmp_path / "patches", n_images=2), encoding="utf-8").read()
    assert "CLS token of the image" not in html
    assert "code at each position of the layer" in html


def test_an_output_the_model_lacks_is_refused_before_the_windowed_extraction(images):
    # the split's probe and one image name the problem; the windowed extraction would run the
    # model once per window of every image (16 windows x 6 images here) before failing
    model = tiny_vit()
    calls = []
    hook = model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    try:
        with pytest.raises(ValueError, match=r"`class_id` must be in \[0, 2\].*got 7"):
            ConceptExplainer(model, "blocks.2", n_concepts=3, tokens="cls", window=12,
                             progress=False).fit(images, 7)
    finally:
        hook.remove()
    assert 0 < sum(calls) < 16  # not even one image's windows
    assert not model._forward_pre_hooks
    # the patch tokens with an importance through h are refused as early
    with pytest.raises(ValueError, match=r"`class_id` must be in \[0, 2\].*got 3"):
        ConceptExplainer(model, "blocks.1", n_concepts=3, tokens="patches",
                         importance="gradient_input", progress=False).fit(images, 3)
