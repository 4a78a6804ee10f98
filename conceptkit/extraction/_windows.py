"""The CLS token of each window of an image shown alone: a feature map a transformer reads.

A CLS-pooled transformer decides from its CLS token. Its patch tokens need not say what covers
them (on a textures ViT with 4 px patches a linear probe of the texture under a token reads
0.28-0.35 at every block, chance 0.17; BENCHMARKS.md), so concepts factorized from patch tokens
can miss what the model sees. :func:`cls_windows` asks the CLS token instead: for every cell of
the token grid it paints everything but a window around the cell with the image's median colour
and keeps the CLS token the layer gives for that image. The result has the shape of a feature
map, so ICE, coefficient maps and pixel ablation take it as they take patch tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import median_colour
from .._validation import check_images, check_int
from ._extractor import ActivationExtractor
from ._layers import enclosing_modules, get_layer


def window_boxes(image_size: tuple[int, int], grid: tuple[int, int],
                 window: int, clip: bool = True) -> torch.Tensor:
    """Pixel boxes ``(h*w, 4)`` ``[y0, x0, y1, x1]`` (end exclusive) of the windows of side
    ``window`` centred on the cells of a ``grid`` laid over an image of ``image_size``, in
    row-major order: clipped to the image, or with ``clip=False`` whole, reaching past the
    border (coordinates below 0 or beyond the image)."""
    height, width = image_size
    rows, cols = grid
    boxes = []
    for i in range(rows):
        cy = (i + 0.5) * height / rows
        for j in range(cols):
            cx = (j + 0.5) * width / cols
            y0, x0 = int(round(cy - window / 2)), int(round(cx - window / 2))
            box = [y0, x0, y0 + window, x0 + window]
            if clip:
                box = [max(0, y0), max(0, x0), min(height, y0 + window), min(width, x0 + window)]
            boxes.append(box)
    return torch.tensor(boxes, dtype=torch.long)


def refuse_cls_concepts(bank: Any, what: str) -> None:
    """Raise when ``bank`` holds concepts of CLS feature maps (``tokens="cls"``): ``what``
    reads the layer's patch tokens, which those concepts do not describe."""
    params = getattr(bank, "params", None) or {}
    if params.get("tokens") == "cls":
        raise ValueError(f"{what} reads the patch tokens of layer {getattr(bank, 'layer', '')!r}; "
                         f"these concepts are of CLS tokens (an explanation with tokens='cls'). "
                         f"Use the explanation's coefficient or dominant maps "
                         f"(`concept_maps(images)`), or explain with tokens='patches'.")


def head_reads_cls(model: nn.Module, layer: str) -> bool:
    """Whether the transformer that holds ``layer`` classifies from its CLS token alone.

    Read from the deepest module around ``layer`` that says how it pools: timm's
    ``VisionTransformer`` (``global_pool == "token"`` with a ``cls_token``; not its distilled
    DeiT, whose head averages the CLS and distillation tokens' heads), open_clip's
    (``pool_type == "tok"``), torchvision's ``VisionTransformer`` (always its class token) and
    Hugging Face's ``ViTForImageClassification`` / ``DeiTForImageClassification``. False for
    every other model (average- or attention-pooled transformers, CNNs, unknown kinds).
    """
    for module in enclosing_modules(model, get_layer(model, layer)[0]):
        verdict = _pools_cls(module)
        if verdict is not None:
            return verdict
    return False


def _pools_cls(module: nn.Module) -> bool | None:
    """True / False when ``module`` is a transformer that does / does not classify from its CLS
    token; None when it does not say."""
    pool = getattr(module, "global_pool", None)
    if isinstance(pool, str) and getattr(module, "dist_token", None) is not None:
        return False  # timm's distilled DeiT: its head averages the CLS and distillation heads
    if isinstance(pool, str) and hasattr(module, "cls_token"):  # timm
        return pool == "token" and getattr(module, "cls_token", None) is not None
    pool = getattr(module, "pool_type", None)
    if isinstance(pool, str) and hasattr(module, "class_embedding"):  # open_clip
        return pool == "tok"
    kind = type(module).__name__
    if kind == "VisionTransformer" and hasattr(module, "class_token") and hasattr(module, "heads"):
        return True  # torchvision: x[:, 0] -> heads
    if kind in ("ViTForImageClassification", "DeiTForImageClassification"):
        return True  # Hugging Face: the classifier reads sequence_output[:, 0]
    return None


def has_cls_token(model: nn.Module, layer: str) -> bool | None:
    """Whether the transformer that holds ``layer`` puts a CLS token first among its prefix
    tokens, read from the deepest module around ``layer`` that says: timm's ``cls_token`` (None
    on a model built with ``class_token=False``, whose prefix tokens are then register tokens
    only), open_clip's ``class_embedding``, torchvision's ``class_token`` and Hugging Face's
    ``embeddings.cls_token``. None when no module says (an unknown kind: its first prefix token
    is taken for the CLS token)."""
    for module in enclosing_modules(model, get_layer(model, layer)[0]):
        for source in (module, getattr(module, "embeddings", None)):
            if not isinstance(source, nn.Module):
                continue
            for attr in ("cls_token", "class_embedding", "class_token"):
                if hasattr(source, attr):
                    return getattr(source, attr) is not None
    return None


def no_cls_token_error(model: nn.Module, layer: str, what: str) -> ValueError:
    """The error for reading the CLS token of a transformer built without one."""
    inner = next((m for m in model.modules() if isinstance(getattr(m, "num_prefix_tokens", None),
                                                             int)), None)
    count = None if inner is None else inner.num_prefix_tokens
    prefix = ("" if not count else
              f" (its {count} prefix token{'s' if count != 1 else ''} "
              f"{'are register tokens' if count != 1 else 'is a register token'}, which the "
              f"CLS path would read in its place)")
    return ValueError(f"{what}: `layer` {layer!r} gives no CLS token: {type(model).__name__} "
                      f"was built without a class token{prefix}, so no CLS token can be read "
                      f"there. Read the patch tokens instead (tokens='patches').")


def default_window(image_size: tuple[int, int]) -> int:
    """A quarter of the shorter image side (16 px on 64 px images)."""
    return max(1, min(image_size) // 4)


def cls_windows(model: nn.Module, layer: str, images: torch.Tensor, *,
                window: int | None = None, batch_size: int = 64, device: Any = None,
                preprocess: Callable | None = None, progress: bool = True) -> torch.Tensor:
    """CLS-token feature maps ``(N, C, h, w)`` of ``images`` at a transformer ``layer``.

    Position ``(i, j)`` holds the CLS token (the first prefix token) that ``layer`` gives when
    the image shows only the ``window`` × ``window`` pixel square centred on patch cell
    ``(i, j)`` (clipped to the image), the rest painted with the image's per-channel median
    colour (``evaluate.reliance``'s default fill). ``(h, w)`` is the layer's patch-token grid.
    ``window`` defaults to a quarter of the shorter image side (:func:`default_window`).

    One forward pass per cell and image (``N·h·w`` images in batches of ``batch_size``); the
    model is left as found. Raises ``ValueError`` when ``layer`` gives no CLS token: a
    convolutional layer, or a transformer built without a class token (timm
    ``class_token=False``, pooled by averaging; its register tokens are not read in its place,
    :func:`has_cls_token`).
    """
    images = check_images(images, "images", pixels=True)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    window = default_window(size) if window is None else check_int(
        window, "window", minimum=1, maximum=2 * max(size))
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if has_cls_token(model, layer) is False:
        raise no_cls_token_error(model, layer, "cls_windows")
    extractor = ActivationExtractor(model, layer, batch_size=batch_size, device=device,
                                    progress=False, preprocess=preprocess)
    probe = extractor(images[:1], name="images")
    if extractor.prefix_ is None or extractor.prefix_.shape[1] == 0:
        raise ValueError(f"`layer` {layer!r} gives no CLS token (activations of shape "
                         f"{tuple(probe.shape)} without prefix tokens): the CLS path needs a "
                         f"transformer layer whose tokens start with a CLS token. Read the patch "
                         f"tokens instead (tokens='patches').")
    grid = (int(probe.shape[-2]), int(probe.shape[-1]))
    boxes = window_boxes(size, grid, window)
    keep = torch.zeros(len(boxes), 1, *size, dtype=images.dtype)
    for b, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        keep[b, :, y0:y1, x0:x1] = 1
    out = torch.empty(images.shape[0], extractor.prefix_.shape[-1], *grid)
    per_image = len(boxes)
    for n in tqdm(range(images.shape[0]), disable=not progress, leave=False,
                  desc=f"CLS of {per_image} windows per image @ {layer}"):
        image = images[n:n + 1]
        fill = median_colour(image)
        painted = image * keep + fill * (1 - keep)
        extractor(painted, name="images")
        cls = extractor.prefix_[:, 0].float().cpu()  # (per_image, C)
        out[n] = cls.T.reshape(-1, *grid)
    return out
