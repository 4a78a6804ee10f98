"""Concept activation vectors (CAVs) and directional derivatives along them.

A CAV is the normal of a linear boundary that separates a concept's activations from random
activations at one layer, oriented from the random side towards the concept side (Kim et al.,
TCAV, 2018). The directional derivative of the class logit along that normal says whether moving
an input's activation towards the concept raises the logit.

Activation spaces
-----------------
``space="pooled"`` (the default) averages maps ``(n, C, h, w)`` over positions to ``(n, C)`` before
fitting, so a CAV lives in channel space. This is what ACE clusters and scores (``channel_mean``),
it makes concept sets of any spatial size comparable, and it keeps the classifier small. The CAV is
then applied at every position of the class activations (see :func:`directional_derivatives`).
``space="flat"`` flattens maps to ``(n, C*h*w)`` in channel-major order, as tensorflow/tcav and
Captum do; it requires every set to share the spatial size of the class activations.
Activations that are already vectors ``(n, D)`` are used as they are in either space.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import model_device, model_dtype
from .._validation import (
    check_choice,
    check_float,
    check_int,
    describe,
    make_rng,
    resolve_device,
    to_numpy,
)
from ._engine import model_guard

SPACES = ("pooled", "flat")
CLASSIFIERS = ("sgd", "logistic", "mean_difference")


@dataclass(frozen=True, eq=False)
class CAV:
    """A concept activation vector.

    Attributes
    ----------
    vector : np.ndarray, shape (D,)
        Unit-norm normal of the boundary, pointing from random towards concept activations.
    intercept : float
        Offset of the boundary for ``vector``: an activation ``a`` is classified as the concept
        when ``vector @ a + intercept > 0``.
    accuracy : float
        Accuracy of that rule on the held-out split (balanced classes, so 0.5 is chance).
    classifier : str
        ``"sgd"``, ``"logistic"`` or ``"mean_difference"``.
    space : str
        ``"pooled"`` (D = C) or ``"flat"`` (D = C*h*w).
    """

    vector: np.ndarray
    intercept: float
    accuracy: float
    classifier: str
    space: str

    def decision_function(self, activations: Any) -> np.ndarray:
        """Signed distance ``vector @ a + intercept`` of activations ``(n, ...)`` in this space."""
        features = activation_features(activations, "activations", self.space,
                                       dim=self.vector.shape[0])
        return features @ self.vector + self.intercept


def activation_features(activations: Any, name: str, space: str, *,
                        dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """Validate a set of activations and return its rows in CAV space, float64 ``(n, D)``.

    Maps ``(n, C, h, w)`` are averaged over positions (``"pooled"``) or flattened (``"flat"``);
    vectors ``(n, D)`` pass through unchanged. ``dim`` is the D that the caller expects.
    """
    if isinstance(activations, (list, tuple)):
        raise TypeError(f"`{name}` must be one numpy array or torch.Tensor of activations; "
                        f"got a {type(activations).__name__}.")
    if not isinstance(activations, (np.ndarray, torch.Tensor)):
        raise TypeError(f"`{name}` must be a numpy array or torch.Tensor of activations "
                        f"(n, C, h, w) or (n, D); got {describe(activations)}.")
    array = to_numpy(activations)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"`{name}` must hold real numbers; got dtype {array.dtype}.")
    if array.ndim == 4:
        if space == "pooled":
            array = array.mean(axis=(2, 3))
        else:
            array = array.reshape(array.shape[0], -1)
    elif array.ndim == 3 and space == "pooled":
        raise ValueError(f"`{name}` has shape {array.shape}: pooled space needs maps "
                         "(n, C, h, w) or vectors (n, D); use space='flat' for other layouts.")
    elif array.ndim == 3:
        array = array.reshape(array.shape[0], -1)
    elif array.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, C, h, w) or (n, D); "
                         f"got shape {array.shape}.")
    if array.shape[0] < min_rows:
        raise ValueError(f"`{name}` needs at least {min_rows} examples; got {array.shape[0]}.")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"`{name}` gives {array.shape[1]} features per example in {space!r} "
                         f"space, but {dim} were expected (from the other activations); "
                         f"original shape {tuple(activations.shape)}.")
    array = np.asarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    return array


def balanced_split(n_concept: int, n_random: int, *, test_size: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray]:
    """Row indices of a balanced, stratified train/test split.

    The larger set is truncated to the size of the smaller one by a seeded draw without
    replacement (tensorflow/tcav keeps its first rows instead); the balanced rows are then split
    with ``sklearn.model_selection.train_test_split(test_size, stratify=labels)``.

    Returns
    -------
    concept_train, concept_test, random_train, random_test : np.ndarray of int
        Indices into the concept rows and into the random rows.
    """
    n = min(n_concept, n_random)
    concept_rows = np.sort(rng.choice(n_concept, n, replace=False)) if n_concept > n \
        else np.arange(n)
    random_rows = np.sort(rng.choice(n_random, n, replace=False)) if n_random > n \
        else np.arange(n)
    rows = np.concatenate([concept_rows, random_rows])
    labels = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    state = int(rng.integers(2**31 - 1))
    train, test, y_train, y_test = train_test_split(rows, labels, test_size=test_size,
                                                    stratify=labels, random_state=state)
    return train[y_train == 1], test[y_test == 1], train[y_train == 0], test[y_test == 0]


def _check_split_sizes(n_concept: int, n_random: int, test_size: float, what: str) -> None:
    n = min(n_concept, n_random)
    n_test = int(np.ceil(test_size * 2 * n))
    if n < 2 or n_test < 2 or 2 * n - n_test < 2:
        raise ValueError(
            f"{what}: too few examples to train and test a CAV with test_size={test_size} "
            f"(concept set has {n_concept} rows, random set {n_random}); each set needs at "
            "least 2 rows and both splits at least one row of each set."
        )


def _fit_direction(x_train: np.ndarray, y_train: np.ndarray, classifier: str,
                   state: int) -> tuple[np.ndarray, float]:
    """Unnormalised normal and intercept of the boundary, oriented towards label 1."""
    if classifier == "mean_difference":
        mean_concept = x_train[y_train == 1].mean(axis=0)
        mean_random = x_train[y_train == 0].mean(axis=0)
        direction = mean_concept - mean_random
        # The boundary goes through the midpoint of the two means.
        return direction, -float(direction @ (mean_concept + mean_random) / 2)
    if classifier == "sgd":
        # tensorflow/tcav and Captum defaults: hinge loss, i.e. a linear SVM.
        model = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=state)
    else:
        # tensorflow/tcav uses LogisticRegression(); more iterations avoid spurious warnings.
        model = LogisticRegression(max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    # sklearn orders classes_ = [0, 1], so coef_ points towards label 1 (the concept).
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def fit_cav(concept: np.ndarray, random: np.ndarray, *, classifier: str, space: str,
            test_size: float, rng: np.random.Generator, what: str = "compute_cav") -> CAV:
    """Fit a CAV on already validated feature rows ``(n, D)`` (internal fast path)."""
    _check_split_sizes(len(concept), len(random), test_size, what)
    c_train, c_test, r_train, r_test = balanced_split(len(concept), len(random),
                                                      test_size=test_size, rng=rng)
    x_train = np.concatenate([concept[c_train], random[r_train]])
    y_train = np.concatenate([np.ones(len(c_train)), np.zeros(len(r_train))]).astype(int)
    state = int(rng.integers(2**31 - 1))
    direction, intercept = _fit_direction(x_train, y_train, classifier, state)
    norm = float(np.linalg.norm(direction))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{what}: the {classifier!r} classifier found no direction between the "
                         "concept and random activations (zero vector); the two sets are "
                         "indistinguishable in this layer.")
    vector = direction / norm
    intercept = intercept / norm
    concept_hits = (concept[c_test] @ vector + intercept) > 0
    random_hits = (random[r_test] @ vector + intercept) <= 0
    accuracy = float(np.concatenate([concept_hits, random_hits]).mean())
    return CAV(vector=vector, intercept=float(intercept), accuracy=accuracy,
               classifier=classifier, space=space)


def compute_cav(concept_activations: Any, random_activations: Any, *, classifier: str = "sgd",
                space: str = "pooled", seed: int | np.random.Generator | None = None,
                test_size: float = 0.33) -> CAV:
    """Train a concept activation vector separating a concept from random activations.

    Parameters
    ----------
    concept_activations, random_activations : np.ndarray or torch.Tensor
        Activations of the concept examples and of random examples at the same layer,
        ``(n, C, h, w)`` maps or ``(n, D)`` vectors (both sets in the same layout after pooling).
    classifier : {"sgd", "logistic", "mean_difference"}
        ``"sgd"``: ``SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)`` with hinge loss (a
        linear SVM), the default of tensorflow/tcav and Captum. ``"logistic"``:
        ``LogisticRegression``. ``"mean_difference"``: the difference of the two training means,
        with the boundary at their midpoint (cheap and stable, as in FastCAV).
    space : {"pooled", "flat"}
        ``"pooled"`` averages maps over positions, ``(n, C)``; ``"flat"`` flattens them,
        ``(n, C*h*w)``. See the module notes.
    seed : int, np.random.Generator or None
        Drives the class balancing, the split and the SGD shuffling.
    test_size : float
        Held-out fraction for ``accuracy`` (stratified), 0.33 as in tensorflow/tcav and Captum.

    Returns
    -------
    CAV
        Unit-norm ``vector`` pointing from random towards the concept, ``intercept`` and
        held-out ``accuracy``.
    """
    classifier = check_choice(classifier, "classifier", CLASSIFIERS)
    space = check_choice(space, "space", SPACES)
    test_size = check_float(test_size, "test_size", minimum=0.0, maximum=1.0,
                            strict_minimum=True)
    if test_size >= 1.0:
        raise ValueError(f"`test_size` must be < 1; got {test_size}.")
    concept = activation_features(concept_activations, "concept_activations", space, min_rows=2)
    random = activation_features(random_activations, "random_activations", space,
                                 dim=concept.shape[1], min_rows=2)
    return fit_cav(concept, random, classifier=classifier, space=space, test_size=test_size,
                   rng=make_rng(seed))


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
            (grad,) = torch.autograd.grad(logits[:, class_id].sum(), batch)
            if grad.ndim == 4 and space == "pooled":
                grad = grad.sum(dim=(2, 3))
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
