"""Concept attribution maps: where each concept sits in each image.

Three kinds of map:

* **coefficient maps** — every spatial position of an image's feature map encoded with the
  concept dictionary fixed, ``(N, k, h, w)``, upsampled to the image (CRAFT, ICE);
* **gradient maps** — Grad-CAM of each image-level concept coefficient with respect to a feature
  map (the layer itself or an earlier one); the coefficient is differentiated implicitly through
  the non-negative least-squares encoding (see
  :meth:`~conceptkit.concepts.ConceptBank.encode_differentiable`);
* **provenance maps** — the codes of the crops / segments / cells a bank was fitted on, painted
  back onto their source images through their provenance.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._deprecation import renamed_arguments, warn_deprecated
from .._torchutils import (
    capture_output,
    gaussian_blur,
    median_colour,
    model_dtype,
    on_device,
    preserved_model_state,
)
from .._validation import (
    check_choice,
    check_float,
    check_images,
    check_int,
    check_not_meta,
    describe,
)
from ..concepts import ConceptBank
from ..extraction._extractor import TokenLayout, infer_prefix_tokens, tokens_to_maps
from ..extraction._layers import get_layer, unwrap_model
from ..extraction._sizes import is_size_error, size_error
from ..extraction._windows import refuse_cls_concepts


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or numpy array; got {describe(x)}.")
    return x


@renamed_arguments(size="image_size")
def upsample(maps: torch.Tensor, image_size: Any, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(N, k, h, w)`` maps (a tensor or numpy array) to ``image_size`` (an int side or
    an ``(H, W)`` pair; bilinear by default, like CRAFT's resize)."""
    check_choice(mode, "mode", ["bilinear", "bicubic", "nearest"])
    maps = _as_tensor(maps, "maps")
    if maps.ndim != 4:
        extra = (" (one image's maps? add a batch axis with maps[None])" if maps.ndim == 3
                 else "")
        raise ValueError(f"`maps` must be (N, k, h, w); got shape {tuple(maps.shape)}{extra}.")
    size = _image_size(image_size)
    if size is None:
        raise TypeError("`image_size` must be an int or a pair (H, W); got None.")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float().clone()  # a new tensor either way: writing into it leaves `maps` be
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps.float(), size=tuple(size), mode=mode, **kwargs)


def _is_bank(value: Any) -> bool:
    return hasattr(value, "encode") and hasattr(value, "components")


def _data_then_bank(data: Any, bank: Any, call: str, data_name: str) -> tuple[Any, Any]:
    """``(data, bank)``, also from the 0.1 order ``(bank, data)`` (with a warning)."""
    if _is_bank(data) and not _is_bank(bank):
        warn_deprecated(f"{call}(..., bank, {data_name}) (the 0.1 argument order)",
                        f"{call}(..., {data_name}, bank): the data comes before the concepts, "
                        f"as in concept_importance(h, activations, bank)", stacklevel=4)
        return bank, data
    if not _is_bank(bank):
        raise TypeError(f"`bank` must be a ConceptBank (with `encode` and `components`), as "
                        f"returned by discovery; got {describe(bank)}.")
    return data, bank


def coefficient_maps(activations: Any, bank: ConceptBank, image_size: Any = None,
                     mode: str = "bilinear") -> torch.Tensor:
    """Concept coefficient maps ``(N, k, H, W)`` from feature maps ``(N, C, h, w)``.

    Every position is encoded with the bank's dictionary fixed (``bank.encode``); the
    ``(N, k, h, w)`` result is upsampled to ``image_size`` (default: left at ``(h, w)``).
    """
    activations, bank = _data_then_bank(activations, bank, "coefficient_maps", "activations")
    activations = _as_tensor(activations, "activations")
    check_not_meta(activations, "activations")
    if activations.ndim != 4:
        raise ValueError(f"`activations` must be feature maps (N, C, h, w); got shape "
                         f"{tuple(activations.shape)}.")
    size = _image_size(image_size)
    codes = torch.as_tensor(bank.encode(activations.detach().cpu().float())).float()
    if size is None:
        return codes
    return upsample(codes, size, mode)


#: The per-concept percentile that sets each concept's scale in :func:`dominant_maps`.
DOMINANT_PERCENTILE = 99.0


def concept_scales(codes: Any, percentile: float = DOMINANT_PERCENTILE) -> torch.Tensor:
    """Each concept's ``percentile`` of its codes ``(n, k)`` (rows) or ``(N, k, h, w)`` (maps),
    shape ``(k,)``; a concept that is never positive gets scale 1 (its codes stay 0 or below)."""
    codes = _as_tensor(codes, "codes").detach().float()
    if codes.ndim not in (2, 4) or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"`codes` must be rows (n, k) or maps (N, k, h, w) with at least one "
                         f"input and one concept; got shape {tuple(codes.shape)}.")
    if not bool(torch.isfinite(codes).all()):
        raise ValueError("`codes` contains NaN or Inf values; a concept's scale would be "
                         "meaningless.")
    percentile = check_float(percentile, "percentile", minimum=0.0, maximum=100.0)
    k = codes.shape[1]
    flat = codes.transpose(0, 1).reshape(k, -1) if codes.ndim == 4 else codes.T.reshape(k, -1)
    scales = torch.quantile(flat.double(), percentile / 100.0, dim=1).float()
    return torch.where(scales > 0, scales, torch.ones_like(scales))


def dominant_maps(activations: Any, bank: ConceptBank, image_size: Any = None,
                  scales: Any = None, mode: str = "bilinear") -> torch.Tensor:
    """Coefficient maps in which each position keeps only the concept that dominates it.

    Every position is encoded (as :func:`coefficient_maps`); each concept's code is divided by
    its scale (``scales``, shape ``(k,)``; default :func:`concept_scales` of the bank's fitted
    codes, the 99th percentile of each concept over the rows it was fitted on), and at each
    position only the concept with the largest scaled code keeps its code; the others get 0.
    Upsampled to ``image_size`` like coefficient maps.

    Why: SemiNMF codes of transformer tokens are dense (every concept is positive at every
    position, because the non-negative codes must also rebuild what all tokens share), so a
    concept's raw code is high on tokens that another concept explains, and its map and its
    top-quantile regions spill onto other parts. :class:`~conceptkit.ConceptAtlas` paints the
    regions of these maps on tokens (the shapes ViT's parts right 4-5 of 6 per seed, against
    0-1 with the codes themselves). For one class they rank concepts better on the ViT worlds
    but point worse once parts of equal reliance count alike, so they are not the default
    there (:func:`choose_map_kind`; BENCHMARKS.md). NMF codes of ReLU feature maps are sparse
    already, and keeping one concept per position cuts parts that several concepts share.
    """
    size = _image_size(image_size)
    return _keep_dominant(coefficient_maps(activations, bank), bank, size, scales, mode)


def _keep_dominant(codes: torch.Tensor, bank: Any, size: tuple[int, int] | None, scales: Any,
                   mode: str = "bilinear") -> torch.Tensor:
    """:func:`dominant_maps` from the codes ``(N, k, h, w)``."""
    k = codes.shape[1]
    if scales is None:
        fitted = getattr(bank, "codes", None)
        scales = concept_scales(fitted if fitted is not None and len(fitted) else codes)
    if isinstance(scales, torch.Tensor):
        scales = scales.detach().cpu()
    try:
        scales = torch.as_tensor(np.asarray(scales, dtype=np.float32)).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"`scales` must hold {k} positive numbers (one per concept); got "
                        f"{describe(scales)}.") from None
    if scales.numel() != k or not bool(torch.all(scales > 0)):
        smallest = f", smallest {float(scales.min()):.4g}" if scales.numel() else ""
        raise ValueError(f"`scales` must hold {k} positive values (one per concept); got "
                         f"{scales.numel()} values{smallest}.")
    scaled = codes / scales[None, :, None, None]
    keep = scaled >= scaled.max(dim=1, keepdim=True).values
    maps = torch.where(keep, codes, torch.zeros_like(codes))
    return maps if size is None else upsample(maps, size, mode)


def _image_size(image_size: Any, name: str = "image_size") -> tuple[int, int] | None:
    """``None``, an int side or an ``(H, W)`` pair, as a checked pair of positive ints."""
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return check_int(image_size[0], name, minimum=1), check_int(image_size[1], name, minimum=1)
    if isinstance(image_size, (tuple, list, str)):
        raise TypeError(f"`{name}` must be an int or a pair (H, W); got {describe(image_size)}.")
    side = check_int(image_size, name, minimum=1)
    return side, side


def _as_maps(output: torch.Tensor, n: int, model: nn.Module, layout: TokenLayout) -> torch.Tensor:
    """Layer output as feature maps: transformer tokens become patch-token maps, laid out as
    ``layout`` (decided once per call by :func:`_decided_layout`)."""
    if output.ndim != 3:
        return output
    output = layout.batch_first(output, n)
    return tokens_to_maps(output, infer_prefix_tokens(model, output.shape[1]))


def _images_error(err: Exception, x: torch.Tensor, model: nn.Module, preprocess: Any) -> ValueError:
    """``images`` that ``model`` (after ``preprocess``) cannot take, e.g. one channel for a
    colour model: an error naming them and the model, with a hint for the usual mistakes (as
    ``conceptkit.extraction`` says it), not torch's error from deep inside the model."""
    hint = ""
    if x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        hint = (f" The images look channels-last (N, H, W, C) = {tuple(x.shape)}; conceptkit "
                f"takes (N, C, H, W): pass images.permute(0, 3, 1, 2).")
    elif x.ndim == 4 and x.shape[1] == 1 and "channel" in str(err):
        hint = (" The images have one channel; for a model of colour images pass "
                "images.expand(-1, 3, -1, -1).")
    through = ("`preprocess` and " if preprocess is not None else "") + type(model).__name__
    return ValueError(f"`images` (an example of shape {tuple(x.shape)}) cannot be run through "
                      f"{through}: {type(err).__name__}: {str(err).rstrip('.')}.{hint}")


def _decided_layout(model: nn.Module, module: nn.Module, first: torch.Tensor, name: str,
                    preprocess: Any = None) -> tuple[TokenLayout, tuple[int, ...] | None]:
    """The token layout of ``module``, read off one image ``first`` (1, C, H, W) before any
    batch runs (a batch of as many images as tokens would read both ways), and the shape of
    its output as feature maps (None when it is not a tensor). Images of a size the model does
    not take raise :class:`~conceptkit.extraction._sizes.ImageSizeError`, naming `images`."""
    layout = TokenLayout(name)
    inner = unwrap_model(model)[0]

    def run(x: torch.Tensor) -> Any:
        return capture_output(inner, module, preprocess(x) if preprocess is not None else x)

    with torch.no_grad():
        try:
            out = run(first.detach())
        except Exception as err:
            if is_size_error(err):
                raise size_error(err, run, first, "images", f"{type(inner).__name__} up to {name}",
                                 inner) from err
            if isinstance(err, torch.cuda.OutOfMemoryError):  # not the images' fault
                raise
            raise _images_error(err, first, inner, preprocess) from err
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor):
        return layout, None
    if out.ndim == 3:
        if out.shape[0] == out.shape[1] == 1:
            return layout, None
        layout.of(out, 1)
    return layout, tuple(_as_maps(out, 1, model, layout).shape)


def _image_codes(bank: ConceptBank, acts: torch.Tensor) -> torch.Tensor:
    """Each image's concept codes ``(N, k)``, differentiable, from its activations ``(N, C)`` or
    feature maps ``(N, C, h, w)``: the bank's encoding of the activations averaged over
    positions, or, when the bank's factorizer *selects* codes (``factorizer.selects_codes``: a
    top-k autoencoder keeps each row's few strongest concepts and sets the rest exactly to 0),
    the mean over positions of each position's code. A selecting encoder applied to the
    averaged row keeps that row's few strongest concepts only, so every other concept would be
    0 in the image, with no gradient, even where it is present (on a class of the shapes ViT,
    58 % of all (image, concept) maps were all zero for a concept present in the image)."""
    if acts.ndim <= 2:
        return bank.encode_differentiable(acts.float())
    if getattr(bank.factorizer, "selects_codes", False):
        n, channels = acts.shape[:2]
        rows = acts.flatten(2).transpose(1, 2).reshape(-1, channels)
        return bank.encode_differentiable(rows.float()).view(n, -1, bank.n_concepts).mean(1)
    return bank.encode_differentiable(acts.mean(dim=tuple(range(2, acts.ndim))).float())


def gradient_maps(model: nn.Module, images: torch.Tensor, bank: ConceptBank,
                  map_layer: str | None = None, image_size: Any = None, batch_size: int = 32,
                  preprocess: Any = None, mode: str = "bilinear", device: Any = None) -> torch.Tensor:
    """Grad-CAM maps ``(N, k, H, W)`` of each concept's image-level coefficient.

    For concept ``j``, the coefficient ``u_j`` of the image's pooled activations at
    ``bank.layer`` is differentiated with respect to the feature map ``F`` of ``map_layer``
    (default: ``bank.layer``); the map is ``ReLU(Σ_c α_c F_c)`` with ``α_c`` the spatial mean
    of ``∂u_j/∂F_c``, upsampled to ``image_size`` (default: the image size). ``device``: where
    the model runs (default: where it is; moved back afterwards).
    """
    images, bank = _data_then_bank(images, bank, "gradient_maps", "images")
    refuse_cls_concepts(bank, "gradient_maps")
    images = check_images(images, "images", pixels=True)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    _, concept_module = get_layer(model, bank.layer, "bank.layer")
    _, map_module = get_layer(model, map_layer or bank.layer, "map_layer")
    size = _image_size(image_size) or tuple(images.shape[-2:])
    map_name = (f"`map_layer` {map_layer!r}" if map_layer
                else f"`map_layer` (default `bank.layer` {bank.layer!r})")
    out, all_codes = [], []
    with preserved_model_state(model), on_device(model, device) as device:
        first = images[:1].to(device=device, dtype=model_dtype(model))
        concept_layout, _ = _decided_layout(model, concept_module, first,
                                            f"`bank.layer` {bank.layer!r}", preprocess)
        map_layout, grid = _decided_layout(model, map_module, first, map_name, preprocess)
        _check_map_grid(grid, map_name)
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            if preprocess is not None:
                batch = preprocess(batch)
            store: dict[str, torch.Tensor] = {}

            def keep_map(_m, _i, output, store=store):
                output.retain_grad()
                store["map"] = output

            def keep_concept(_m, _i, output, store=store):
                store["concept"] = output.clone()  # an in-place op after the cut would change it

            handles = [map_module.register_forward_hook(keep_map),
                       concept_module.register_forward_hook(keep_concept)]
            try:
                with torch.enable_grad():
                    # the model's dtype, as ActivationExtractor; gradients flow even if frozen
                    batch = batch.detach().to(model_dtype(model)).requires_grad_(True)
                    unwrap_model(model)[0](batch)  # DataParallel: hooks are on the wrapped model
                    n = batch.shape[0]
                    acts = _as_maps(store["concept"], n, model, concept_layout)
                    codes = _image_codes(bank, acts)
                    raw = store["map"]
                    fmap = _as_maps(raw.detach(), n, model, map_layout)
                    maps = []
                    for j in range(bank.n_concepts):
                        grad = torch.autograd.grad(codes[:, j].sum(), raw, retain_graph=True,
                                                   allow_unused=True)[0]
                        grad = (torch.zeros_like(fmap) if grad is None
                                else _as_maps(grad, n, model, map_layout))
                        alpha = grad.mean(dim=(2, 3), keepdim=True)
                        maps.append(torch.relu((alpha * fmap).sum(1)))
            finally:
                for handle in handles:
                    handle.remove()
            out.append(torch.stack(maps, 1).detach().cpu())
            all_codes.append(codes.detach().float().cpu())
    maps = torch.cat(out)
    _warn_empty_gradient_maps(maps, torch.cat(all_codes))
    return upsample(maps, size, mode)


def _check_map_grid(shape: tuple[int, ...] | None, name: str) -> None:
    """Refuse a map layer without a spatial grid; warn on a 1 x 1 grid (every map constant)."""
    if shape is None or len(shape) != 4:
        got = "no tensor" if shape is None else f"output of shape {shape} for one image"
        raise ValueError(f"{name} must give feature maps (N, C, h, w) or transformer tokens "
                         f"(N, T, C), a spatial grid for Grad-CAM to weigh; got {got}. Choose "
                         f"a convolutional block or a transformer block before the pooling.")
    if shape[2] * shape[3] == 1:
        warnings.warn(f"gradient_maps: {name} has a 1 x 1 spatial grid, so each Grad-CAM map is "
                      f"one value spread over the whole image and shows nowhere in particular. "
                      f"Choose a layer before the pooling for maps that localise.",
                      UserWarning, stacklevel=3)


def _warn_empty_gradient_maps(maps: torch.Tensor, codes: torch.Tensor) -> None:
    """Warn once when some (image, concept) Grad-CAM maps are 0 everywhere although the concept's
    code is positive in that image (pairs where the code is 0 too are left out)."""
    empty = (maps.flatten(2).amax(2) <= 0) & (codes > 0)
    count = int(empty.sum())
    if count == 0:
        return
    n, k = empty.shape
    warnings.warn(f"gradient_maps: {count} of the {n * k} (image, concept) maps are 0 everywhere "
                  f"although the concept's code is positive in the image (concepts "
                  f"{sorted({int(j) for j in torch.nonzero(empty)[:, 1]})}). Grad-CAM keeps only "
                  f"positive evidence (the ReLU of the gradient-weighted feature map), and there "
                  f"that map is nowhere positive: an empty map says nothing about where the "
                  f"concept is. Pixel or coefficient maps (kind='pixel' or 'coefficient') show "
                  f"it.", UserWarning, stacklevel=3)


def pixel_maps(model: nn.Module, images: torch.Tensor, bank: ConceptBank, *,
               sigma: float | None = None, image_size: Any = None, batch_size: int = 32,
               preprocess: Any = None, device: Any = None) -> torch.Tensor:
    """Maps ``(N, k, H, W)`` at the images' own resolution: how much painting each pixel out
    would lower each concept.

    ``map_j = blur_σ(ReLU(Σ_c ∂u_j/∂x_c · (x_c − m_c)))``, where ``u_j`` is concept ``j``'s
    image-level code (the bank's encoding of the layer's feature map averaged over positions,
    differentiated through the encoding as in :func:`gradient_maps`), ``x`` the image in
    ``[0, 1]`` before ``preprocess``, and ``m`` its per-channel median colour — the fill of
    ``importance="pixel_ablation"`` and ``conceptkit.evaluate.reliance``. So the map is the
    first-order drop of the concept's code when the pixel is painted out, blurred with a
    Gaussian of ``sigma`` pixels (default: the image side / 32, 2 px on 64-px images) so that
    neighbouring pixels pool their evidence.

    Coefficient and Grad-CAM maps live on the layer's grid (8 × 8 for a 64-px image at stride
    8) and spill one cell onto a part's neighbours; these do not. Measured on the four
    ground-truth worlds (BENCHMARKS.md, three seeds): with ICE and pixel ablation, they put the
    top concept on the most relied-on part and point at it better than coefficient maps on the
    shapes world and the ViT, as well on the scales world and worse on the textures world, and
    rank the ViT's concepts worse (Spearman 0.42 against 0.49); by the total shortfall from the
    bar they are the better kind, and the default of ``kind="auto"`` on convolutional layers
    (:func:`choose_map_kind`). On transformer tokens they are not: attention mixes every patch
    into every token, and on a ViT trained on the shapes world they point at distractors the
    model ignores (the top concept on the most relied-on part in 0.22 of the class fits, against
    0.72 with coefficient maps, with SemiNMF concepts; with the default top-k autoencoder on the
    two ViT worlds 0.77 against 0.82, Spearman 0.55 against 0.68). A factorizer that selects
    codes (``selects_codes``) gets the mean of its positions' codes as each image's code.
    ``device``: where the model runs (default: where it is; moved back afterwards).
    """
    images, bank = _data_then_bank(images, bank, "pixel_maps", "images")
    refuse_cls_concepts(bank, "pixel_maps")
    images = check_images(images, "images", pixels=True)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    height, width = images.shape[-2:]
    sigma = max(height, width) / 32 if sigma is None else check_float(
        sigma, "sigma", minimum=0.0, strict_minimum=True)
    _, concept_module = get_layer(model, bank.layer, "bank.layer")
    size = _image_size(image_size)
    out = []
    with preserved_model_state(model), on_device(model, device) as device:
        first = images[:1].to(device=device, dtype=model_dtype(model))
        layout, _ = _decided_layout(model, concept_module, first, f"`bank.layer` {bank.layer!r}",
                                    preprocess)
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].detach().to(device=device,
                                                                 dtype=model_dtype(model))
            store: dict[str, torch.Tensor] = {}

            def keep(_m, _i, output, store=store):
                store["concept"] = output.clone()  # an in-place op after the cut would change it

            handle = concept_module.register_forward_hook(keep)
            try:
                with torch.enable_grad():
                    batch = batch.requires_grad_(True)
                    ready = preprocess(batch) if preprocess is not None else batch
                    unwrap_model(model)[0](ready)
                    acts = _as_maps(store["concept"], batch.shape[0], model, layout)
                    codes = _image_codes(bank, acts)
                    delta = (batch - median_colour(batch)).detach()
                    maps = []
                    for j in range(bank.n_concepts):
                        grad = torch.autograd.grad(codes[:, j].sum(), batch, retain_graph=True,
                                                   allow_unused=True)[0]
                        drop = (torch.zeros_like(batch[:, 0]) if grad is None
                                else torch.relu((grad * delta).sum(1)))
                        maps.append(drop.detach().float())
            finally:
                handle.remove()
            out.append(gaussian_blur(torch.stack(maps, 1), float(sigma)).cpu())
    maps = torch.cat(out)
    return maps if size is None else upsample(maps, size)


def _fitted_images(bank: ConceptBank) -> int | None:
    """How many images ``bank`` was fitted on, where its provenance tells: the segment label
    maps kept for every image (ACE), or the last image with a row for CRAFT and ICE, whose every
    image gives rows (all its crops, all its cells). None for a bank built by hand."""
    prov = bank.provenance
    if prov.kind == "segment" and prov.label_maps is not None:
        return int(prov.label_maps.shape[0])
    if (bank.method, prov.kind) in (("craft", "crop"), ("ice", "position")):
        return int(prov.image_ids.max()) + 1
    return None


def provenance_maps(bank: ConceptBank, n_images: int | None = None, reduce: str = "mean") -> torch.Tensor:
    """Paint the fitted rows' codes back onto their source images: ``(N, k, H, W)``.

    Each pixel gets the mean (or max) code of the crops / segments / cells that cover it.
    Pixels covered by nothing get 0. ``n_images`` (default: up to the last image with a fitted
    row) cannot exceed the number of images the bank was fitted on, where that is known (every
    image gives CRAFT its crops and ICE its cells; ACE keeps every image's segment labels).
    """
    if not isinstance(bank, ConceptBank):
        hint = (" (an explanation? pass its `.bank`)"
                if isinstance(getattr(bank, "bank", None), ConceptBank) else "")
        raise TypeError(f"`bank` must be a ConceptBank, as returned by discovery; got "
                        f"{describe(bank)}{hint}.")
    check_choice(reduce, "reduce", ["mean", "max"])
    prov = bank.provenance
    needed = int(prov.image_ids.max()) + 1
    n = needed if n_images is None else check_int(n_images, "n_images", minimum=needed)
    fitted = _fitted_images(bank)
    if fitted is not None and n > fitted:
        raise ValueError(f"`n_images` must be at most {fitted}, the number of images this bank "
                         f"was fitted on; got {n}. No fitted row covers the images after them, "
                         f"so their maps would be all zero. Leave `n_images` out for the "
                         f"fitted images' maps.")
    height, width = prov.source_size
    codes = bank.codes.numpy().astype(np.float32)
    k = codes.shape[1]
    total = np.zeros((n, k, height, width), dtype=np.float32)
    count = np.zeros((n, 1, height, width), dtype=np.float32)
    if prov.kind == "segment" and prov.label_maps is not None:
        for image in range(n):
            rows = np.flatnonzero(prov.image_ids == image)
            for resolution in np.unique(prov.segment_refs[rows, 0]):
                sel = rows[prov.segment_refs[rows, 0] == resolution]
                labels = prov.label_maps[image, resolution].astype(np.int64)
                lut = np.zeros((labels.max() + 1, k), dtype=np.float32)
                hit = np.zeros(labels.max() + 1, dtype=np.float32)
                lut[prov.segment_refs[sel, 1]] = codes[sel]
                hit[prov.segment_refs[sel, 1]] = 1.0
                painted = lut[labels].transpose(2, 0, 1)
                if reduce == "max":
                    total[image] = np.maximum(total[image], painted)
                else:
                    total[image] += painted
                count[image, 0] += hit[labels]
    else:
        for row in range(len(prov)):
            image = prov.image_ids[row]
            y0, x0, y1, x1 = prov.boxes[row]
            if reduce == "max":
                np.maximum(total[image, :, y0:y1, x0:x1], codes[row][:, None, None],
                           out=total[image, :, y0:y1, x0:x1])
            else:
                total[image, :, y0:y1, x0:x1] += codes[row][:, None, None]
            count[image, 0, y0:y1, x0:x1] += 1.0
    if reduce == "mean":
        total = total / np.maximum(count, 1.0)
    return torch.from_numpy(total)


def scale_matched_maps(model: nn.Module, images: torch.Tensor, bank: ConceptBank, zoom: float,
                       *, preprocess: Any = None, batch_size: int = 32,
                       mode: str = "bilinear", device: Any = None) -> torch.Tensor:
    """Coefficient maps ``(N, k, H, W)`` computed on the images enlarged ``zoom`` times.

    CRAFT resizes each ``p``-pixel crop to the image side ``S`` before ``g``, so its concepts
    describe parts enlarged ``S / p`` times. Encoding the feature map of the image enlarged by
    the same factor compares like with like (on the ground-truth dataset this fixes the parts
    that plain coefficient maps miss); the maps are resized back to the image size. Costs one
    pass of ``g`` over ``zoom²`` times more pixels; needs a model that accepts larger inputs
    (convolutional networks; not ViTs with a fixed position embedding).
    """
    from ..extraction import ActivationExtractor

    images, bank = _data_then_bank(images, bank, "scale_matched_maps", "images")
    refuse_cls_concepts(bank, "scale_matched_maps")
    images = check_images(images, "images", pixels=True)
    zoom = check_float(zoom, "zoom", minimum=0.0, strict_minimum=True)
    height, width = images.shape[-2:]
    enlarged = (round(height * zoom), round(width * zoom))
    if min(enlarged) < 1:
        raise ValueError(f"`zoom` {zoom:g} shrinks the {height}x{width} images to "
                         f"{enlarged[0]}x{enlarged[1]} pixels; it must leave at least one pixel "
                         f"a side (above {0.5 / min(height, width):.3g} here). Scale-matched "
                         f"maps enlarge the images: CRAFT's zoom is the image side over the crop "
                         f"side, above 1.")
    big = F.interpolate(images.float(), size=enlarged, mode="bilinear", align_corners=False)
    with enlarged_size_refused(zoom, (height, width), tuple(big.shape[-2:])):
        acts = ActivationExtractor(model, bank.layer, batch_size=batch_size, progress=False,
                                   preprocess=preprocess, device=device)(big)
    return coefficient_maps(acts, bank, (height, width), mode)


@contextmanager
def enlarged_size_refused(zoom: float, size: tuple[int, int], enlarged: tuple[int, int]):
    """Re-raise the extractor's size error (images too small for the model, or a size it does
    not take) as the scale-matched maps' own: the user's images are fine, the enlarged ones are
    what the model refuses (a transformer with a fixed input size)."""
    from ..extraction._sizes import ImageSizeError

    try:
        yield
    except ImageSizeError as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        raise ValueError(f"scale-matched maps run the model on the images enlarged {zoom:g} "
                         f"times ({size[0]}x{size[1]} -> {enlarged[0]}x{enlarged[1]} pixels), "
                         f"and this model does not take that size ({type(cause).__name__}: "
                         f"{str(cause).rstrip('.')}). Use kind='coefficient' or kind='pixel' "
                         f"maps instead.") from err
