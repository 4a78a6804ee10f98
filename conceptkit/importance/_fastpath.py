"""Detect a head that is affine in the concept masks and collapse it to one vector per input.

If ``h`` is affine in its input activations, the class score of input ``i`` under a concept mask
``m`` is ``y_i(m) = b + sum_j m_j beta_ij`` with
``beta_ij = sum_p U[i, j, p] (W G_p)_j`` and ``G = d y_c / d A`` (constant). Every mask then
costs one ``k``-vector product instead of a pass through ``h``, and the total Sobol index has the
closed form ``beta_ij^2 / sum_j beta_ij^2`` for independent, identically distributed masks.

Affinity is decided numerically, never from the module's structure: on a few real inputs,
random masks ``m1``, ``m2`` in ``[0, 1]^k`` must satisfy
``h(A(a m1 + (1 - a) m2)) = a h(A(m1)) + (1 - a) h(A(m2))`` and
``h(A(l m1)) = l h(A(m1)) + (1 - l) h(A(0))``. Every comparison is made per input, against a
tolerance of that input's own: ``1e-4`` (heads of 32 bits or fewer; ``1e-9`` for float64) of
the range of its own scores, plus rounding at its own scores' magnitude. One input's large
level or range therefore cannot hide a nonlinearity in the others. The coefficients are then
checked once more against ``h`` on the probe masks — the random ones and the corners of the
mask cube: no concept, each concept alone and each concept removed alone, dealt out over the
probed inputs (a kink in a corner that random masks rarely reach shows there) — which also
catches a head whose autograd graph does not match its forward pass; in that case ``beta`` is
recomputed from forward passes (``k + 1`` per input). Then the collapse must predict ``h`` on
every input, with all its concepts kept and on two seeded random masks inside the cube, so
that an input the probe did not draw, and that ``h`` treats otherwise (saturates, say), is not
given the affine inputs' importances. Last, Sobol checks the collapse against ``h`` on rows of
the design it estimated from (:class:`DesignCheck`) and falls back to ``h`` itself when they
disagree.

These are checks on finitely many masks, not a proof: a nonlinearity confined to a thin region
of the mask cube that none of the checked masks reaches can still pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._design import replicated_design
from ._engine import ConceptProblem
from ._estimators import precision_eps

N_PROBE_INPUTS = 8


@dataclass(frozen=True)
class AffineHead:
    """``y_i(m) = intercept[i] + m @ beta[i]`` for every input ``i``.

    The intercept is shared by every input unless the problem keeps the reconstruction residual,
    which shifts each input's score by a constant of its own.
    """

    beta: np.ndarray       # (n, k) float64
    intercept: np.ndarray  # (n,) float64

    def _intercept(self, inputs: np.ndarray | None) -> np.ndarray:
        return (self.intercept if inputs is None else self.intercept[inputs])[:, None]

    def scores(self, masks: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        """Class scores ``(n_sel, M)`` for masks ``(M, k)`` or ``(n_sel, M, k)``."""
        beta = self.beta if inputs is None else self.beta[inputs]
        if masks.ndim == 2:
            return self._intercept(inputs) + beta @ masks.T
        return self._intercept(inputs) + np.einsum("imk,ik->im", masks, beta)

    def design_scores(self, a: np.ndarray, b: np.ndarray, include_b: bool,
                      inputs: np.ndarray | None = None) -> np.ndarray:
        """Scores ``(n_sel, M)`` on the block design ``[A; (B;) C_1..C_k]`` without building it.

        ``a`` and ``b`` are ``(N, k)`` (shared) or ``(n_sel, N, k)``. Row ``j`` of ``C_i`` differs
        from row ``j`` of ``A`` in coordinate ``i`` only, so ``f(C_i) = f(A) + (B_i - A_i) beta_i``:
        ``O(N k)`` work per input instead of ``O(N k^2)``.
        """
        beta = self.beta if inputs is None else self.beta[inputs]             # (n_sel, k)
        if a.ndim == 2:
            a, b = a[None], b[None]
        f_a = np.einsum("ink,ik->in", a, beta)                                # (n_sel, N)
        f_c = f_a[:, None, :] + beta[:, :, None] * np.swapaxes(b - a, -1, -2)  # (n_sel, k, N)
        blocks = [f_a]
        if include_b:
            blocks.append(np.einsum("ink,ik->in", b, beta))
        blocks.append(f_c.reshape(len(beta), -1))
        return self._intercept(inputs) + np.concatenate(blocks, axis=-1)


def _tolerance(problem: ConceptProblem, values: np.ndarray,
               spread: np.ndarray | None = None) -> np.ndarray:
    """``(n_sel,)``: each input's own tolerance, from its own scores ``values`` ``(n_sel, M)``.

    Relative to how much that input's score moves (``spread``, by default the range of its
    ``values``; not to its level, so that a large constant offset cannot hide a nonlinearity,
    and not to other inputs' ranges, so that one input whose concepts move the score a lot
    cannot hide a nonlinearity in the others), plus the rounding of the head's dtype (the
    coarser of its activations' and its output's: bfloat16 and float16 heads included) at that
    input's own magnitude.
    """
    float64 = problem.codes.dtype == torch.float64 and problem.output_dtype == torch.float64
    rtol = 1e-9 if float64 else 1e-4
    eps = max(float(torch.finfo(problem.codes.dtype).eps),
              float(torch.finfo(problem.output_dtype).eps))
    if spread is None:
        spread = np.ptp(values, axis=1)
    return rtol * spread + 4 * eps * np.abs(values).max(axis=1) + 1e-30


def _collapse_tolerance(problem: ConceptProblem, head: AffineHead, inputs: np.ndarray | None,
                        real: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Each input's tolerance for the collapse against ``h`` on a few masks (``(n_sel, r)``
    scores, ``r`` as small as one): its range is that of its scores over the whole mask cube
    under the collapse, ``sum_j |beta_ij|`` (or what ``h`` and the collapse showed on these
    masks, if more), and its magnitude includes its score with no concept."""
    beta = head.beta if inputs is None else head.beta[inputs]
    intercept = head._intercept(inputs)
    values = np.concatenate([real, predicted, intercept], axis=1)
    spread = np.maximum(np.abs(beta).sum(axis=1), np.ptp(values, axis=1))
    return _tolerance(problem, values, spread)


def _probe(problem: ConceptProblem, rng: np.random.Generator):
    n_probe = min(problem.n_inputs, N_PROBE_INPUTS)
    inputs = np.sort(rng.choice(problem.n_inputs, size=n_probe, replace=False))
    k = problem.n_concepts
    m1, m2 = rng.random((n_probe, k)), rng.random((n_probe, k))
    alpha, scale = rng.uniform(0.2, 0.8, (2, n_probe, 1))
    # The corners of the mask cube, where a kink that random masks rarely reach shows: each
    # concept alone and each concept removed alone (no concept is the fifth mask; every concept
    # is checked on every input afterwards). Dealt out over the probed inputs in turn, so that
    # each corner is scored on at least one input and each input gets ceil(2k / n_probe) of
    # them: the probe stays a few passes of h per input. No draw from `rng`: its stream (and
    # every result seeded by it) is as before.
    eye = np.eye(k)
    corners = np.concatenate([eye, 1.0 - eye])                          # (2k, k)
    per_input = -(-len(corners) // n_probe)
    dealt = (np.arange(n_probe)[:, None] + n_probe * np.arange(per_input)) % len(corners)
    masks = np.concatenate([
        np.stack([m1, m2, alpha * m1 + (1 - alpha) * m2, scale * m1, np.zeros_like(m1)],
                 axis=1),
        corners[dealt]], axis=1)                               # (n_probe, 5 + per_input, k)
    return inputs, masks, alpha[:, 0], scale[:, 0]


def _beta_from_gradient(problem: ConceptProblem) -> np.ndarray | None:
    try:
        (_, _, grad), = problem.gradients(np.zeros(1, dtype=np.int64), np.ones(1), desc="gradient")
    except ValueError:
        return None
    grad = grad[0].double()                                               # (P, k), constant
    return (problem.codes.double() * grad).sum(1).cpu().numpy()


def _beta_from_forward(problem: ConceptProblem, intercept: np.ndarray) -> np.ndarray:
    masks = np.eye(problem.n_concepts)
    return problem.scores(masks, desc="affine coefficients") - intercept[:, None]


def fit_affine(problem: ConceptProblem, rng: np.random.Generator) -> AffineHead | None:
    """The affine collapse of ``h`` for this problem, or None if ``h`` is not affine.

    ``rng`` draws the probe first, then the masks of the check on every input: the probe's
    draws are as they were before that check existed."""
    inputs, masks, alpha, scale = _probe(problem, rng)
    y = problem.scores(masks, inputs, desc="affinity probe")     # (n_probe, 5 + corners)
    tol = _tolerance(problem, y)                                 # (n_probe,), per input
    mixed_error = np.abs(y[:, 2] - (alpha * y[:, 0] + (1 - alpha) * y[:, 1]))
    scaled_error = np.abs(y[:, 3] - (scale * y[:, 0] + (1 - scale) * y[:, 4]))
    if np.any(np.maximum(mixed_error, scaled_error) > tol):
        return None
    if problem.residual is None:
        intercept = np.full(problem.n_inputs, float(y[:, 4].mean()))
    else:  # each input's residual moves its score by a constant: one pass per input finds it
        intercept = problem.scores(np.zeros((1, problem.n_concepts)), desc="intercepts")[:, 0]
    beta = _beta_from_gradient(problem)
    for attempt in ("gradient", "forward"):
        if attempt == "forward":
            beta = _beta_from_forward(problem, intercept)
        if beta is None:
            continue
        head = AffineHead(beta=beta, intercept=intercept)
        if np.all(np.abs(head.scores(masks, inputs) - y).max(axis=1) <= tol):
            return head if _holds_on_every_input(problem, head, rng) else None
    return None


#: Seeded random masks inside the mask cube on which every input checks the collapse.
N_INTERIOR_CHECKS = 2


def _holds_on_every_input(problem: ConceptProblem, head: AffineHead,
                          rng: np.random.Generator) -> bool:
    """Whether the collapse also predicts ``h`` on the inputs the probe did not draw.

    The probe decides affinity on a few inputs; an input the head treats otherwise (one that
    saturates it, say) would get the affine inputs' importances. Each input's score with every
    concept kept and on :data:`N_INTERIOR_CHECKS` random masks of its own inside the mask cube
    (drawn from ``rng`` after the probe) is checked against the collapse, each input against
    its own tolerance: ``1 + N_INTERIOR_CHECKS`` passes of ``h`` per input, against
    ``n_designs (k + 1)`` for the Sobol estimator.
    """
    n, k = problem.n_inputs, problem.n_concepts
    masks = np.concatenate([np.ones((n, 1, k)), rng.random((n, N_INTERIOR_CHECKS, k))], axis=1)
    real = problem.scores(masks, desc="affinity on every input")        # (n, 1 + checks)
    predicted = head.scores(masks)
    tol = _collapse_tolerance(problem, head, None, real, predicted)
    return bool(np.all(np.abs(real - predicted).max(axis=1) <= tol))


def rounding_constant(head: AffineHead, problem: ConceptProblem, rounding: float) -> np.ndarray:
    """``(n,)`` bool: inputs whose score, over independent uniform masks, varies by no more
    than the rounding of the head's dtype at the score's magnitude.

    Over such masks the score's variance is ``sum_j beta_j^2 / 12`` and its mean square that
    plus the squared mean ``(b + sum_j beta_j / 2)^2``: the rule the Sobol estimators apply to
    sampled scores (:func:`~conceptkit.importance._estimators.split_outputs`), here in closed
    form. Such betas are the head's rounding, not importances.
    """
    variance = (head.beta ** 2).sum(axis=1) / 12.0
    mean = head.intercept + head.beta.sum(axis=1) / 2.0
    eps = precision_eps(problem.precision)
    return variance <= (rounding * eps) ** 2 * (mean ** 2 + variance)


class DesignCheck:
    """The affine collapse against ``h`` itself on a seeded slice of the Sobol design.

    ``n_rows`` rows in all, spread over up to ``n_rows`` inputs drawn from ``rng``: the design
    rows are the masks the estimator reads, so a head the probe took for affine, but that is
    not on the masks that matter, is caught where it would have changed the indices.
    """

    def __init__(self, problem: ConceptProblem, head: AffineHead, rng: np.random.Generator,
                 rows_per_design: int, n_rows: int = 64):
        self.problem, self.head = problem, head
        n = problem.n_inputs
        self.inputs = np.sort(rng.choice(n, size=min(n, n_rows), replace=False))
        per_input = max(1, n_rows // len(self.inputs))
        self.rows = rng.integers(0, rows_per_design, size=(len(self.inputs), per_input))
        self.masks: dict[int, np.ndarray] = {}

    def collect(self, a: np.ndarray, b: np.ndarray, include_b: bool,
                group: np.ndarray | None) -> None:
        """Keep the checked rows of the design built on base points ``a``, ``b``: ``(N, k)``
        shared by every input (``group`` None) or ``(len(group), N, k)``, one per input of
        ``group``. Only the checked inputs' designs are built."""
        shared = replicated_design(a, b, include_b) if group is None else None
        for slot, i in enumerate(self.inputs):
            if shared is not None:
                self.masks[int(i)] = shared[self.rows[slot]]
                continue
            where = np.flatnonzero(group == i)
            if where.size:
                design = replicated_design(a[where[0]], b[where[0]], include_b)
                self.masks[int(i)] = design[self.rows[slot]]

    def holds(self) -> bool:
        """Whether ``h`` scores the collected rows as the collapse does, each input within its
        own tolerance."""
        inputs = np.array(sorted(self.masks), dtype=np.int64)
        masks = np.stack([self.masks[int(i)] for i in inputs])          # (n_chk, r, k)
        real = self.problem.scores(masks, inputs, desc="affinity on the design")
        predicted = self.head.scores(masks.astype(np.float64), inputs)
        tol = _collapse_tolerance(self.problem, self.head, inputs, real, predicted)
        return bool(np.all(np.abs(real - predicted).max(axis=1) <= tol))
