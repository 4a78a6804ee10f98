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

import numpy as np
from scipy.stats import rankdata

#: The trust (AUC) of a concept whose activation tells nothing of the named thing.
CHANCE = 0.5


def activation_auc(activations: np.ndarray, positive: np.ndarray) -> float | None:
    """AUC of ``activations (N,)`` separating ``positive (N,)`` images from the rest.

    None when one side is empty (nothing to compare).
    """
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
        out.append(None if positive is None else activation_auc(summaries[:, j], positive))
    return out
