"""Naming with CLIP: CLIP-Dissect (Oikarinen & Weng, ICLR 2023) for discovered concepts.

Inputs are ``P (N, M)``, the cosine similarities of N probe images with M words (normalised CLIP
embeddings), and ``A (N, K)``, one activation per image for each of the K concepts named together.

**soft-WPMI** (the paper's best): the words' probabilities per image ``softmax(a · P)`` over the
vocabulary; each concept's ``top_k`` most activating images each belong to its "concept set" with
a probability falling linearly from ``p_start`` to ``p_end`` by rank; then::

    log p(w | k) = Σ_{i in top_k} log(1 + p_i (softmax_i(w) − 1) + min_prob)
    log p(w)     = logsumexp_k log p(w | k) − log K
    score(k, w)  = log p(w | k) − lam · log p(w)

``log p(w)`` (``prior="concepts"``, the reference) is taken over the concepts named together. It
suits a layer's hundreds of units; over a bank of ten concepts it saturates: a word that only one
concept's top inputs show scores ``log K`` however weakly they show it (ties), and a word that two
redundant concepts share is pushed down for both. ``prior="probe"`` (the default here) compares
with ``top_k`` random probe inputs instead — the same set likelihood at the mean in-set
probability::

    log p(w) = top_k · mean_{i in probe} log(1 + p̄ (softmax_i(w) − 1) + min_prob)

so the score is how much more likely the word makes the concept's top inputs than chance.

**cos³**: centre ``A`` and ``P`` over the images, cube elementwise, normalise every column, and take
the cosine of each concept's column with each word's.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import check_float, check_int, describe

SIMILARITIES = ("soft_wpmi", "cos3")


def default_top_k(n_inputs: int) -> int:
    """CLIP-Dissect's 100 top images for probes of 2000 inputs or more, 5 % of smaller probes
    (at least 5): 100 of a few hundred crops is no longer the top of anything."""
    return int(min(100, max(5, round(0.05 * n_inputs))))


def _checked_inputs(clip_sims: torch.Tensor, activations: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, M)`` similarities and ``(N, K)`` activations as finite float64 of the same N."""
    out = []
    for value, name, shape in ((clip_sims, "clip_sims", "(N images, M words)"),
                               (activations, "activations", "(N images, K concepts)")):
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.dtype == torch.bool \
                or value.is_complex():
            raise ValueError(f"`{name}` must be a real matrix {shape}; got {describe(value)}.")
        value = value.double()
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"`{name}` holds NaN or infinite values; a score over them means "
                             f"nothing. Replace them (e.g. torch.nan_to_num) first.")
        out.append(value)
    if out[0].shape[0] != out[1].shape[0]:
        raise ValueError(f"`clip_sims` has {out[0].shape[0]} rows and `activations` "
                         f"{out[1].shape[0]}: both need one row per probe image.")
    return out[0], out[1]


def top_inputs(activations: torch.Tensor, top_k: int,
               clip_sims: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each concept's top set: ``(order (top_k, K), sizes (K,))``, the ``top_k`` probe inputs of
    largest activation (most active first) of which only the first ``sizes[j]`` count: the
    inputs where concept ``j`` is active (:func:`active_inputs`).

    An input where the concept is as inactive as it gets (the zeros of a ReLU map) says nothing
    about it; taken in by a tie, a concept that fires on one input of forty was named after
    what the inactive inputs showed, and after whichever of them the probe's order put first.
    Equal activations are ordered by the inputs' similarities (``clip_sims``, a fixed
    projection of each row), so the result does not depend on the probe's order.
    """
    n = activations.shape[0]
    values = activations.double()
    perm = torch.arange(n)
    if clip_sims is not None:
        direction = torch.randn(clip_sims.shape[1], dtype=torch.float64,
                                generator=torch.Generator().manual_seed(0))
        perm = torch.sort(clip_sims.double() @ direction, stable=True).indices
    order = perm[torch.sort(values[perm], dim=0, descending=True, stable=True).indices]
    order = order[:top_k]                                                    # (top_k, K)
    sizes = active_inputs(values).sum(0).clamp(max=top_k)                   # (K,)
    return order, sizes


def active_inputs(activations: torch.Tensor) -> torch.Tensor:
    """``(N, K)``: where each concept is active, i.e. not at its floor over the probe when that
    floor means "inactive": at or below 0 (a ReLU's or NMF's zeros), or a lowest value shared by
    two inputs or more. A single input at a positive minimum is as active as it is: it stays
    (on a probe no larger than ``top_k`` it would otherwise be dropped for being last)."""
    floor = activations.amin(0, keepdim=True)
    at_floor = activations <= floor
    meaningless = (floor <= 0) | (at_floor.sum(0, keepdim=True) >= 2)
    return ~(at_floor & meaningless)


def soft_wpmi(clip_sims: torch.Tensor, activations: torch.Tensor, *, top_k: int | None = None,
              a: float = 10.0, lam: float = 1.0, min_prob: float = 1e-7, p_start: float = 0.998,
              p_end: float = 0.97, prior: str = "probe") -> torch.Tensor:
    """Soft weighted pointwise mutual information ``(K, M)`` (see the module notes).

    ``top_k``: default :func:`default_top_k`; capped at the number of probe inputs. Only inputs
    where a concept is active (see :func:`active_inputs`) enter its top set (see
    :func:`top_inputs`): a concept active on fewer than ``top_k`` inputs is scored on
    those, and a concept active on none (the same activation everywhere) gets a row of NaN.
    ``prior``: ``"probe"`` (over random sets of as many probe inputs as the top set holds) or
    ``"concepts"`` (the reference: over the concepts named together); see the module notes.
    ``p_start`` and ``p_end`` are probabilities (in [0, 1]) and ``min_prob`` > 0 keeps every
    logarithm finite. The scores do not depend on the order of the probe inputs.
    """
    clip_sims, activations = _checked_inputs(clip_sims, activations)
    n = clip_sims.shape[0]
    top_k = min(default_top_k(n) if top_k is None else check_int(top_k, "top_k", minimum=1), n)
    a = check_float(a, "a", minimum=0.0, strict_minimum=True)
    lam = check_float(lam, "lam", minimum=0.0)
    # outside [0, 1] an in-set probability makes 1 + p (softmax - 1) negative: NaN scores
    p_start = check_float(p_start, "p_start", minimum=0.0, maximum=1.0)
    p_end = check_float(p_end, "p_end", minimum=0.0, maximum=1.0)
    min_prob = check_float(min_prob, "min_prob", minimum=0.0, strict_minimum=True)
    if prior not in ("concepts", "probe"):
        raise ValueError(f"`prior` must be 'concepts' or 'probe'; got {prior!r}.")
    probs = torch.softmax(a * clip_sims, dim=1)                              # (N, M)
    top, sizes = top_inputs(activations, top_k, clip_sims)                   # (top_k, K), (K,)
    in_set = torch.linspace(p_start, p_end, top_k + 1, dtype=torch.float64)[:top_k]
    counted = (torch.arange(top_k)[:, None] < sizes[None, :]).double()      # (top_k, K)
    chosen = probs[top]                                                      # (top_k, K, M)
    terms = torch.log(1 + in_set[:, None, None] * (chosen - 1) + min_prob)
    log_given = (terms * counted[:, :, None]).sum(0)                         # (K, M)
    if prior == "concepts":
        log_word = torch.logsumexp(log_given, dim=0, keepdim=True) - np.log(log_given.shape[0])
    else:  # the set likelihood of `size` random inputs at the top set's mean probability
        log_word = torch.zeros_like(log_given)
        for size in sorted(set(sizes.tolist()) - {0}):
            mean_in = in_set[:size].mean()
            row = size * torch.log(1 + mean_in * (probs - 1) + min_prob).mean(0)
            log_word[sizes == size] = row
    scores = log_given - lam * log_word
    scores[sizes == 0] = float("nan")  # no input shows the concept more than another
    return scores


def cos_cubed(clip_sims: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Cubed-cosine similarity ``(K, M)`` of concept activations and word similarities."""
    clip_sims, activations = _checked_inputs(clip_sims, activations)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        x = (x - x.mean(0, keepdim=True)) ** 3
        return x / x.norm(dim=0, keepdim=True).clamp_min(1e-300)

    return prepare(activations).T @ prepare(clip_sims)
