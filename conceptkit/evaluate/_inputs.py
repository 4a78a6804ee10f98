"""Checks and small helpers shared by the evaluation functions: part masks, part names, the class
score of a model, and the duck-typed pieces of an explanation (importances, maps)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import model_device, model_dtype
from .._validation import (
    are_probabilities,
    check_choice,
    check_images,
    check_int,
    check_not_meta,
    describe,
    resolve_device,
)

#: What a class score is measured in: the class probability (softmax; sigmoid for one output) or
#: the class logit.
MEASURES = ("probability", "logit")


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {describe(model)}.")
    return model


def same_weights(a: Any, b: nn.Module) -> bool:
    """Whether ``a`` is the module ``b`` or a module with the same weights (the digest that
    explanation files record)."""
    from ..extraction._fingerprint import module_digest

    return a is b or (isinstance(a, nn.Module) and module_digest(a) == module_digest(b))


def check_masks(masks: Any, images: torch.Tensor | None = None, name: str = "masks",
                n_images: int | None = None, other: str = "`images`") -> torch.Tensor:
    """Part masks ``(N, P, H, W)`` as a bool tensor; N (and H, W) must agree with ``images``."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or numpy array of shape (N, P, H, W) "
                        f"(one boolean mask per image and part); got {describe(masks)}.")
    check_not_meta(masks, name)
    if masks.ndim != 4:
        hint = " (one part? add the part axis with masks[:, None])" if masks.ndim == 3 else ""
        raise ValueError(f"`{name}` must have 4 dimensions (N, P, H, W); got shape "
                         f"{tuple(masks.shape)}{hint}.")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() or masks.dtype in (torch.uint8, torch.int8, torch.int16,
                                                        torch.int32, torch.int64):
            values = torch.unique(masks)
            if not bool(((values == 0) | (values == 1)).all()):
                raise ValueError(f"`{name}` must be boolean (or hold only 0 and 1); got values "
                                 f"{values[:6].tolist()}{'...' if values.numel() > 6 else ''}.")
            masks = masks != 0
        else:
            raise TypeError(f"`{name}` must be boolean; got dtype {masks.dtype}.")
    expected_n = images.shape[0] if images is not None else n_images
    if expected_n is not None and masks.shape[0] != expected_n:
        raise ValueError(f"`{name}` has {masks.shape[0]} images but {other} has {expected_n}; "
                         f"pass one (P, H, W) stack of masks per image.")
    if images is not None and tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
        raise ValueError(f"`{name}` is {tuple(masks.shape[-2:])} pixels but `images` are "
                         f"{tuple(images.shape[-2:])}; masks must be drawn at the image size.")
    if masks.shape[1] == 0:
        raise ValueError(f"`{name}` has no parts (shape {tuple(masks.shape)}).")
    return masks.cpu()


def check_part_names(part_names: Any, n_parts: int) -> tuple[str, ...] | None:
    if part_names is None:
        return None
    if isinstance(part_names, str) or not isinstance(part_names, Sequence):
        raise TypeError(f"`part_names` must be a sequence of {n_parts} strings; got "
                        f"{describe(part_names)}.")
    names = tuple(str(name) for name in part_names)
    if len(names) != n_parts:
        raise ValueError(f"`part_names` has {len(names)} names but `masks` has {n_parts} parts.")
    return names


#: ``Localisation.concept_parts`` of a concept on no part: its maps hit no eligible part.
BACKGROUND = -1
#: ``Localisation.concept_parts`` when no part is shown in enough images to place any concept.
UNDETERMINED = -2


def part_label(part: int, part_names: tuple[str, ...] | None) -> str:
    """A readable name of part ``part`` (:data:`BACKGROUND`: no part; :data:`UNDETERMINED`:
    too few images show any part to tell)."""
    if part == UNDETERMINED:
        return "undetermined"
    if part < 0:
        return "background"
    return part_names[part] if part_names is not None else f"part {part}"


def check_preprocess(preprocess: Any) -> Callable | None:
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"`preprocess` must be callable or None; got {describe(preprocess)}.")
    return preprocess


def check_class_id(class_id: Any, n_outputs: int | None = None) -> int:
    class_id = check_int(class_id, "class_id", minimum=0)
    if n_outputs is not None and class_id >= n_outputs:
        raise ValueError(f"`class_id` is {class_id} but the model has {n_outputs} outputs; "
                         f"expected a class in 0..{n_outputs - 1}.")
    return class_id


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise ValueError(f"the model must return logits of shape (N, n_classes); got "
                         f"{describe(output)}.")
    return output


def refuse_probabilities(out: torch.Tensor) -> None:
    """Refuse a model whose output ``(B, n_classes)``, ``n_classes >= 2``, is probabilities: every
    row non-negative and summing to 1 (:func:`conceptkit._validation.are_probabilities`)."""
    if are_probabilities(out):
        raise ValueError(f"`model` returns probabilities (rows sum to 1); conceptkit.evaluate needs "
                         f"logits: pass the model without its softmax (every row of its "
                         f"{out.shape[1]} outputs on {out.shape[0]} image(s) is >= 0 and sums to "
                         f"1; the class probability is taken as the softmax of the output, so "
                         f"the model's own would be applied twice).")


def class_scores(model: nn.Module, images: torch.Tensor, class_id: int, *,
                 preprocess: Callable | None, device: torch.device, batch_size: int,
                 progress: bool = False, desc: str = "class scores",
                 probe: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probability and class logit ``(N,)`` each, for images in [0, 1] (the caller holds the
    model in eval mode under ``torch.no_grad``). The model must return logits: with ``probe``
    (the untouched images, scored first), a first batch whose rows are all probabilities (>= 0,
    summing to 1, two classes or more) is refused. Painted images are not probed: a logit model
    may well give ``[0, 1]`` to every image once its evidence is painted out."""
    probabilities, logits = [], []
    dtype = model_dtype(model)
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, disable=not progress, desc=desc, leave=False):
        batch = images[start:start + batch_size].to(device)
        if preprocess is not None:
            batch = preprocess(batch)
        try:
            raw = model(batch.to(dtype=dtype))
        except (RuntimeError, ValueError, TypeError) as err:
            if start != 0 or isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            given = " after `preprocess`" if preprocess is not None else ""
            raise ValueError(f"`images` (a batch of shape {tuple(batch.shape)}{given}) cannot be "
                             f"run through {type(model).__name__}: {type(err).__name__}: "
                             f"{str(err).rstrip('.')}. Check the number of channels and the "
                             f"size the model takes (and `preprocess`).") from err
        out = _logits(raw).float()  # its own error: the output, not the images, is wrong
        check_class_id(class_id, out.shape[1])
        finite = torch.isfinite(out).all(dim=1)
        if not bool(finite.all()):
            raise ValueError(f"the model returned NaN or infinite logits for "
                             f"{int((~finite).sum())} of {out.shape[0]} images: no drop can be "
                             f"measured from them. Check the model on these images, and `fill`: "
                             f"an image with a part painted out may be one it does not expect.")
        if probe and start == 0:
            refuse_probabilities(out)
        prob = (torch.sigmoid(out[:, 0]) if out.shape[1] == 1
                else torch.softmax(out, dim=1)[:, class_id])
        probabilities.append(prob.cpu().double())
        logits.append(out[:, class_id].cpu().double())
    return torch.cat(probabilities).numpy(), torch.cat(logits).numpy()


def run_device(model: nn.Module, device: Any) -> torch.device:
    """Where the model runs: ``device`` if given (the model must already be there), else the
    device of its parameters. The model is never moved."""
    if device is None:
        return model_device(model)
    device = resolve_device(device)
    here = model_device(model)
    if here.type != device.type or (device.index is not None and here.index != device.index):
        raise ValueError(f"`device` is {device} but the model's parameters are on {here}; "
                         f"move the model yourself (conceptkit leaves it where it is) or pass "
                         f"device=None.")
    return device


def check_measure(measure: Any) -> str:
    return check_choice(measure, "measure", MEASURES)


def importances_of(result: Any) -> np.ndarray:
    """The class-level importances ``(k,)`` of an explanation (its ``importances`` attribute)."""
    if not hasattr(result, "importances"):
        raise TypeError(f"`result` must be an explanation with `importances` (k,) and "
                        f"`concept_maps(images, kind=...)`, such as a ClassConcepts; got "
                        f"{describe(result)}.")
    values = np.asarray(result.importances, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`result.importances` must be a non-empty vector (k,); got shape "
                         f"{values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError("`result.importances` contains NaN or Inf values.")
    return values


def class_id_of(result: Any, class_id: Any) -> int:
    """``class_id``, or the explanation's own; a ``class_id`` other than the class ``result``
    explains is refused (its concepts and importances are those of its own class)."""
    explained = getattr(result, "class_id", None)
    if class_id is None:
        if explained is None:
            raise ValueError("`class_id` is None and `result` has no `class_id`; pass the class "
                             "whose score the explanation explains.")
        return check_class_id(explained)
    class_id = check_class_id(class_id)
    if explained is not None and check_class_id(explained) != class_id:
        raise ValueError(f"`class_id` is {class_id} but `result` explains class "
                         f"{int(explained)}: its concepts and importances would be scored "
                         f"against another class's score. Leave `class_id` out (it defaults "
                         f"to `result.class_id`) or pass the explanation of class {class_id}.")
    return class_id


def checked_images(images: Any) -> torch.Tensor:
    return check_images(images, "images", pixels=True)


def model_at_layer_of(result: Any) -> Any:
    """The explanation's handle on its model (``model_at_layer``: ``model``, ``maps_head``,
    ``activations(images, with_context=...)``, ``preprocess``), or None. Objects without that
    attribute may offer the same as ``explainer``."""
    handle = getattr(result, "model_at_layer", None)
    if handle is None and not hasattr(type(result), "model_at_layer"):
        handle = getattr(result, "explainer", None)
    return handle


def is_class_concepts(result: Any) -> bool:
    """Whether ``result`` is conceptkit's own ClassConcepts (or a subclass of it). Known by its
    class's name and module, as this package imports no pipeline code."""
    return any(cls.__name__ == "ClassConcepts" and cls.__module__.startswith("conceptkit.")
               for cls in type(result).__mro__)


def fitted_on(result: Any, images: torch.Tensor | None) -> bool:
    """Whether ``images`` are the very images the ClassConcepts ``result`` was fitted on, so that
    its fitted path (``concept_maps(None, ...)``, its cached activations) gives their maps. Only
    conceptkit's own explanations: an ``images`` attribute of another object says nothing of
    what its ``concept_maps(None)`` or ``activations`` would be."""
    if images is None or not is_class_concepts(result):
        return False
    fitted = getattr(result, "images", None)
    return (isinstance(fitted, torch.Tensor) and fitted.shape == images.shape
            and torch.equal(fitted.cpu(), images.cpu()))
