"""How much to trust a name: a CoSy-style AUC on a probe set (Kopf et al., NeurIPS 2024).

CoSy compares a unit's activations on images that show its textual explanation with its
activations on control images. With a probe set whose images carry labels or part masks, the
offline analogue is direct: the images that contain the named part (or belong to the named class)
against all the other probe images. The AUC is the probability that a random image with the named
thing activates the concept more than a random image without it (ties count one half): 0.5 is
chance, 1 a perfect detector, 0 a perfect anti-detector: below 0.5 the images with the named thing
activate the concept *less* than the others (over the probe, the name says the opposite of what
the concept responds to). Such a name is kept — a concept is named by its score alone — and
flagged (:attr:`ConceptName.below_chance`, a ``!`` in the table, a note).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from .._validation import check_not_meta, describe, to_numpy

#: The trust (AUC) of a concept whose activation tells nothing of the named thing.
CHANCE = 0.5


def _vector(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D numeric numpy array (a numpy array, a tensor or a list)."""
    check_not_meta(values, name)
    try:
        array = to_numpy(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"`{name}` must be a 1-D array of numbers; got {describe(values)} "
                        f"({err}).") from err
    if array.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be a 1-D array of numbers; got {describe(values)}.")
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, one value per image; got shape "
                         f"{array.shape}.")
    return array


def activation_auc(activations: Any, positive: Any) -> float | None:
    """AUC of ``activations (N,)`` separating ``positive (N,)`` images from the rest.

    ``activations``: finite numbers, one per image; ``positive``: booleans (or 0 / 1), one per
    image, True for the images that show the named thing. None when one side is empty
    (nothing to compare).
    """
    values = _vector(activations, "activations")
    flags = _vector(positive, "positive")
    if flags.shape != values.shape:
        raise ValueError(f"`positive` must hold one flag per image of `activations` "
                         f"({values.shape[0]}); got {flags.shape[0]}.")
    if not np.isfinite(values.astype(np.float64)).all():
        raise ValueError("`activations` contains NaN or Inf values; the AUC ranks them and "
                         "would be meaningless.")
    if flags.dtype.kind != "b":
        if not np.isin(flags, (0, 1)).all():
            odd = np.unique(flags[~np.isin(flags, (0, 1))])[:5].tolist()
            raise ValueError(f"`positive` must be booleans or 0 / 1 (True for the images that "
                             f"show the named thing); got values such as {odd}.")
    return _auc(values, flags.astype(bool))


def _auc(activations: np.ndarray, positive: np.ndarray) -> float | None:
    """:func:`activation_auc` of checked inputs (the probe's own summaries and targets)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(activations, dtype=np.float64))  # ties get their mean rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def trust_scores(summaries: np.ndarray, names: list[str | None],
                 targets: dict[str, np.ndarray]) -> list[float | None]:
    """The AUC of each concept ``j`` for its name ``names[j]`` where the probe knows that name."""
    out: list[float | None] = []
    for j, name in enumerate(names):
        positive = targets.get(name) if name is not None else None
        out.append(None if positive is None else _auc(summaries[:, j], positive))
    return out
