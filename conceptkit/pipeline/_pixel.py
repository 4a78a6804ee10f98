"""Concept importance measured in pixel space: paint each concept's region out of the images.

``importance="pixel_ablation"`` of :class:`~conceptkit.ConceptExplainer` scores concept ``j`` of
image ``i`` by the drop of the class probability when the pixels where the concept's map is high
are painted with the image's median colour, averaged over a few region sizes:

``I_ij = mean_q [s_c(x_i) - s_c(x_i with R_ij(q) painted out)]``,
``R_ij(q) = {A_ij >= Q_j(q)} ∩ {A_ij > 0}``,

where ``A_ij`` is the concept's map of the image (the explanation's default map kind, resized to
the image), ``Q_j(q)`` the ``q`` quantile of all of concept ``j``'s map values over all the
images, and ``s_c`` the softmax probability of the class. The default quantiles
(:data:`REGION_QUANTILES`: 0.9, 0.925, 0.95, 0.975) grow the region from the concept's top
2.5 % of pixels to its top decile (CRAFT's display threshold), so the score is the area over
the concept's perturbation curve (AOPC, Samek et al. 2017) over that range rather than one
cut's drop, which swings with the cut: on the ground-truth worlds the top 5 % alone ranks
better than the top decile on the textures world and much worse on the shapes world
(BENCHMARKS.md). The whole model runs on the painted images, so what it measures is what the
model does without the concept's pixels — the same kind of evidence as
``conceptkit.evaluate.reliance`` on ground-truth parts — with every layer after the painting
recomputed (a transformer's CLS token included, which the activation-space methods hold fixed).
An image where the concept is absent (an empty region) scores exactly 0 without a pass of the
model. The quantiles are over all the images, not each image: a concept present in few of them
has its whole top decile there, so its region in those images is large (in one image of ten,
the whole image at ``q = 0.9``), and its score is that of painting most of the image out. This
is what makes an absent concept's region empty rather than its weakest pixels; per-image
quantiles were not measured on the worlds.

Each region then grows to the image's SLIC superpixels (:data:`N_SEGMENTS`, about 50 per image,
ACE's middle resolution) that it covers at least half of (:data:`SEGMENT_COVER`):
``R'_ij(q) = R_ij(q) ∪ {S ∈ segments(x_i) : |R_ij(q) ∩ S| >= |S| / 2}``. A concept that covers
most of an object then paints the object out, where the map's region alone left a rim the model
still reads the object from; a region that touches a superpixel at its edge does not take it.
``n_segments=None`` paints the map's region alone (the rule before 0.2.0, and the explainer's
on transformer tokens, :func:`default_segments`; BENCHMARKS.md, "Regions grown to superpixels",
compares the two on every world).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import median_colour, model_dtype, on_device, preserved_model_state
from .._validation import (
    PROBABILITIES_GIVEN,
    are_probabilities,
    check_choice,
    check_float,
    check_images,
    check_int,
)
from ..importance import ConceptImportance
from ..importance._concept import _check_open_unit, student_interval

#: Importance methods of the explainer that run on pixels rather than on activations.
PIXEL_METHODS = ("pixel_ablation",)

#: The default region sizes of pixel ablation: each concept's region is where its map is at or
#: above these quantiles of its values, and the drops are averaged (see the module docstring).
REGION_QUANTILES = (0.9, 0.925, 0.95, 0.975)
#: The default number of SLIC superpixels per image that each region grows to (ACE's middle
#: resolution; see the module docstring).
N_SEGMENTS = 50
#: A superpixel joins a concept's region when the region covers at least this fraction of it.
SEGMENT_COVER = 0.5


def check_quantiles(quantile: Any) -> tuple[float, ...]:
    """``quantile`` (one number or a non-empty sequence of them, each in [0, 1]) as a tuple."""
    if isinstance(quantile, np.ndarray) and quantile.ndim == 1:
        quantile = [float(q) for q in quantile]
    if isinstance(quantile, (list, tuple)):
        if not quantile:
            raise ValueError("`quantile` must be a number in [0, 1] or a non-empty sequence of "
                             "them; got an empty sequence.")
        return tuple(check_float(q, "quantile", minimum=0.0, maximum=1.0) for q in quantile)
    return (check_float(quantile, "quantile", minimum=0.0, maximum=1.0),)


def check_confidence(confidence: Any) -> float | None:
    """A confidence level strictly between 0 and 1, or None (no interval), as concept
    importance checks it."""
    return None if confidence is None else _check_open_unit(confidence, "confidence")


def check_pixel_options(options: dict, accepted: tuple[str, ...], importance: str,
                        kinds: tuple[str, ...] = ()) -> None:
    """Check ``importance_kwargs`` of pixel ablation when they are given, not after discovery:
    unknown keys, and each known value (``kinds``: the map kinds ``kind`` may name)."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"unexpected importance_kwargs {unknown} for importance={importance!r}; "
                        f"accepted: {', '.join(accepted)}.")
    checks = {"quantile": check_quantiles, "confidence": check_confidence,
              "score": lambda v: check_choice(v, "score", ("probability", "logit")),
              "n_segments": lambda v: None if v is None else check_int(v, "n_segments",
                                                                      minimum=2),
              "kind": lambda v: check_choice(v, "kind", kinds)}
    for key, value in options.items():
        try:
            checks[key](value)
        except (TypeError, ValueError) as err:
            raise type(err)(f"importance_kwargs[{key!r}]: {err}") from None


def _threshold_rows(thresholds: Any, quantiles: tuple[float, ...], maps: torch.Tensor) -> list:
    """One row of per-concept thresholds per region size: the given ``thresholds``, or else
    the ``quantiles`` of each concept's values over ``maps`` (one pass over the values)."""
    n_quantiles, k = len(quantiles), maps.shape[1]
    if thresholds is None:
        # one concept at a time: a float64 copy (and numpy's partitioned copy) of one concept's
        # values, not of all maps; the same numbers as np.quantile(..., axis=1) over all of them
        rows = [np.quantile(maps.detach()[:, j].reshape(-1).double().cpu().numpy(),
                            list(quantiles)) for j in range(k)]
        return list(np.stack(rows, axis=1)) if k else list(np.zeros((n_quantiles, 0)))
    values = np.asarray(thresholds, dtype=np.float64)
    if values.ndim == 1 and n_quantiles == 1:
        return [values]
    if values.shape != (n_quantiles, k):
        raise ValueError(f"`thresholds` must hold one row of {k} values (one per concept) per "
                         f"quantile, shape ({n_quantiles}, {k}); got shape {values.shape}.")
    return list(values)


def concept_regions(maps: torch.Tensor, quantile: float,
                    thresholds: Any = None) -> torch.Tensor:
    """``(N, k, H, W)`` bool: where each concept's map is positive and at or above its
    threshold — given (``thresholds``, one value per concept), or else the ``quantile`` of all
    of that concept's values over these images."""
    if thresholds is None:
        thresholds = _threshold_rows(None, (quantile,), maps)[0]
    cut = torch.as_tensor(np.asarray(thresholds, dtype=np.float64)).to(maps.dtype).reshape(-1)
    if cut.numel() != maps.shape[1]:
        raise ValueError(f"`thresholds` must hold one value per concept ({maps.shape[1]}); "
                         f"got {cut.numel()}.")
    regions = maps >= cut[None, :, None, None].to(maps.device)
    return regions.logical_and_(maps > 0)


def default_segments(params: dict) -> int | None:
    """The explainer's ``n_segments`` for an explanation with these ``params``:
    :data:`N_SEGMENTS` on a convolutional layer's feature maps, None (the map's region alone)
    on transformer tokens (CLS or patch), whose maps are blocks of the token grid."""
    tokens = bool(params.get("layer_gives_tokens")) or params.get("tokens") == "cls"
    return None if tokens else N_SEGMENTS


def superpixels(images: torch.Tensor, n_segments: int, progress: bool = False) -> torch.Tensor:
    """``(N, H, W)`` int64: each image's SLIC superpixel labels (about ``n_segments`` of them,
    ACE's compactness 20 and sigma 1), numbered from 0 in each image."""
    from ..extraction._decompose import slic_labels

    # one image at a time in float64 (SLIC's input), not the whole batch at once
    rows = [slic_labels(image.permute(1, 2, 0).double().cpu().numpy(), n_segments)
            for image in tqdm(images.detach(), desc="superpixels", disable=not progress,
                              leave=False)]
    return torch.as_tensor(np.stack(rows).astype(np.int64, copy=False))


def grow_to_segments(regions: torch.Tensor, labels: torch.Tensor,
                     cover: float = SEGMENT_COVER, *, inplace: bool = False) -> torch.Tensor:
    """``(N, k, H, W)`` bool: each region joined by every superpixel of its image (``labels``,
    ``(N, H, W)``) that it covers at least ``cover`` of. ``inplace=True`` grows ``regions``
    itself (each image's regions are read before they grow), without a second copy of them."""
    n, k = regions.shape[:2]
    grown = regions if inplace else regions.clone()
    for i in range(n):
        if not bool(regions[i].any()):
            continue
        flat = labels[i].reshape(-1)
        count = int(flat.max()) + 1
        size = torch.bincount(flat, minlength=count).double()
        hits = torch.zeros(k, count, dtype=torch.float64).index_add_(
            1, flat, regions[i].reshape(k, -1).double())
        joined = hits >= cover * size  # (k, count)
        grown[i] |= joined[:, flat].reshape(regions.shape[1:])
    return grown


@contextlib.contextmanager
def _runner(model: Any, preprocess: Callable | None, device: Any):
    if not isinstance(model, nn.Module):
        if preprocess is not None or device is not None:
            raise ValueError("pass `preprocess` and `device` with a module, not with a forward "
                             "callable (which runs them itself).")
        with torch.no_grad():
            yield model
        return
    with preserved_model_state(model), on_device(model, device) as where, torch.no_grad():
        dtype = model_dtype(model)

        def forward(images: torch.Tensor) -> torch.Tensor:
            batch = images.to(device=where)
            if preprocess is not None:
                batch = preprocess(batch)
            out = model(batch.to(dtype=dtype))
            return out[0] if isinstance(out, (tuple, list)) else out

        yield forward


def _probabilities(forward: Callable, images: torch.Tensor, class_id: int,
                   score: str = "probability", untouched: bool = False) -> torch.Tensor:
    """The class score of each image; ``untouched`` images (not painted) are checked for a
    model that returns probabilities (a painted image may well give a logit model's output
    that looks like them)."""
    logits = forward(images)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"pixel_ablation: the model must return class logits (N, n_classes); "
                         f"got {type(logits).__name__}.")
    if class_id >= logits.shape[1]:
        raise ValueError(f"`class_id` must be in [0, {logits.shape[1] - 1}]: the model returns "
                         f"{logits.shape[1]} classes; got {class_id}.")
    if score == "logit":
        return logits[:, 0 if logits.shape[1] == 1 else class_id].double().cpu()
    if untouched and are_probabilities(logits):
        raise ValueError(PROBABILITIES_GIVEN.format(what="the model", n=logits.shape[1]))
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0]).double().cpu()
    return torch.softmax(logits.double(), dim=1)[:, class_id].cpu()


def _saturation(base: np.ndarray, per_input: np.ndarray, present: np.ndarray, score: str,
                class_id: int) -> list[int] | None:
    """Warn when the class probability cannot move: exactly 0 or 1 in float64 on most images
    (a confident model's saturated softmax), or not moved at all by any painting. Returns the
    saturated images' indices (for ``params["saturated"]`` and the explanation's notes), or
    None when the probability is read as it should be."""
    if score != "probability":
        return None
    saturated = np.flatnonzero((base == 0.0) | (base == 1.0))
    unmoved = bool(present.any()) and not np.any(per_input[present])
    if 2 * saturated.size <= base.size and not unmoved:
        return None
    if 2 * saturated.size > base.size:
        what = (f"the class {class_id} probability is exactly 0 or 1 in float64 on "
                f"{saturated.size} of the {base.size} images (the softmax is saturated), so "
                f"painting a region out moves it by nothing or next to nothing there: those "
                f"images' importances are 0 or rounding, not a measurement of the concepts")
    else:
        what = (f"no painted region moves the class {class_id} probability at all on any of "
                f"the {base.size} images (every drop is exactly 0), so every importance is 0")
    warnings.warn(f"pixel_ablation: {what}. Read the class logit's drop, which does not "
                  f"saturate: pixel_ablation(..., score=\"logit\"), or through the explainer "
                  f"ConceptExplainer(..., importance_kwargs={{\"score\": \"logit\"}}).",
                  RuntimeWarning, stacklevel=3)
    return [int(i) for i in saturated]


def pixel_ablation(model: nn.Module | Callable, images: torch.Tensor, maps: torch.Tensor,
                   class_id: int, *, quantile: float | tuple[float, ...] = REGION_QUANTILES,
                   preprocess: Callable | None = None,
                   batch_size: int = 64, device: Any = None, confidence: float | None = 0.95,
                   progress: bool = True, params: dict | None = None,
                   thresholds: Any = None, score: str = "probability",
                   n_segments: int | None = N_SEGMENTS) -> ConceptImportance:
    """Importance of each concept as the class-probability drop when its region is painted out.

    Parameters
    ----------
    model
        The whole classifier (images → logits), left as found; or a callable ``forward(images)``
        that already runs it (preprocessing, device and output selection included: then
        ``preprocess`` and ``device`` must be None).
    images
        ``(N, 3, H, W)`` in [0, 1], the images the maps belong to.
    maps
        ``(N, k, H, W)`` concept maps at the images' size.
    class_id
        The class whose probability is read.
    quantile
        Each concept's region is where its map is at or above this quantile of all its values
        over ``images``. A sequence (default :data:`REGION_QUANTILES`) paints one region per
        quantile and averages the drops; a number paints one region (0.9: the top decile).
    score
        ``"probability"`` (default): the drop of the class's softmax probability (sigmoid for one
        output); ``"logit"``: the drop of its logit, which does not saturate when several regions
        each remove the class entirely.
    n_segments
        Each region grows to the SLIC superpixels of its image (about this many per image) that
        it covers at least half of (:data:`SEGMENT_COVER`), so that a concept on most of an
        object paints the object out rather than a fragment the model still reads the object
        from (default :data:`N_SEGMENTS`, 50, ACE's middle resolution). None paints the map's
        region alone (the rule before 0.2.0; the explainer's on transformer tokens, see
        :func:`default_segments`).
    thresholds
        One map value per concept ``(k,)`` — or, with several quantiles, one row per quantile
        ``(len(quantile), k)`` — to use instead of the quantiles over ``images``: e.g. the
        quantiles over a whole dataset, so that a concept absent from these images has an empty
        region (the atlas does this) rather than its top decile wherever it is weakest.
    preprocess, batch_size, device, progress
        As for the explainer.
    confidence
        Level of the Student-t interval of the class-level mean over images (None: none).
    params
        Extra entries for the result's ``params``.
    """
    quantiles = check_quantiles(quantile)
    score = check_choice(score, "score", ("probability", "logit"))
    confidence = check_confidence(confidence)
    class_id = check_int(class_id, "class_id", minimum=0)  # -1 read the last class silently
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    # the regions are cut from the maps and painted on these pixels: a NaN map would empty a
    # concept's region (its quantile is NaN) and read as "absent", 0-255 images paint nonsense
    images = check_images(images, "images", pixels=True)
    maps = check_images(maps, "maps")
    if maps.shape[0] != images.shape[0] or maps.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"`maps` {tuple(maps.shape)} must be (N, k, H, W) for images "
                         f"{tuple(images.shape)}.")
    if n_segments is not None:
        n_segments = check_int(n_segments, "n_segments", minimum=2)
    cuts = _threshold_rows(thresholds, quantiles, maps)
    sizes = [concept_regions(maps, q, cut).cpu() for q, cut in zip(quantiles, cuts)]
    if n_segments is not None and any(bool(regions.any()) for regions in sizes):
        labels = superpixels(images, n_segments, progress=progress)
        sizes = [grow_to_segments(regions, labels, inplace=True) for regions in sizes]
    n, k = sizes[0].shape[:2]
    per_input = np.zeros((n, k))
    with _runner(model, preprocess, device) as forward:
        base = torch.cat([_probabilities(forward, images[s:s + batch_size], class_id, score,
                                         untouched=True)
                          for s in range(0, n, batch_size)]).numpy()
        pairs = [(r, i, j) for r, regions in enumerate(sizes) for j in range(k) for i in range(n)
                 if bool(regions[i, j].any())]
        # each image's fill once (a median selects a value: the same per image as per batch)
        fills = torch.cat([median_colour(images[s:s + batch_size]) for s in range(0, n, batch_size)])
        for start in tqdm(range(0, len(pairs), batch_size), desc="pixel ablation",
                          disable=not progress, leave=False):
            chunk = pairs[start:start + batch_size]
            rows = torch.tensor([i for _, i, _ in chunk])
            masks = torch.stack([sizes[r][i, j] for r, i, j in chunk])[:, None]
            batch = images[rows]  # a copy, painted in place: no second batch of images
            painted = torch.where(masks, fills[rows], batch, out=batch)
            scores = _probabilities(forward, painted, class_id, score).numpy()
            for (_, i, j), value in zip(chunk, scores):
                per_input[i, j] += (base[i] - value) / len(sizes)
    present = torch.stack([regions.flatten(2).any(2) for regions in sizes]).any(0)  # (n, k)
    # maps nowhere positive cannot mean anything (signed codes); regions that are empty only
    # because given thresholds (e.g. a whole dataset's) lie above these images' maps are a
    # measurement ("not in these images"), which `no_region` records
    if not present.any() and not bool((maps > 0).any()):
        raise ValueError("pixel_ablation: no concept map is positive anywhere, so no pixel can be "
                         "painted out and every importance would be 0. Constant or blank images "
                         "(one colour everywhere, e.g. tiny images enlarged) can do this: check "
                         "the images. So can signed codes (SemiNMF on transformer tokens): use an "
                         "activation-space importance such as 'ablation' or 'sobol'.")
    saturated = _saturation(base, per_input, present.numpy(), score, class_id)
    low, high = student_interval(per_input, confidence)
    # concepts whose region is empty in every image: their 0 is not a measurement (the notes
    # of an explanation say so)
    no_region = [int(j) for j in np.flatnonzero(~present.any(0).numpy())]
    info = {"quantile": quantiles[0] if len(quantiles) == 1 else list(quantiles),
            "thresholds": "given" if thresholds is not None else "images", "fill": "median",
            "score": score, "n_segments": n_segments, "n_inputs": n,
            "n_concepts": k, "confidence": confidence, "no_region": no_region,
            **({"saturated": saturated} if saturated is not None else {}), **(params or {})}
    return ConceptImportance(per_input=per_input, importances=per_input.mean(axis=0),
                             ci_low=low, ci_high=high, method="pixel_ablation",
                             class_id=int(class_id), params=info)
