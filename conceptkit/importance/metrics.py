"""Fidelity metrics for concept importances: C-Deletion, C-Insertion, C-μFidelity.

The pixel metrics of Petsiuk et al. (Deletion, Insertion) and Bhatt et al. (μFidelity) moved to
concept space (Fel et al., "A Holistic Approach to Unifying Automatic Concept Extraction and
Concept Importance Estimation", 2023): a concept is removed by setting its code to 0 at every
position, and the head ``h`` is re-run on the reconstruction ``(U ⊙ m) · W``.

Every metric is one class with a ``higher_is_better`` flag and the same call::

    metric = CDeletion()
    score = metric(h, activations, bank, class_id, importances)       # a float
    details = metric.evaluate(h, activations, bank, class_id, importances)

``importances`` is either ``(k,)`` (one class-level order for every input), ``(n, k)`` (one
order per input) or a :class:`~conceptkit.importance.ConceptImportance` (its ``per_input``).
The score is ``h``'s output for ``class_id`` (the class logit for a classifier head).

A head that is affine in its input activations (checked numerically, as for Sobol importance) is
collapsed to one vector per input (``fast_path="auto"``, the default): every masked score is then
a ``k``-vector product instead of a pass of ``h`` over a reconstruction, with the same values up
to float rounding (tests/test_importance_metrics.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.stats import rankdata

from .._validation import check_float, check_int, describe, to_numpy
from ._attribution import Seeds, input_groups
from ._engine import DEFAULT_MEMORY_BUDGET, ConceptProblem, model_guard, prepare_problem
from ._fastpath import AffineHead, fit_affine

__all__ = ["CDeletion", "CInsertion", "CMuFidelity", "ConceptMetric", "MetricResult"]


@dataclass(frozen=True, eq=False)
class MetricResult:
    """A metric's score with its details.

    Attributes
    ----------
    score : float
        The mean of ``per_input``.
    per_input : ndarray of shape (n,)
    curves : ndarray of shape (n, k + 1) or None
        For deletion and insertion, the class score after ``0, 1, ..., k`` steps.
    higher_is_better : bool
    name : str
    """

    score: float
    per_input: np.ndarray
    curves: np.ndarray | None
    higher_is_better: bool
    name: str


class ConceptMetric:
    """Base class: validation, the call signature, and the chunked evaluation of ``h``."""

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True

    def __init__(self, *, batch_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, device: Any = None,
                 progress: bool = False, fast_path: bool | str = "auto"):
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        self.device = device
        self.progress = progress
        self.fast_path = fast_path

    def __call__(self, h: Any, activations: Any, bank: Any, class_id: int,
                 importances: Any, context: Any = None) -> float:
        """The metric's score (see :meth:`evaluate` for the parameters)."""
        return self.evaluate(h, activations, bank, class_id, importances, context).score

    def evaluate(self, h: Any, activations: Any, bank: Any, class_id: int,
                 importances: Any, context: Any = None) -> MetricResult:
        """Score ``importances`` of the concepts of ``bank`` for class ``class_id`` of ``h``.

        Parameters
        ----------
        h : nn.Module or callable
            Maps activations ``(n, C, h, w)`` or ``(n, C)`` to logits ``(n, n_classes)``.
        activations : tensor or array of shape (n, C, h, w) or (n, C)
        bank : object with ``components`` (k, C) and ``encode(activations)``
        class_id : int
        importances : array of shape (k,) or (n, k), or a ConceptImportance
        context : tensor (n, ...) or None
            Per-input extra argument of ``h`` (see :func:`concept_importance`).

        Returns
        -------
        MetricResult
        """
        with model_guard(h, self.device):
            problem = prepare_problem(h, activations, bank, class_id, device=self.device,
                                      batch_size=self.batch_size,
                                      memory_budget=self.memory_budget, progress=self.progress,
                                      context=context)
            values = _check_importances(importances, problem.n_inputs, problem.n_concepts)
            per_input, curves = self._evaluate(_scorer(problem, self.fast_path), values)
        return MetricResult(score=float(per_input.mean()), per_input=per_input, curves=curves,
                            higher_is_better=self.higher_is_better, name=self.name)

    def _evaluate(self, problem: ConceptProblem,
                  importances: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        items = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({items})"


class _AffineScores:
    """The part of a :class:`ConceptProblem` the metrics use, scored by an affine collapse."""

    def __init__(self, problem: ConceptProblem, head: AffineHead):
        self.n_inputs, self.n_concepts = problem.n_inputs, problem.n_concepts
        self.head = head

    def scores(self, masks: np.ndarray, inputs: np.ndarray | None = None,
               desc: str = "") -> np.ndarray:
        return self.head.scores(np.asarray(masks, dtype=np.float64), inputs)


def _scorer(problem: ConceptProblem, fast_path: Any) -> ConceptProblem | _AffineScores:
    if fast_path not in ("auto", True, False):
        raise ValueError(f"`fast_path` must be 'auto', True or False; got {fast_path!r}.")
    if fast_path is False:
        return problem
    # The probe's random masks come from a fixed stream: the metric stays deterministic.
    head = fit_affine(problem, np.random.default_rng(0))
    if head is None:
        if fast_path is True:
            raise ValueError("fast_path=True needs a head `h` that is affine in its input "
                             "activations; this `h` failed the affinity check. Use "
                             "fast_path='auto'.")
        return problem
    return _AffineScores(problem, head)


def _check_importances(importances: Any, n_inputs: int, n_concepts: int) -> np.ndarray:
    if hasattr(importances, "per_input") and hasattr(importances, "importances"):
        importances = importances.per_input
    try:
        values = to_numpy(importances).astype(np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`importances` must be an array of shape (k,) or (n, k); got "
                        f"{describe(importances)}.") from err
    if values.shape not in ((n_concepts,), (n_inputs, n_concepts)):
        raise ValueError(f"`importances` must have shape (k,) = ({n_concepts},) or (n, k) = "
                         f"({n_inputs}, {n_concepts}); got {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise ValueError("`importances` contains NaN or Inf values.")
    return values


def _ranks(importances: np.ndarray) -> np.ndarray:
    """Position of each concept in descending order of importance (0 = most important)."""
    order = np.argsort(-importances, axis=-1, kind="stable")
    return np.argsort(order, axis=-1, kind="stable")


def _area(curves: np.ndarray) -> np.ndarray:
    """Trapezoid mean of curves ``(n, k + 1)`` over ``[0, 1]``."""
    steps = curves.shape[-1] - 1
    return (curves.sum(axis=-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / steps


class _Perturbation(ConceptMetric):
    """Remove (deletion) or insert (insertion) concepts one by one in importance order."""

    _present_after: ClassVar[str]     # "deletion": present if rank >= t, "insertion": rank < t

    def _evaluate(self, problem, importances):
        ranks = _ranks(importances)
        steps = np.arange(problem.n_concepts + 1)[:, None]                 # (k + 1, 1)
        if self._present_after == "deletion":
            masks = ranks[..., None, :] >= steps
        else:
            masks = ranks[..., None, :] < steps
        curves = problem.scores(masks.astype(np.float64), desc=self.name)
        return _area(curves), curves


class CDeletion(_Perturbation):
    """C-Deletion: remove concepts from most to least important; area under the score curve.

    The curve holds the class score after removing ``0, 1, ..., k`` concepts (``k`` steps); the
    area is its trapezoid mean over ``[0, 1]``. A faithful ranking makes the score fall fast, so
    **lower is better**.
    """

    name = "c_deletion"
    higher_is_better = False
    _present_after = "deletion"


class CInsertion(_Perturbation):
    """C-Insertion: start from no concept, insert from most to least important; area under curve.

    A faithful ranking makes the score rise fast, so **higher is better**.
    """

    name = "c_insertion"
    higher_is_better = True
    _present_after = "insertion"


class CMuFidelity(ConceptMetric):
    """C-μFidelity: rank correlation between importance sums and score drops of random subsets.

    For each input, ``n_samples`` random subsets ``S`` are removed, each concept independently with
    probability ``subset_fraction`` (0.2, as xplique's ``MuFidelity`` which keeps a grid cell when
    ``U(0, 1) > 0.2``). The per-input score is the Spearman correlation between
    ``sum_{j in S} importance_j`` and ``y(u) - y(u without S)`` (0 when either is constant); the
    metric is its mean over inputs. **Higher is better**; exact attributions of an affine head
    score 1. ``seed`` draws the subsets (0 by default: the metric of given importances repeats;
    ``None`` for fresh entropy).
    """

    name = "c_mu_fidelity"
    higher_is_better = True

    def __init__(self, n_samples: int = 200, subset_fraction: float = 0.2, *,
                 seed: int | None = 0, batch_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, device: Any = None,
                 progress: bool = False, fast_path: bool | str = "auto"):
        super().__init__(batch_size=batch_size, memory_budget=memory_budget, device=device,
                         progress=progress, fast_path=fast_path)
        self.n_samples = n_samples
        self.subset_fraction = subset_fraction
        self.seed = seed

    def _evaluate(self, problem, importances):
        n_samples = check_int(self.n_samples, "n_samples", minimum=2)
        fraction = check_float(self.subset_fraction, "subset_fraction", minimum=0.0,
                               maximum=1.0, strict_minimum=True)
        if fraction >= 1.0:
            raise ValueError("`subset_fraction` must be < 1: at 1 every subset removes every "
                             "concept, so the drops never vary and the correlation is undefined; "
                             "got 1.0 (xplique's value is 0.2).")
        seed = None if self.seed is None else check_int(self.seed, "seed", minimum=0)
        seeds = Seeds(seed)
        k = problem.n_concepts
        per_input = np.empty(problem.n_inputs)
        defined = np.zeros(problem.n_inputs, dtype=bool)
        weights = np.broadcast_to(importances, (problem.n_inputs, k))
        for group in input_groups(problem.n_inputs, (n_samples + 1) * k * 8):
            removed = np.stack([seeds.input_rng(i).random((n_samples, k)) < fraction
                                for i in group])                          # (g, S, k)
            masks = np.concatenate([np.ones((len(group), 1, k)), 1.0 - removed], axis=1)
            y = problem.scores(masks, group, desc=self.name)
            drops = y[:, :1] - y[:, 1:]
            sums = np.einsum("gsk,gk->gs", removed.astype(np.float64), weights[group])
            per_input[group], defined[group] = _spearman_rows(sums, drops)
        if not defined.any():
            warnings.warn(f"C-μFidelity is 0 on every input because it is undefined there: over "
                          f"the {n_samples} random subsets (each concept removed with "
                          f"probability `subset_fraction`={fraction:g}) either the summed "
                          f"importances or the score drops never vary. With {k} concepts, pick "
                          f"a `subset_fraction` that removes some but not all of them (0.2, "
                          f"xplique's), and check that the class score depends on the concepts.",
                          RuntimeWarning, stacklevel=4)
        return per_input, None


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman correlation of each row pair of ``x`` and ``y`` ``(g, S)`` (0 if one is
    constant), and whether it is defined (neither row constant)."""
    rx = rankdata(x, axis=-1)
    ry = rankdata(y, axis=-1)
    rx -= rx.mean(axis=-1, keepdims=True)
    ry -= ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    return (np.divide((rx * ry).sum(axis=-1), denominator, out=np.zeros(len(x)),
                      where=denominator > 0), denominator > 0)
