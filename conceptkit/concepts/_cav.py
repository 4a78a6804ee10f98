"""Concept activation vectors (CAVs): the one fit of a linear concept direction.

A CAV is the normal of a linear boundary that separates a concept's activations from random
activations at one layer, oriented from the random side towards the concept side (Kim et al.,
TCAV, 2018). TCAV (:mod:`conceptkit.importance`) differentiates the class logit along it; the
post-hoc CBM (:class:`conceptkit.bottleneck.CAVBank`) reads embeddings' margins to it. Both fit
it here (:func:`fit_boundary`).

Activation spaces
-----------------
``space="pooled"`` (the default) averages maps ``(n, C, h, w)`` over positions to ``(n, C)`` before
fitting, so a CAV lives in channel space. This is what ACE clusters and scores (``channel_mean``),
it makes concept sets of any spatial size comparable, and it keeps the classifier small. The CAV is
then applied at every position of the class activations (see
:func:`conceptkit.importance.directional_derivatives`). ``space="flat"`` flattens maps to
``(n, C*h*w)`` in channel-major order, as tensorflow/tcav and Captum do; it requires every set to
share the spatial size of the class activations. ``space="cls"`` takes transformer tokens
``(n, T, C)`` (batch first, the CLS token first, as timm gives them) and keeps the CLS token: a
CAV of what the token a CLS-pooled transformer classifies from holds, wherever the concept images
show the concept; TCAV then moves only that token along it. Activations that are already vectors
``(n, D)`` are used as they are in every space.
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
from sklearn.svm import SVC

from .._validation import check_choice, check_float, describe, make_rng, to_numpy

SPACES = ("pooled", "flat", "cls")
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
    tokens ``(n, T, C)`` are flattened (``"flat"``) or give their first (CLS) token (``"cls"``);
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
    if space == "cls" and array.ndim != 2:
        if array.ndim != 3:
            raise ValueError(f"`{name}` has shape {array.shape}: cls space needs transformer "
                             "tokens (n, T, C) whose first token is the CLS token, or vectors "
                             "(n, D); use space='pooled' or 'flat' for maps.")
        array = array[:, 0, :]
    elif array.ndim == 4:
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


def _fit_direction(x_train: np.ndarray, y_train: np.ndarray, classifier: str, state: int,
                   C: float) -> tuple[np.ndarray, float]:
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
    elif classifier == "svm":
        # the post-hoc CBM's CAVs (Yuksekgonul et al.): an exact linear SVM. Its seed is given
        # although a linear SVM without probabilities draws nothing from it: without one,
        # scikit-learn draws libsvm's seed from numpy's global stream, moving the caller's
        model = SVC(kernel="linear", C=C, random_state=state)
    else:
        # tensorflow/tcav uses LogisticRegression(); more iterations avoid spurious warnings.
        # (lbfgs draws nothing; the seed keeps any solver off numpy's global stream)
        model = LogisticRegression(max_iter=1000, random_state=state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    # sklearn orders classes_ = [0, 1], so coef_ points towards label 1 (the concept).
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def fit_boundary(concept_train: np.ndarray, random_train: np.ndarray, concept_test: np.ndarray,
                 random_test: np.ndarray, *, classifier: str, space: str, state: int = 0,
                 C: float = 0.1, what: str = "compute_cav") -> CAV:
    """The one CAV fit: a linear boundary between concept rows and random rows ``(n, D)``.

    ``classifier`` is one of :data:`CLASSIFIERS` or ``"svm"`` (``SVC(kernel="linear", C)``, the
    post-hoc CBM's banks); ``state`` seeds the SGD classifier. The CAV is the boundary's unit
    normal, pointing towards the concept rows, with its intercept scaled alike; ``accuracy`` is
    that rule's accuracy on the held-out rows (NaN when there are none).
    """
    x_train = np.concatenate([concept_train, random_train])
    y_train = np.concatenate([np.ones(len(concept_train)), np.zeros(len(random_train))]).astype(int)
    direction, intercept = _fit_direction(x_train, y_train, classifier, state, C)
    norm = float(np.linalg.norm(direction))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{what}: the {classifier!r} classifier found no direction between the "
                         "concept and random activations (zero vector); the two sets are "
                         "indistinguishable in this layer.")
    vector = direction / norm
    intercept = intercept / norm
    concept_hits = (concept_test @ vector + intercept) > 0
    random_hits = (random_test @ vector + intercept) <= 0
    hits = np.concatenate([concept_hits, random_hits])
    accuracy = float(hits.mean()) if hits.size else float("nan")
    return CAV(vector=vector, intercept=float(intercept), accuracy=accuracy,
               classifier=classifier, space=space)


def fit_cav(concept: np.ndarray, random: np.ndarray, *, classifier: str, space: str,
            test_size: float, rng: np.random.Generator, what: str = "compute_cav") -> CAV:
    """TCAV's protocol on already validated feature rows ``(n, D)``: a balanced, stratified
    train/test split (:func:`balanced_split`), then :func:`fit_boundary`."""
    _check_split_sizes(len(concept), len(random), test_size, what)
    c_train, c_test, r_train, r_test = balanced_split(len(concept), len(random),
                                                      test_size=test_size, rng=rng)
    state = int(rng.integers(2**31 - 1))
    return fit_boundary(concept[c_train], random[r_train], concept[c_test], random[r_test],
                        classifier=classifier, space=space, state=state, what=what)


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
    space : {"pooled", "flat", "cls"}
        ``"pooled"`` averages maps over positions, ``(n, C)``; ``"flat"`` flattens them,
        ``(n, C*h*w)``; ``"cls"`` keeps the CLS token of transformer tokens ``(n, T, C)``,
        ``(n, C)``. See the module notes.
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
    cav = fit_cav(concept, random, classifier=classifier, space=space, test_size=test_size,
                  rng=make_rng(seed))
    if cav.accuracy <= 0.5:  # balanced held-out split: 0.5 is a coin flip
        warnings.warn(f"compute_cav: the CAV's held-out accuracy is {cav.accuracy:.3f}, at or "
                      f"below chance (0.5): the classifier cannot tell `concept_activations` "
                      f"from `random_activations` at this layer (are they the same examples, or "
                      f"is the concept absent here?), so the CAV's direction is noise. Use other "
                      f"concept examples, more of them, or another layer.", UserWarning,
                      stacklevel=2)
    return cav
