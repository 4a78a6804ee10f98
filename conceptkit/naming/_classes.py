"""Naming by the classifier itself: which classes a concept pushes up through ``h``.

For images with activations ``A`` at the layer and concept codes ``U = encode(A)``, the gain of
concept ``j`` is what adding it back to the images' activations does to every logit::

    gain_j = mean_i [ h(A_i) − h(A_i − U_ij ⊗ w_j) ]          (one value per class)

(``U_ij ⊗ w_j`` is the concept's part of the activations: its coefficient map times its
direction, at every position.) The name is the class of largest mean gain, the runner-ups the
next ones. For a class explanation, the explained class itself is left out by default: every
important concept pushes it, and the next classes say what the concept looks like to the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import model_device, model_dtype, preserved_model_state


def _call(h: nn.Module, acts: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    out = h(acts) if context is None else h(acts, context)
    if isinstance(out, (tuple, list)):
        out = out[0]
    # at least float32 (a float64 model's logits stay float64); float32 logits as they are
    return out.to(torch.promote_types(out.dtype, torch.float32))


def logit_gains(h: nn.Module, activations: torch.Tensor, codes: torch.Tensor,
                components: torch.Tensor, *, context: torch.Tensor | None = None,
                batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """``(k, n_classes)`` mean logit gain of every concept (see the module notes).

    ``activations (N, C, h, w)`` or ``(N, C)``, ``codes`` their concept codes ``(N, k, h, w)`` or
    ``(N, k)``, ``components (k, C)``. Activations, codes and components are cast to ``h``'s
    dtype (float32 for a float32 model, float64 for a float64 one).
    """
    k = components.shape[0]
    device, dtype = model_device(h), model_dtype(h)
    total = None
    n = activations.shape[0]
    with preserved_model_state(h), torch.no_grad():
        starts = range(0, n, batch_size)
        for start in tqdm(starts, disable=not progress, desc="logit gains", leave=False):
            acts = activations[start:start + batch_size].to(device=device, dtype=dtype)
            code = codes[start:start + batch_size].to(device=device, dtype=dtype)
            ctx = None if context is None else context[start:start + batch_size].to(device)
            if ctx is not None and ctx.is_floating_point():
                ctx = ctx.to(dtype)  # the prefix tokens join the activations' tokens
            base = _call(h, acts, ctx)
            rows = []
            for j in range(k):
                w = components[j].to(device=device, dtype=dtype)
                if acts.ndim == 4:
                    part = code[:, j:j + 1] * w[None, :, None, None]
                else:
                    part = code[:, j:j + 1] * w[None, :]
                rows.append((base - _call(h, acts - part, ctx)).sum(0))
            batch_sum = torch.stack(rows).double().cpu()
            total = batch_sum if total is None else total + batch_sum
    return (total / n).numpy()


def default_class_names(n_classes: int) -> tuple[list[str], list[str | None]]:
    """Names and definitions for a model's outputs: ImageNet's (timm's synset files) for 1000
    outputs, ``"class i"`` otherwise."""
    if n_classes == 1000:
        from ._vocab import imagenet_gloss

        glosses = [imagenet_gloss(i) for i in range(n_classes)]
        return [lemmas.split(",")[0].strip() for lemmas, _ in glosses], \
            [f"{lemmas}: {definition}" for lemmas, definition in glosses]
    return [f"class {i}" for i in range(n_classes)], [None] * n_classes


def excluded_classes(exclude: Any, own_class: int | None, n_classes: int) -> set[int]:
    """The classes left out of the names: ``"own"`` (the explained class, when known), None or
    a list of class indices."""
    if exclude is None:
        return set()
    if isinstance(exclude, str):
        if exclude != "own":
            raise ValueError(f"`exclude` must be 'own', None or a list of class indices; got "
                             f"{exclude!r}.")
        return set() if own_class is None else {int(own_class)}
    try:
        out = {int(c) for c in exclude}
    except (TypeError, ValueError) as err:
        raise TypeError(f"`exclude` must be 'own', None or a list of class indices; got "
                        f"{exclude!r}.") from err
    bad = [c for c in out if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"`exclude` lists classes {sorted(bad)} outside [0, {n_classes}).")
    return out
