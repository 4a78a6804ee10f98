"""Directional derivatives along concept activation vectors (CAVs).

The CAVs themselves are fitted in :mod:`conceptkit.concepts._cav` (one fit for TCAV and the
post-hoc CBM). The directional derivative of the class logit along a CAV says whether moving an
input's activation towards the concept raises the logit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._reprs import dataclass_repr
from .._torchutils import model_device, model_dtype
from .._validation import check_choice, check_int, describe, resolve_device
from ..concepts._cav import CAV, SPACES
from ._engine import model_guard


def logit_gradients(h: Any, activations: Any, class_id: int, *, space: str = "pooled",
                    batch_size: int = 64, device: Any = None, progress: bool = False,
                    name: str = "activations") -> np.ndarray:
    """Gradients of the class logit with respect to the activations, in CAV space ``(n, D)``.

    For maps in pooled space this is the gradient summed over positions, so that its dot product
    with a channel vector ``v`` is the derivative along ``v`` added at every position.
    """
    class_id = check_int(class_id, "class_id", minimum=0)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    space = check_choice(space, "space", SPACES)
    if not callable(h):
        raise TypeError(f"`h` must be a callable (e.g. an nn.Module) mapping activations to "
                        f"logits (n, n_classes); got {describe(h)}.")
    if isinstance(activations, np.ndarray):
        activations = torch.from_numpy(np.ascontiguousarray(activations))
    if not isinstance(activations, torch.Tensor):
        raise TypeError(f"`{name}` must be a numpy array or torch.Tensor of activations; "
                        f"got {describe(activations)}.")
    if activations.ndim not in (2, 4) and space == "pooled":
        raise ValueError(f"`{name}` must have shape (n, C, h, w) or (n, D) in pooled space; "
                         f"got shape {tuple(activations.shape)}.")
    if activations.ndim not in (2, 3) and space == "cls":
        raise ValueError(f"`{name}` must be transformer tokens (n, T, C) with the CLS token "
                         f"first, or vectors (n, D), in cls space; got shape "
                         f"{tuple(activations.shape)}.")
    if activations.ndim < 2 or activations.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty batch (n, ...); "
                         f"got shape {tuple(activations.shape)}.")
    if not torch.isfinite(activations.float()).all():
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    is_module = isinstance(h, nn.Module)
    if is_module:
        dtype = model_dtype(h)
    else:
        dtype = activations.dtype if activations.is_floating_point() else torch.float32
        device = resolve_device(activations.device if device is None else device)
    chunks = []
    # modules: eval mode, flags restored, moved to `device` and back (see model_guard)
    with model_guard(h, device), torch.enable_grad():
        if is_module:
            device = model_device(h)
            for parameter in h.parameters():
                parameter.requires_grad_(False)  # only input gradients are needed
        starts = range(0, activations.shape[0], batch_size)
        for start in tqdm(starts, desc="logit gradients", disable=not progress, leave=False):
            batch = activations[start:start + batch_size].to(device=device, dtype=dtype)
            batch = batch.detach().requires_grad_(True)
            logits = h(batch)
            _check_logits(logits, batch.shape[0], class_id)
            (grad,) = torch.autograd.grad(logits[:, class_id].sum(), batch, allow_unused=True)
            if grad is None:  # the logit needs grad (parameters), but not through the input
                raise ValueError(f"`h` gives a class-{class_id} logit that does not depend on "
                                 f"its input: the activations passed to `h` are not used in "
                                 f"computing it (e.g. `h` ignores its argument, or detaches "
                                 f"it), so no directional derivative exists. `h` must map the "
                                 f"activations `{name}` to the logits.")
            if not (torch.isfinite(logits[:, class_id]).all() and torch.isfinite(grad).all()):
                raise ValueError(f"`h` gives a class-{class_id} logit or gradient that is NaN or "
                                 f"infinite on `{name}` rows {start}-"
                                 f"{start + batch.shape[0] - 1}: no directional derivative can be "
                                 f"computed there (a sqrt or log of a negative value in `h`, an "
                                 f"overflow in a half-precision model?). Check `h` on those rows.")
            if grad.ndim == 4 and space == "pooled":
                grad = grad.sum(dim=(2, 3))
            elif grad.ndim == 3 and space == "cls":
                grad = grad[:, 0]  # moving the CLS token alone; the patch tokens stay
            chunks.append(grad.reshape(grad.shape[0], -1).detach().to("cpu", torch.float64))
    return torch.cat(chunks).numpy()


def _check_logits(logits: Any, n: int, class_id: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"`h` must return logits of shape (n, n_classes) = ({n}, K); "
                         f"got {describe(logits)}.")
    if class_id >= logits.shape[1]:
        raise ValueError(f"`class_id` must be < {logits.shape[1]} (the number of outputs of h); "
                         f"got {class_id}.")
    if not logits.requires_grad:
        raise ValueError("the output of `h` does not depend on its input activations; "
                         "no gradient can be taken.")


def directional_derivatives(h: Any, activations: Any, cav: CAV, class_id: int, *,
                            batch_size: int = 64, device: Any = None,
                            progress: bool = False) -> np.ndarray:
    """Derivative of the class logit along a CAV, one value per input ``(n,)``.

    ``S_i = ∇_A h(A_i)[class_id] · v``. The gradient is of the **class logit**, so a positive
    value means that moving towards the concept raises the class score and the TCAV score counts
    ``S_i > 0`` (the paper's convention; Captum's ``sign_count``). tensorflow/tcav differentiates
    the *loss* instead and counts ``S_i < 0``; with a cross-entropy loss the two signs agree only
    up to the softmax coupling with the other classes, so scores from the two codes can differ.

    In pooled space, ``v`` (length C) is broadcast to every position of maps ``(n, C, h, w)``:
    ``S_i = Σ_{c,y,x} ∂h/∂A[c,y,x] · v[c] = d/dε h(A_i + ε v ⊗ 1_{h×w})``. If ``h`` only
    depends on the spatial mean of ``A``, this is the derivative with respect to the pooled
    activation along ``v`` (moving every position by ``v`` moves the mean by ``v``). In flat
    space ``v`` is reshaped to ``(C, h, w)`` and ``S_i`` is the plain dot product.

    Parameters
    ----------
    h : nn.Module or callable
        Maps activations ``(n, C, h, w)`` or ``(n, D)`` to logits ``(n, n_classes)``. A module is
        run in eval mode; its training flags and ``requires_grad`` flags are restored after.
    activations : np.ndarray or torch.Tensor
        Activations of the inputs, in the layout ``h`` takes.
    cav : CAV
        From :func:`compute_cav`, in a space whose dimension matches these activations.
    class_id : int
        Output of ``h`` to differentiate.
    batch_size, device, progress
        Batching of the backward passes, where to run them, and a progress bar.
    """
    if not isinstance(cav, CAV):
        raise TypeError(f"`cav` must be a CAV from compute_cav; got {describe(cav)}.")
    gradients = logit_gradients(h, activations, class_id, space=cav.space,
                                batch_size=batch_size, device=device, progress=progress)
    if gradients.shape[1] != cav.vector.shape[0]:
        raise ValueError(f"`cav` has {cav.vector.shape[0]} dimensions but `activations` give "
                         f"{gradients.shape[1]} in {cav.space!r} space "
                         f"(shape {tuple(activations.shape)}).")
    return gradients @ cav.vector


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
CAV.__repr__ = dataclass_repr  # type: ignore[method-assign]
