"""Where TCAV's concept sets come from: discovered concepts (codes) and user image sets."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._torchutils import check_not_inference_mode
from .._validation import check_choice, check_int, describe, to_numpy
from ..concepts._cav import SPACES, activation_features
from ..extraction import ActivationExtractor, split_model
from ._tcav import TCAVResult, tcav


def concept_sets_from_codes(codes: Any, segment_activations: Any, *,
                            concept_names: Sequence[str] | None = None, min_examples: int = 5,
                            max_examples: int | None = None) -> dict[str, Any]:
    """Split rows of activations into concept sets by their hard assignment to concepts.

    Each row goes to the concept with its largest code (rows whose codes are all <= 0 go to
    none). With ``max_examples`` only the rows with the largest codes are kept per concept.
    Concepts with fewer than ``min_examples`` rows are left out with a warning.

    Parameters
    ----------
    codes : array ``(n_rows, k)`` or an object with a ``codes`` attribute (a concept bank)
    segment_activations : array ``(n_rows, C)`` or ``(n_rows, C, h, w)``
    """
    codes = getattr(codes, "codes", codes)
    if not isinstance(codes, (np.ndarray, torch.Tensor)):
        raise TypeError(f"`codes` must be a matrix (n_rows, k) or have a `.codes` matrix; "
                        f"got {describe(codes)}.")
    codes = to_numpy(codes)
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"`codes` must be a non-empty matrix (n_rows, k); got shape "
                         f"{codes.shape}.")
    if not np.isfinite(codes).all():
        raise ValueError("`codes` contains NaN or Inf values.")
    if not isinstance(segment_activations, (np.ndarray, torch.Tensor)):
        raise TypeError("`segment_activations` must be a numpy array or torch.Tensor; got "
                        f"{describe(segment_activations)}.")
    if segment_activations.shape[0] != codes.shape[0]:
        raise ValueError(f"`codes` has {codes.shape[0]} rows but `segment_activations` has "
                         f"{segment_activations.shape[0]}; they must describe the same rows.")
    k = codes.shape[1]
    if concept_names is None:
        concept_names = [f"concept_{j}" for j in range(k)]
    concept_names = [str(n) for n in concept_names]
    if len(concept_names) != k or len(set(concept_names)) != k:
        raise ValueError(f"`concept_names` must hold {k} distinct names (one per column of "
                         f"codes); got {len(concept_names)} ({len(set(concept_names))} distinct).")
    min_examples = check_int(min_examples, "min_examples", minimum=2)
    if max_examples is not None:
        max_examples = check_int(max_examples, "max_examples", minimum=min_examples)
    assignment = codes.argmax(axis=1)
    assigned = codes.max(axis=1) > 0
    sets, too_small = {}, []
    for j, name in enumerate(concept_names):
        rows = np.flatnonzero(assigned & (assignment == j))
        if max_examples is not None and rows.shape[0] > max_examples:
            rows = rows[np.argsort(-codes[rows, j], kind="stable")[:max_examples]]
            rows = np.sort(rows)
        if rows.shape[0] < min_examples:
            too_small.append(f"{name} ({rows.shape[0]})")
            continue
        sets[name] = segment_activations[rows]
    if too_small:
        warnings.warn(f"left out concepts with fewer than {min_examples} assigned rows: "
                      f"{', '.join(too_small)}.", UserWarning, stacklevel=3)
    if not sets:
        raise ValueError(f"no concept has at least min_examples={min_examples} rows assigned "
                         "to it in `codes`; lower min_examples or check the codes.")
    return sets


def tcav_from_bank(h: Any, class_activations: Any, codes: Any, segment_activations: Any,
                   random_sets: Sequence[Any] | np.ndarray | torch.Tensor, class_id: int, *,
                   concept_names: Sequence[str] | None = None, min_examples: int = 5,
                   max_examples: int | None = None, **tcav_kwargs: Any) -> TCAVResult:
    """TCAV of discovered concepts, ACE style: a concept's examples are the rows assigned to it.

    Parameters
    ----------
    h, class_activations, random_sets, class_id
        As in :func:`tcav`. ACE uses activations of random images as ``random_sets``.
    codes : array ``(n_rows, k)`` or an object with ``.codes`` (e.g. a concept bank)
        Concept codes of the rows of ``segment_activations`` (one-hot for k-means, soft for
        NMF); each row counts as an example of its largest code.
    segment_activations : array ``(n_rows, C)`` or ``(n_rows, C, h, w)``
        Activations of the segments / crops that were factorised.
    concept_names, min_examples, max_examples
        See :func:`concept_sets_from_codes`. Concepts keep their column index in their default
        name ``concept_<j>`` even when smaller ones are left out.
    **tcav_kwargs
        Passed to :func:`tcav` (``n_runs``, ``alpha``, ``test``, ``seed``, ...).
    """
    concepts = concept_sets_from_codes(codes, segment_activations, concept_names=concept_names,
                                       min_examples=min_examples, max_examples=max_examples)
    return tcav(h, class_activations, concepts, random_sets, class_id, **tcav_kwargs)


def tcav_images(model: nn.Module, layer: str | nn.Module, class_images: Any,
                concept_images: Mapping[str, Any], random_images: Any, class_id: int, *,
                batch_size: int = 32, device: Any = None, progress: bool = True,
                **tcav_kwargs: Any) -> TCAVResult:
    """TCAV of user-given concept image sets, as in the TCAV paper.

    The model is split at ``layer`` (``conceptkit.extraction.split_model``); activations of every
    image set come from ``ActivationExtractor`` and the class logits from the ``h`` part.

    Parameters
    ----------
    model : nn.Module
        The classifier; left as found (training and grad flags, device).
    layer : str or nn.Module
        Dotted name (or the module) of the layer where CAVs live.
    class_images : Tensor ``(N, C, H, W)``, Dataset or DataLoader
        Images of the class being explained.
    concept_images : dict[str, images]
        One image set per concept.
    random_images : list of image sets, or one image set
        At least ``n_runs`` random image sets, or one pool to draw the random sets from (see
        :func:`tcav`).
    class_id : int
        Output of the model to explain.
    batch_size, device, progress
        Forward and backward batching, device, progress bars.
    **tcav_kwargs
        Passed to :func:`tcav` (``n_runs``, ``alpha``, ``test``, ``space``, ``seed``, ...).

    Notes
    -----
    Transformer layers give tokens ``(N, T, C)``, which ``h`` takes as they are; use
    ``space="flat"`` or ``space="cls"`` for them (pooled space needs maps ``(N, C, h, w)`` or
    vectors).
    """
    check_not_inference_mode("tcav_images")  # before the extraction, not after it
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {describe(model)}.")
    if not isinstance(concept_images, Mapping) or not concept_images:
        raise ValueError("`concept_images` must be a non-empty dict mapping concept names to "
                         f"image sets; got {describe(concept_images)}.")
    _, h = split_model(model, layer)
    extractor = ActivationExtractor(model, layer, batch_size=batch_size, device=device,
                                    progress=progress, tokens="raw")
    class_activations = extractor(class_images, name="class_images")
    if class_activations.ndim == 3 and tcav_kwargs.get("space", "pooled") == "pooled":
        raise ValueError(f"`layer` {extractor.layer!r} gives tokens of shape "
                         f"{tuple(class_activations.shape)}; pooled space needs maps "
                         "(N, C, h, w) or vectors (N, D). Pass space='flat' (or 'cls' for "
                         "the CLS token of a CLS-pooled transformer).")
    concepts = {name: extractor(images, name=f"concept_images[{name!r}]")
                for name, images in concept_images.items()}
    if isinstance(random_images, (list, tuple)):
        randoms: Any = [extractor(images, name=f"random_images[{i}]")
                        for i, images in enumerate(random_images)]
    else:
        randoms = extractor(random_images, name="random_images")
    _check_sizes(class_activations, concepts, randoms, tcav_kwargs.get("space", "pooled"))
    return tcav(h, class_activations, concepts, randoms, class_id, batch_size=batch_size,
                device=device, progress=progress, **tcav_kwargs)


def _check_sizes(class_activations: Any, concepts: Mapping[str, Any], randoms: Any,
                 space: Any) -> None:
    """The checks :func:`tcav` makes on the activations' sizes, naming this function's
    arguments (``concept_images['a']``, ``random_images[3]``) rather than tcav's."""
    space = check_choice(space, "space", SPACES)
    dim = activation_features(class_activations, "class_images", space).shape[1]
    for name, activations in concepts.items():
        activation_features(activations, f"concept_images[{name!r}]", space, dim=dim,
                            min_rows=2)
    if isinstance(randoms, list):
        for i, activations in enumerate(randoms):
            activation_features(activations, f"random_images[{i}]", space, dim=dim, min_rows=2)
    else:
        activation_features(randoms, "random_images", space, dim=dim, min_rows=4)
