"""Concept importance methods other than Sobol: gradients, occlusion, RISE, closed form.

Each method maps a :class:`ConceptProblem` to per-input importances ``(n, k)`` of the class
score ``y = h((U ⊙ m) · W)[:, class_id]`` with respect to the concept codes ``U``; importances of
spatial codes are summed over positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._engine import ConceptProblem
from ._fastpath import fit_affine, rounding_constant

DESIGN_BYTES = 64 * 2**20   # masks generated per group of inputs stay below this
#: Sobol and the closed form read a class score as constant up to rounding when its standard
#: deviation over the masks is at most this many machine epsilons (of ``h``'s output dtype) of
#: its root mean square. Tighter than :data:`~conceptkit.importance._estimators.ROUNDING`,
#: ``sobol_indices``' rule for any function: a float32 linear head's rounding noise measured
#: below 0.6 of them, and a score of about 1000 that concepts move by a few thousandths (a
#: real effect, which the rule of 16 zeroed) above 8.
HEAD_ROUNDING = 2.0


class Seeds:
    """Independent, order-free random streams derived from one seed.

    ``input_rng(i)`` is the stream of input ``i`` (child ``i`` of ``SeedSequence(seed).spawn``'s
    design branch), so results do not depend on how inputs are grouped into chunks.
    """

    def __init__(self, seed: int | None):
        self.root = np.random.SeedSequence(seed)

    def _child(self, *key: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.root.entropy, spawn_key=(*self.root.spawn_key, *key))

    def probe_rng(self) -> np.random.Generator:
        return np.random.default_rng(self._child(0))

    def check_rng(self) -> np.random.Generator:
        """The stream of the fast path's check on the design (no other stream moves)."""
        return np.random.default_rng(self._child(2))

    def shared_rng(self) -> np.random.Generator:
        return np.random.default_rng(self._child(1))

    def input_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(self._child(1, int(index)))


def input_groups(n_inputs: int, bytes_per_input: int):
    """Consecutive index arrays over inputs whose generated masks fit :data:`DESIGN_BYTES`."""
    size = max(1, DESIGN_BYTES // max(1, bytes_per_input))
    for start in range(0, n_inputs, size):
        yield np.arange(start, min(n_inputs, start + size))


@dataclass(frozen=True)
class MethodOutput:
    per_input: np.ndarray        # (n, k)
    info: dict
    # (n,) bool: inputs whose score is constant up to rounding (their importances are 0);
    # None for a method that does not judge it
    constant: np.ndarray | None = None


def gradient_input(problem: ConceptProblem, seeds: Seeds) -> MethodOutput:
    """``u ⊙ dy/du`` summed over positions: one forward and one backward pass per input."""
    n = problem.n_inputs
    out = np.empty((n, problem.n_concepts))
    for start, stop, grad in problem.gradients(np.arange(n), np.ones(n), desc="gradient x input"):
        out[start:stop] = (problem.codes[start:stop] * grad).sum(1).double().cpu().numpy()
    return MethodOutput(out, {})


def integrated_gradients(problem: ConceptProblem, seeds: Seeds, steps: int = 50) -> MethodOutput:
    """Integrated gradients from the all-zero baseline, midpoint Riemann sum with ``steps`` nodes.

    ``IG_j = sum_p u_jp * mean_s dy/du_jp(a_s u)`` with ``a_s = (s + 1/2) / steps``; the sum of
    ``IG_j`` over concepts equals ``y(u) - y(0)`` up to an ``O(1 / steps^2)`` quadrature error.
    """
    n = problem.n_inputs
    alphas = (np.arange(steps) + 0.5) / steps
    inputs = np.repeat(np.arange(n), steps)
    total = np.zeros((n, problem.n_concepts))
    for start, stop, grad in problem.gradients(inputs, np.tile(alphas, n),
                                               desc="integrated gradients"):
        rows = inputs[start:stop]
        contribution = (problem.codes[rows] * grad).sum(1).double().cpu().numpy()
        np.add.at(total, rows, contribution)
    return MethodOutput(total / steps, {"steps": steps, "rule": "riemann_midpoint"})


def occlusion(problem: ConceptProblem, seeds: Seeds) -> MethodOutput:
    """``y(u) - y(u with concept j set to 0)``: ``k + 1`` passes through ``h`` per input."""
    k = problem.n_concepts
    masks = np.concatenate([np.ones((1, k)), 1.0 - np.eye(k)])
    y = problem.scores(masks, desc="occlusion")
    return MethodOutput(y[:, :1] - y[:, 1:], {})


def rise(problem: ConceptProblem, seeds: Seeds, n_samples: int = 1000,
         probability: float = 0.5) -> MethodOutput:
    """RISE on concepts with a centred score, ``n_samples`` independent binary masks per input.

    Each concept is kept with ``probability`` ``p``. The standard RISE saliency ``E[y m_j] / p``
    is reduced by its value for an uninformative concept, ``E[y]``, and scaled by ``1 / (1 - p)``:
    ``cov(y, m_j) / (p (1 - p))``. The covariance is the unbiased sample covariance over the
    ``n`` masks, ``sum((y - mean(y)) m_j) / (n - 1)``, so that for an affine head the result
    estimates ``beta_j`` without bias at any ``n_samples`` (the same value as occlusion and
    gradient x input; dividing by ``n`` shrank it by ``1 - 1/n``) and does not move when ``y``
    is shifted. ``n_samples`` must be at least 2 (one mask has no covariance).
    """
    k = problem.n_concepts
    out = np.empty((problem.n_inputs, k))
    for group in input_groups(problem.n_inputs, n_samples * k * 8):
        masks = np.stack([(seeds.input_rng(i).random((n_samples, k)) < probability)
                          for i in group]).astype(np.float64)
        y = problem.scores(masks, group, desc="rise")
        centred = y - y.mean(axis=1, keepdims=True)
        out[group] = np.einsum("im,imk->ik", centred, masks) / (
            (n_samples - 1) * probability * (1.0 - probability))
    return MethodOutput(out, {"n_samples": n_samples, "probability": probability})


def closed_form(problem: ConceptProblem, seeds: Seeds) -> MethodOutput:
    """Exact total Sobol indices of an affine head: ``beta_j^2 / sum_j beta_j^2`` per input;
    0 for an input whose score varies only at the rounding of the head's dtype
    (:func:`~conceptkit.importance._fastpath.rounding_constant`), whose betas are that
    rounding.

    Affinity is checked as for Sobol's fast path (``_fastpath.fit_affine``): a probe on a few
    inputs, then every input on its all-ones mask and on two seeded random masks, each input
    within its own tolerance. A head that fails is refused rather than given affine indices.
    """
    affine = fit_affine(problem, seeds.probe_rng())
    if affine is None:
        raise ValueError(
            "`method`='closed_form' needs a head `h` that is affine in its input activations "
            "on every input (for example global average pooling followed by nn.Linear); on "
            "these inputs `h` is not: its class score differs from an affine function of the "
            "concept masks on the masks checked. Use method='sobol', which asks `h` itself "
            "when it is not affine.")
    squares = affine.beta ** 2
    totals = squares.sum(axis=1, keepdims=True)
    constant = rounding_constant(affine, problem, HEAD_ROUNDING) | (totals[:, 0] == 0)
    return MethodOutput(np.divide(squares, totals, out=np.zeros_like(squares),
                                  where=~constant[:, None]), {"fast_path": True}, constant)
