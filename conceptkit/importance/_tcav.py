"""TCAV scores with significance testing against baseline concept activation vectors.

For a class ``k`` and a concept ``c``, each random run ``r`` trains a CAV of ``c`` against the
random set ``R_r``; its **score** is the fraction of class inputs whose class-logit derivative
along the CAV is positive (the TCAV paper's sign count) and its **magnitude** the mean of those
derivatives. A baseline CAV is trained in each run too, and a t-test of the concept's statistic
against the baseline's, corrected over the concepts tested (Bonferroni by default), decides which
concepts are significant.

Two protocols (the defaults are the second; ``statistic="sign_count", classifier="sgd",
baseline="random", alternative="two-sided"`` is the first):

- **the TCAV paper / Captum**: the baseline is random-vs-random (one fixed random counterpart
  against each ``R_r``, Captum's ``[random_0, random_i]``),
  the statistic the sign count, the test two-sided. It answers "does this direction move the
  class logit *consistently*?" and is sensitive but not specific: a concept set differs from
  random images in more than the concept (one object on a plain background versus busy scenes),
  and that shared difference alone moves the logit the same way for every concept. Behind a
  linear head (global average pooling + ``nn.Linear``) every input has the same gradient, so each
  sign count is exactly 0 or 1 and any concept whose CAV leans the right way is significant. On
  the shapes world it flags every causal part but also half of the non-causal ones.
- **specific (default)**: the baseline is a *random concept*: a CAV of a set drawn from all the
  tested concept sets together against ``R_r``, which carries the same "concept image versus
  random image" difference; the statistic is the magnitude (how much the logit rises along the
  CAV, not only its sign), the CAVs are mean differences (stable from run to run) and the test is
  one-sided. A concept is significant when moving towards it raises the class logit *more than
  moving towards a typical tested concept does*. The test is a permutation test: the concept's
  own examples against random mixtures drawn from all the concept sets, so that which examples
  happened to be drawn for a concept is part of the null (a t-test over the runs, which share
  those examples, is not: more runs made such accidents significant). On the three CNN
  ground-truth worlds (seeds 0-2) it flags all 72 relied-on parts and 3 of the 264 others
  (``BENCHMARKS.md``, "TCAV on the worlds"). The mixtures must differ from the random images:
  random images that look like the concept images (parts on grey against parts on grey) make
  the mixtures' directions noise, which a note says.

Because the default baseline is the other tested concepts, a p-value says "raises the class more
than a typical tested concept", which a concept the class does not rely on can pass next to one
that lowers the class. So a concept is never called significant (``TCAVResult.significant``)
when its CAVs are near chance (mean held-out accuracy below ``CHANCE_ACCURACY``, 0.6); its
p-value is kept and a note says why. A significant concept along whose CAVs the class logit
still falls (one-sided: mean magnitude <= 0, or mean sign count <= 0.5) stays significant, with
a note: on the ground-truth worlds such concepts include parts the model relies on. A t-test of
two constant groups (every run the same score) gives no p-value: NaN, never significant.

The gradients of the class logit do not depend on the CAV, so they are computed once per call
and every CAV costs one matrix-vector product.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from .._reprs import dataclass_repr
from .._torchutils import check_not_inference_mode
from .._validation import check_choice, check_float, check_int, describe, make_rng
from ..concepts._cav import CLASSIFIERS, SPACES, activation_features, fit_cav
from ._cav import logit_gradients

TESTS = ("auto", "permutation", "ttest_ind", "welch", "ttest_rel")
CORRECTIONS = ("bonferroni", "holm", "none")
STATISTICS = ("magnitude", "sign_count")
BASELINES = ("concepts", "random")
ALTERNATIVES = ("greater", "two-sided")
RECOMMENDED_RUNS = 10
#: Mean held-out CAV accuracy below which a concept's CAVs are near chance (0.5 on balanced
#: splits): noted, and never significant.
CHANCE_ACCURACY = 0.6
#: The TCAV paper's and Captum's protocol (pass ``**CLASSIC_TCAV`` to :func:`tcav`). It leaves
#: ``space`` to the caller: Captum and tensorflow/tcav flatten the layer (``space="flat"``);
#: the default, pooled space, averages over positions.
CLASSIC_TCAV = {"statistic": "sign_count", "classifier": "sgd", "baseline": "random",
                "alternative": "two-sided"}


@dataclass(frozen=True, eq=False)
class TCAVResult:
    """TCAV scores of several concepts for one class, over random runs.

    Arrays are indexed ``[concept, run]``; the baseline (``random_*``: random-vs-random CAVs, or
    random-concept CAVs with ``baseline="concepts"``) is indexed ``[run]``. A score is the
    fraction of class inputs with a positive directional derivative (0.5 means the concept
    direction is as likely to raise as to lower the logit); a magnitude is the mean directional
    derivative. ``statistic`` says which of the two was tested; with ``alternative="greater"`` a
    concept is significant only when it raises the class logit more than the baseline, with
    ``"two-sided"`` also when it lowers it (``mean_scores`` tells the direction).
    """

    concept_names: tuple[str, ...]
    class_id: int
    scores: np.ndarray
    magnitudes: np.ndarray
    cav_accuracies: np.ndarray
    random_scores: np.ndarray
    random_magnitudes: np.ndarray
    random_cav_accuracies: np.ndarray
    p_values: np.ndarray
    p_values_corrected: np.ndarray
    significant: np.ndarray
    alpha: float
    test: str
    correction: str
    classifier: str
    space: str
    statistic: str = "sign_count"
    baseline: str = "random"
    alternative: str = "two-sided"
    notes: tuple[str, ...] = ()
    n_permutations: int | None = None  # mixtures drawn by the permutation test (None: a t-test)
    #: The int seed the call ran with: the one given, or the one drawn for ``seed=None`` (pass
    #: it back to repeat the call); None when a numpy Generator was given.
    seed: int | None = None

    @property
    def n_runs(self) -> int:
        return int(self.random_scores.shape[0])

    @property
    def mean_scores(self) -> np.ndarray:
        """Mean TCAV score of each concept over the runs ``(n_concepts,)``."""
        return self.scores.mean(axis=1)

    @property
    def std_scores(self) -> np.ndarray:
        return self.scores.std(axis=1)

    @property
    def mean_magnitudes(self) -> np.ndarray:
        return self.magnitudes.mean(axis=1)

    @property
    def mean_cav_accuracies(self) -> np.ndarray:
        return self.cav_accuracies.mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-serialisable lists, floats, bools and strings."""
        concepts = {}
        for j, name in enumerate(self.concept_names):
            concepts[name] = {
                "scores": self.scores[j].tolist(),
                "magnitudes": self.magnitudes[j].tolist(),
                "cav_accuracies": self.cav_accuracies[j].tolist(),
                "mean_score": float(self.mean_scores[j]),
                "mean_magnitude": float(self.mean_magnitudes[j]),
                "p_value": _json_float(self.p_values[j]),  # None: not testable (NaN)
                "p_value_corrected": _json_float(self.p_values_corrected[j]),
                "significant": bool(self.significant[j]),
            }
        return {
            "class_id": self.class_id,
            "n_runs": self.n_runs,
            "alpha": self.alpha,
            "test": self.test,
            "correction": self.correction,
            "classifier": self.classifier,
            "space": self.space,
            "statistic": self.statistic,
            "baseline": self.baseline,
            "alternative": self.alternative,
            "n_permutations": self.n_permutations,
            "seed": self.seed,
            "concepts": concepts,
            "notes": list(self.notes),
            "random": {
                "scores": self.random_scores.tolist(),
                "magnitudes": self.random_magnitudes.tolist(),
                "cav_accuracies": self.random_cav_accuracies.tolist(),
                "mean_score": float(self.random_scores.mean()),
            },
        }

    def summary(self) -> str:
        """A readable table, concepts sorted by mean score."""
        label = "(random vs random)" if self.baseline == "random" else "(random concept)"
        width = max([len(n) for n in self.concept_names] + [len(label)])
        lines = [
            f"TCAV for class {self.class_id}: {self.n_runs} random runs, {self.classifier} CAVs "
            f"in {self.space} space, {self.statistic} tested ({self.alternative}) against the "
            f"{self.baseline} baseline, {self.test}"
            + (f" ({self.n_permutations} mixtures)" if self.n_permutations else "")
            + f", {self.correction} correction, "
            f"alpha={self.alpha:g}",
            f"{'concept':<{width}}  score ± std    magnitude  CAV acc  p (corr.)  significant",
        ]
        for j in np.argsort(-self.mean_scores, kind="stable"):
            lines.append(
                f"{self.concept_names[j]:<{width}}  {self.mean_scores[j]:.3f} ± "
                f"{self.std_scores[j]:.3f}  {self.mean_magnitudes[j]:+.3e}  "
                f"{self.mean_cav_accuracies[j]:.3f}    {self.p_values_corrected[j]:.2e}   "
                f"{'yes' if self.significant[j] else 'no'}"
            )
        lines.append(
            f"{label:<{width}}  {self.random_scores.mean():.3f} ± "
            f"{self.random_scores.std():.3f}  {self.random_magnitudes.mean():+.3e}  "
            f"{self.random_cav_accuracies.mean():.3f}"
        )
        if self.test == "permutation":
            lines.append(f"p: each concept's magnitude, its CAVs fitted on all its examples, "
                         f"against {self.n_permutations} random mixtures of the concept sets "
                         f"of its size; the last row is one such mixture per run, for reference")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _json_float(value: float) -> float | None:
    """A float for JSON, or None for NaN (which JSON cannot hold)."""
    return None if np.isnan(value) else float(value)


def _default_permutations(n_concepts: int, alpha: float) -> int:
    """The permutation test's default draws: enough that the smallest p-value it can give,
    ``1 / (n + 1)``, passes a correction over ``n_concepts`` with room to spare."""
    return max(999, int(np.ceil(20 * n_concepts / alpha)) - 1)


def _resolve_test(test: str, baseline: str, classifier: str, statistic: str) -> str:
    """``"auto"``: the permutation test where it applies (a random-concept baseline,
    mean-difference CAVs, the magnitude), else Student's t-test over the runs."""
    fits = baseline == "concepts" and classifier == "mean_difference" and statistic == "magnitude"
    if test == "auto":
        return "permutation" if fits else "ttest_ind"
    if test == "permutation" and not fits:
        raise ValueError(f"test='permutation' draws random mixtures of the concept sets and "
                         f"scores their mean-difference CAVs' magnitudes, so it needs "
                         f"baseline='concepts', classifier='mean_difference' and "
                         f"statistic='magnitude'; got baseline={baseline!r}, "
                         f"classifier={classifier!r}, statistic={statistic!r}. Pass those, or "
                         f"a t-test (test='ttest_ind').")
    return test


def _permutation_p_values(sets: list[np.ndarray], randoms: list[np.ndarray],
                          gradients: np.ndarray, n_permutations: int, alternative: str,
                          rng: np.random.Generator) -> np.ndarray:
    """Monte Carlo permutation p-values of each concept set against random mixtures of all the
    tested sets (rows drawn without replacement, as many as the set has).

    The statistic of a set ``S`` is the tested magnitude, on every row: the mean over the random
    runs ``r`` of the class logit's mean directional derivative along the unit mean-difference
    CAV ``(mean(S) - mean(R_r)) / |mean(S) - mean(R_r)|``. Under the null that the concept's
    examples are exchangeable with the other concepts' examples, the concept's own set is one
    more such mixture, so the p-value ``(1 + #{mixtures at least as extreme}) /
    (n_permutations + 1)`` is exact. It accounts for which examples happened to be drawn for
    each concept, which a t-test over the runs cannot (its runs share the concept's examples, so
    more runs make a sampling accident significant).

    Each draw is a random permutation of the pooled rows; its first ``n`` rows are the mixture
    of size ``n``, for every set size at once (prefix sums). A mixture's squared distance to a
    random mean comes from its rows' sum (``O(n D)``) or, where that is cheaper, from the
    gathered block of the rows' Gram matrix (``O(n^2)``); rows are centred on the pool's mean
    first, so that a large common offset does not cancel catastrophically.
    """
    pool = np.concatenate(sets).astype(np.float64)
    centre = pool.mean(axis=0)
    pool -= centre
    gradient = gradients.astype(np.float64).mean(axis=0)
    random_means = np.stack([r.astype(np.float64).mean(axis=0) for r in randoms]) - centre
    along = pool @ gradient                                           # (N,)
    cross = pool @ random_means.T                                     # (N, R)
    random_along = random_means @ gradient                            # (R,)
    random_square = (random_means ** 2).sum(axis=1)                   # (R,)
    n, dim = pool.shape
    sizes = np.array(sorted({len(s) for s in sets}))
    largest = int(sizes[-1])
    use_gram = largest < dim and n <= 4096   # a mixture's |sum|^2 from its Gram block
    gram = pool @ pool.T if use_gram else None

    def statistic(along_sum, cross_sum, square_sum, size):
        """Per mixture (leading axes), from its rows' sums: the magnitude averaged over runs."""
        size = np.asarray(size, dtype=np.float64)
        mean_along, mean_cross = along_sum / size, cross_sum / size[..., None]
        square = square_sum / size ** 2
        norms = np.sqrt(np.maximum(square[..., None] - 2 * mean_cross
                                   + random_square, 0.0))
        derivative = mean_along[..., None] - random_along
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(norms > 0, derivative / norms, 0.0).mean(axis=-1)

    starts = np.cumsum([0] + [len(s) for s in sets])
    observed = np.array([
        statistic(along[a:b].sum(), cross[a:b].sum(axis=0),
                  float(pool[a:b].sum(axis=0) @ pool[a:b].sum(axis=0)), b - a)
        for a, b in zip(starts[:-1], starts[1:])])
    index = {int(size): k for k, size in enumerate(sizes)}
    above, below = np.zeros(len(sets)), np.zeros(len(sets))
    per_draw = largest * (largest if use_gram else dim)
    chunk_size = max(1, min(256, 2**22 // max(per_draw, 1)))
    done = 0
    while done < n_permutations:
        chunk = min(chunk_size, n_permutations - done)
        rows = np.stack([rng.permutation(n)[:largest] for _ in range(chunk)])  # (c, largest)
        at = sizes - 1
        along_sums = np.cumsum(along[rows], axis=1)[:, at]                     # (c, S)
        cross_sums = np.cumsum(cross[rows], axis=1)[:, at]                     # (c, S, R)
        if use_gram:
            block = gram[rows[:, :, None], rows[:, None, :]]                   # (c, L, L)
            square_sums = np.cumsum(np.cumsum(block, axis=1), axis=2)[:, at, at]
        else:
            sums = np.cumsum(pool[rows], axis=1)[:, at]                        # (c, S, D)
            square_sums = (sums ** 2).sum(axis=-1)
        null = statistic(along_sums, cross_sums, square_sums, sizes.astype(np.float64))
        for j, s in enumerate(sets):  # ties (up to rounding) count against the concept
            values = null[:, index[len(s)]]
            slack = 1e-9 * max(abs(observed[j]), 1e-300)
            above[j] += np.count_nonzero(values >= observed[j] - slack)
            below[j] += np.count_nonzero(values <= observed[j] + slack)
        done += chunk
    greater = (1.0 + above) / (n_permutations + 1.0)
    if alternative == "greater":
        return greater
    return np.minimum(1.0, 2 * np.minimum(greater, (1.0 + below) / (n_permutations + 1.0)))


def _p_value(concept: np.ndarray, random: np.ndarray, test: str,
             alternative: str = "two-sided") -> float:
    # Constant samples make the t statistic 0/0 (or +-inf): no variation is seen, so nothing
    # can be said about the spread, and no honest test of two constant groups gives p = 0
    # (two runs of [0, 0] against [1, 1] are not evidence). NaN: not testable, never significant.
    if test == "ttest_rel":
        constant = np.ptp(concept - random) == 0
    else:
        constant = np.ptp(concept) == 0 and np.ptp(random) == 0
    if constant:
        return float("nan")
    with warnings.catch_warnings():
        # A constant group (e.g. every score 1.0) is valid input; scipy warns about it anyway.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        if test == "ttest_rel":
            return float(stats.ttest_rel(concept, random, alternative=alternative).pvalue)
        return float(stats.ttest_ind(concept, random, equal_var=(test == "ttest_ind"),
                                     alternative=alternative).pvalue)


def correct_p_values(p_values: Any, correction: str = "bonferroni") -> np.ndarray:
    """Family-wise correction of p-values over the concepts tested, clipped at 1.

    ``"bonferroni"``: ``p * m``. ``"holm"``: Holm's step-down, ``max_{j<=i} p_(j) * (m - j + 1)``
    in sorted order (never larger than Bonferroni). ``"none"``: unchanged. A NaN p-value (a
    concept that could not be tested) stays NaN and still counts in ``m`` (conservative).
    """
    correction = check_choice(correction, "correction", CORRECTIONS)
    try:
        p = np.asarray(p_values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"`p_values` must be a 1-D array of p-values; got "
                        f"{describe(p_values)}.") from None
    if p.ndim != 1 or not np.all(np.isnan(p) | ((p >= 0) & (p <= 1))):
        raise ValueError(f"`p_values` must be a 1-D array of p-values in [0, 1] (one per concept "
                         f"tested); got shape {p.shape}"
                         + (f" with values from {np.nanmin(p):g} to {np.nanmax(p):g}"
                            if p.size else "") + ".")
    m = p.shape[0]
    if correction == "none":
        return p.copy()
    if correction == "bonferroni":
        return np.minimum(p * m, 1.0)
    order = np.argsort(p, kind="stable")  # NaN last: it cannot lift the others
    stepped = np.fmax.accumulate(p[order] * (m - np.arange(m)))
    stepped[np.isnan(p[order])] = np.nan
    corrected = np.empty_like(p)
    corrected[order] = np.minimum(stepped, 1.0)
    return corrected


def _shared_rows(sets: Sequence[np.ndarray]) -> tuple[list[tuple[int, int]], int]:
    """Pairs of sets with identical rows (same rows, any order) and the number of pairs that
    share at least one row (identical ones included)."""
    keys = [{row.tobytes() for row in np.ascontiguousarray(s)} for s in sets]
    identical, overlapping = [], 0
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            if keys[a] & keys[b]:
                overlapping += 1
                if keys[a] == keys[b]:
                    identical.append((a, b))
    return identical, overlapping


def _random_runs(random_sets: Any, n_runs: int, set_size: int, space: str, dim: int,
                 rng: np.random.Generator, t_test: bool = True,
                 notes: list[str] | None = None,
                 counterpart: bool = False) -> list[np.ndarray]:
    """The ``n_runs`` random sets as feature rows: given as a list, or drawn from one pool.

    Warnings about the sets (identical or overlapping sets) are also appended to ``notes``.
    With ``counterpart``, one more set follows the run sets: the fixed random counterpart of
    the random-vs-random baseline (Captum's ``[random_0, random_i]``, tensorflow/tcav's
    ``random_counterpart``): ``random_sets[n_runs]`` of a list, or one more set drawn from the
    pool (disjoint from the run sets where the pool allows). A list of exactly ``n_runs`` sets
    has none to spare: the counterpart is then ``R_0`` (run 0 uses ``R_1``), with a note.
    """
    notes = [] if notes is None else notes

    def warn(message: str) -> None:
        warnings.warn(message, UserWarning, stacklevel=4)
        notes.append(message)

    if isinstance(random_sets, (list, tuple)):
        if len(random_sets) < n_runs:
            raise ValueError(f"`random_sets` holds {len(random_sets)} sets but n_runs={n_runs} "
                             "random runs need one set each; pass more sets, lower n_runs, or "
                             "pass one pool array to draw the sets from.")
        used = n_runs + 1 if counterpart and len(random_sets) > n_runs else n_runs
        sets = [activation_features(s, f"random_sets[{i}]", space, dim=dim, min_rows=2)
                for i, s in enumerate(random_sets[:used])]
        identical, overlapping = _shared_rows(sets)
        if identical:
            shown = ", ".join(f"random_sets[{a}] = random_sets[{b}]" for a, b in identical[:5])
            warn(f"{len(identical)} pair(s) of the random sets are identical ({shown}"
                 f"{', ...' if len(identical) > 5 else ''}): the runs repeat one another, so "
                 f"the baseline's spread is underestimated and the test finds differences "
                 f"that are not there. Pass {used} distinct random sets, or one pool array to "
                 f"draw disjoint sets from.")
        elif overlapping and t_test:
            warn(f"{overlapping} pair(s) of the random sets share examples: the runs are not "
                 f"independent and the test is less reliable. Pass disjoint random sets, or "
                 f"one pool array to draw disjoint sets from.")
        if counterpart and used == n_runs:
            warn(f"`random_sets` holds {n_runs} sets, none to spare for the random-vs-random "
                 f"baseline's fixed random counterpart, so the counterpart is random_sets[0] "
                 f"(random_sets[1] for run 0, whose baseline then mirrors run 1's). Pass "
                 f"{n_runs + 1} sets (the last is the counterpart).")
        return sets
    pool = activation_features(random_sets, "random_sets", space, dim=dim, min_rows=4)
    size = min(set_size, pool.shape[0] // 2)
    if size < set_size:
        warn(f"`random_sets` holds {pool.shape[0]} rows, so each random set has "
             f"{size} (half the pool) instead of {set_size}: the CAVs are fitted on "
             f"fewer examples. Pass a pool of at least {set_size * n_runs} rows for "
             f"{n_runs} disjoint sets of {set_size}.")
    if size * n_runs <= pool.shape[0]:
        order = rng.permutation(pool.shape[0])  # disjoint sets
        sets = [np.sort(order[r * size:(r + 1) * size]) for r in range(n_runs)]
        if counterpart:
            if (n_runs + 1) * size <= pool.shape[0]:
                sets.append(np.sort(order[n_runs * size:(n_runs + 1) * size]))
            else:
                sets.append(_distinct_subset(sets, pool.shape[0], size, rng))
        return [pool[rows] for rows in sets]
    # Too few rows for disjoint sets: each run draws its own subset (sets overlap across runs).
    if size == set_size and t_test:  # a capped size was said above; the permutation test holds
        # the random sets fixed, so overlapping sets only average its statistic over fewer draws
        warn(f"`random_sets` holds {pool.shape[0]} rows, too few for {n_runs} disjoint "
             f"random sets of {size}: the sets overlap across runs, so the runs are "
             f"not independent and the test is less reliable. Pass a pool of at least "
             f"{size * n_runs} rows, or lower `n_runs`.")
    sets = [np.sort(rng.choice(pool.shape[0], size, replace=False)) for _ in range(n_runs)]
    if counterpart:
        sets.append(_distinct_subset(sets, pool.shape[0], size, rng))
    return [pool[rows] for rows in sets]


def _distinct_subset(sets: list[np.ndarray], n: int, size: int,
                     rng: np.random.Generator) -> np.ndarray:
    """A random subset of ``size`` of ``range(n)`` equal to none of ``sets`` (sorted rows)."""
    while True:
        rows = np.sort(rng.choice(n, size, replace=False))
        if not any(np.array_equal(rows, s) for s in sets):
            return rows


def tcav(h: Any, class_activations: Any, concepts: Mapping[str, Any],
         random_sets: Sequence[Any] | np.ndarray | torch.Tensor, class_id: int, *,
         n_runs: int = 10, alpha: float = 0.05, test: str = "auto",
         correction: str = "bonferroni", classifier: str = "mean_difference",
         space: str = "pooled", statistic: str = "magnitude", baseline: str = "concepts",
         alternative: str = "greater", test_size: float = 0.33,
         random_set_size: int | None = None, n_permutations: int | None = None,
         batch_size: int = 64, device: Any = None,
         seed: int | np.random.Generator | None = None, progress: bool = True) -> TCAVResult:
    """TCAV scores of concepts for a class, tested for significance against baseline CAVs.

    The defaults are the *specific* protocol of the module notes; ``**CLASSIC_TCAV`` gives the
    TCAV paper's and Captum's (sign count, SGD CAVs, random-vs-random, two-sided).

    Parameters
    ----------
    h : nn.Module or callable
        The model from the layer onwards: activations ``(n, C, h, w)`` or ``(n, D)`` → logits
        ``(n, n_classes)`` (e.g. ``h`` of ``conceptkit.extraction.split_model``).
    class_activations : np.ndarray or torch.Tensor
        Activations of the class inputs, in the layout ``h`` takes.
    concepts : dict[str, array]
        Activations of each concept's examples, ``(n_c, C, h', w')`` or already pooled
        ``(n_c, C)`` in pooled space; ``(n_c, C, h, w)`` or ``(n_c, C*h*w)`` in flat space.
    random_sets : list of arrays, or one array
        At least ``n_runs`` random activation sets (the first ``n_runs`` are used), or one pool
        of random activations from which ``n_runs`` subsets of ``random_set_size`` rows are
        drawn (disjoint when the pool is large enough, ACE style; a pool too small for that
        warns, as does one smaller than twice ``random_set_size``).
    class_id : int
        Output of ``h`` whose logit is differentiated.
    n_runs : int
        Random runs (CAVs per concept); at least 2, and fewer than 10 warns: TCAV scores vary
        between random sets. More runs do not make a t-test more trustworthy: its runs share
        each concept's examples, so with many runs an accident of which examples were drawn
        becomes significant (the permutation test does not have this flaw).
    alpha : float
        Significance level for the corrected p-values.
    test : {"auto", "permutation", "ttest_ind", "welch", "ttest_rel"}
        ``"auto"`` (default): ``"permutation"`` with the default protocol (random-concept
        baseline, mean-difference CAVs, magnitude), else ``"ttest_ind"``. ``"permutation"``: the
        concept's magnitude (mean over the runs, its CAVs fitted on all its examples) against
        the magnitudes of ``n_permutations`` random mixtures of the same size drawn from all the
        tested concept sets; p is the share of mixtures at least as extreme (with the observed
        one counted). Exact under the null that the concept's examples are
        like the other concepts' examples, whatever ``n_runs``: on 40 simulated null datasets of
        3 concepts with 40 runs it flagged 0.05 of them at alpha 0.05, the t-test 0.45. The
        t-tests compare the concept's statistic with the baseline's over the runs: Student's
        with equal variances (tensorflow/tcav), Welch's, or paired by random run (ACE; run ``r``
        of a concept and of the baseline share the random set ``R_r`` as negatives). They treat
        each concept's examples as fixed (the TCAV paper's protocol).
    correction : {"bonferroni", "holm", "none"}
        Correction over the concepts tested; Bonferroni multiplies p by the number of concepts.
    classifier, space, test_size
        See :func:`compute_cav`. The default ``"mean_difference"`` CAVs barely move between
        runs, so the test sees the concept rather than the classifier's noise. Pooled space
        asks whether adding the concept *anywhere* (every position moves along the CAV) raises
        the class; flat space asks it for the concept *where the concept images show it*
        (positions matter; every set must share the class activations' spatial size). Transformer
        tokens need flat space or ``"cls"``: the CLS token of tokens ``(n, T, C)`` (timm's
        layout), the CAV fitted on it and the logit differentiated with respect to it alone —
        whether the concept, wherever the concept images show it, raises the class through the
        token a CLS-pooled transformer classifies from.
    statistic : {"magnitude", "sign_count"}
        What is tested: the mean directional derivative (how much the logit rises along the
        CAV), or the fraction of class inputs where it rises (the TCAV score). Behind a linear
        head every sign count is 0 or 1, which says nothing about the size of the effect.
    baseline : {"concepts", "random"}
        ``"concepts"``: each run's baseline CAV separates a random mixture of all the tested
        concept sets from ``R_r`` (a "random concept": it shares whatever makes concept images
        differ from random images; needs at least 2 concepts). ``"random"``: random-vs-random
        CAVs, the TCAV paper's: one fixed random counterpart against each ``R_r`` (Captum's
        ``[random_0, random_i]``), the set after the ``n_runs`` run sets (pass ``n_runs + 1``
        sets, or a pool, from which one more set is drawn; with exactly ``n_runs`` sets
        ``R_0`` is the counterpart, ``R_1`` for run 0, and a note says so).
    alternative : {"greater", "two-sided"}
        ``"greater"``: significant only when the concept raises the class more than the
        baseline (a note names a significant concept along which the logit still falls).
        ``"two-sided"``: also when it lowers it. Either way a concept whose CAVs are near
        chance (mean held-out accuracy below 0.6) is not significant.
    random_set_size : int, optional
        Rows per random set drawn from a pool; default the size of the largest concept set
        (capped at half the pool). So with a pool and the default, adding a concept set
        larger than the others changes the random sets, hence every concept's CAVs; pass
        ``random_set_size`` (or a list of random sets) to keep them.
    n_permutations : int or None
        Random mixtures drawn by the permutation test (at least 19); default
        ``max(999, 20 m / alpha - 1)`` for ``m`` concepts, so the smallest possible p-value
        (``1 / (n_permutations + 1)``) passes the correction with room to spare. An error with
        a t-test.
    batch_size, device, progress
        Batching and device of the backward passes through ``h``; progress bars.
    seed : int, np.random.Generator or None
        Drives the random subsets, the class balancing, the splits and the SGD shuffling.
        ``None`` draws one int seed from fresh entropy, recorded in the result's ``seed`` (as
        a given int is): passing it back repeats the call.

    Returns
    -------
    TCAVResult
    """
    check_not_inference_mode("tcav")  # its logit gradients need autograd
    n_runs = check_int(n_runs, "n_runs", minimum=2)
    alpha = check_float(alpha, "alpha", minimum=0.0, maximum=1.0, strict_minimum=True)
    test = check_choice(test, "test", TESTS)
    correction = check_choice(correction, "correction", CORRECTIONS)
    classifier = check_choice(classifier, "classifier", CLASSIFIERS)
    space = check_choice(space, "space", SPACES)
    statistic = check_choice(statistic, "statistic", STATISTICS)
    baseline = check_choice(baseline, "baseline", BASELINES)
    alternative = check_choice(alternative, "alternative", ALTERNATIVES)
    test = _resolve_test(test, baseline, classifier, statistic)
    if n_permutations is not None:
        if test != "permutation":
            raise ValueError(f"`n_permutations` counts the draws of the permutation test; "
                             f"test={test!r} draws none. Leave it out, or pass "
                             f"test='permutation'.")
        n_permutations = check_int(n_permutations, "n_permutations", minimum=19)
    test_size = check_float(test_size, "test_size", minimum=0.0, maximum=0.99,
                            strict_minimum=True)
    class_id = check_int(class_id, "class_id", minimum=0)
    if not isinstance(concepts, Mapping):
        raise TypeError("`concepts` must be a dict mapping concept names to activations; "
                        f"got {describe(concepts)}.")
    if len(concepts) == 0:
        raise ValueError("`concepts` is empty; give at least one concept set.")
    early_notes: list[str] = []  # said when found (warnings) and kept in the result's notes
    if n_runs < RECOMMENDED_RUNS and test != "permutation":
        message = (f"n_runs={n_runs} random runs: TCAV significance is unreliable with fewer "
                   f"than {RECOMMENDED_RUNS}.")
        warnings.warn(message, UserWarning, stacklevel=2)
        early_notes.append(message)
    names = []
    for key in concepts:
        if not isinstance(key, str):
            raise TypeError(f"`concepts` keys must be concept names (str); got {describe(key)}.")
        names.append(key)

    # Cheap validation of every set first; the backward passes come last. Every set must give
    # as many features as the class activations: the expected size comes from them, so that
    # the wrongly sized set is the one blamed (the class activations when every concept set
    # disagrees with them).
    class_features = activation_features(class_activations, "class_activations", space,
                                         min_rows=1)
    dim = class_features.shape[1]
    features: dict[str, np.ndarray] = {}
    for name in names:
        features[name] = activation_features(concepts[name], f"concepts[{name!r}]", space,
                                             min_rows=2)
    sizes = {name: f.shape[1] for name, f in features.items()}
    if len(set(sizes.values())) == 1 and dim not in sizes.values():
        raise ValueError(f"`class_activations` give {dim} features per example in {space!r} "
                         f"space (shape {tuple(class_activations.shape)}) but the concept sets "
                         f"give {sizes[names[0]]}; they must come from the same layer (and, in "
                         f"flat space, have the same spatial size).")
    for name in names:
        if sizes[name] != dim:
            raise ValueError(f"`concepts[{name!r}]` gives {sizes[name]} features per example in "
                             f"{space!r} space (shape {tuple(concepts[name].shape)}) but "
                             f"`class_activations` give {dim} (shape "
                             f"{tuple(class_activations.shape)}); every concept set must come "
                             f"from the class activations' layer (and, in flat space, have "
                             f"their spatial size).")
    if baseline == "concepts" and len(concepts) < 2:
        raise ValueError("baseline='concepts' compares each concept with a random mixture of "
                         f"the tested concepts, so it needs at least 2 concept sets; got "
                         f"{len(concepts)}. Pass more concept sets or baseline='random'.")
    if random_set_size is None:
        random_set_size = max(f.shape[0] for f in features.values())
    elif isinstance(random_sets, (list, tuple)):
        raise ValueError("`random_set_size` sets the size of the sets drawn from one pool of "
                         "random activations, but `random_sets` is a list of sets, each used "
                         "whole; leave random_set_size out, or pass one pool array.")
    random_set_size = check_int(random_set_size, "random_set_size", minimum=2)
    if seed is None:  # drawn once, and recorded in the result: passing it back repeats the call
        seed = int(np.random.default_rng().integers(2**31 - 1))
    elif not isinstance(seed, np.random.Generator):
        seed = check_int(seed, "seed", minimum=0)
    rng = make_rng(seed)
    randoms = _random_runs(random_sets, n_runs, random_set_size, space, dim, rng,
                           t_test=test != "permutation", notes=early_notes,
                           counterpart=baseline == "random")
    counterpart = randoms[n_runs] if len(randoms) > n_runs else None
    randoms = randoms[:n_runs]
    gradients = logit_gradients(h, class_activations, class_id, space=space,
                                batch_size=batch_size, device=device, progress=progress,
                                name="class_activations")

    shape = (len(names), n_runs)
    scores, magnitudes, accuracies = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    random_scores, random_magnitudes, random_accuracies = (np.zeros(n_runs) for _ in range(3))
    run_seeds = rng.integers(2**31 - 1, size=n_runs)
    # the concept sets in name order wherever they are pooled (the random-concept baseline's
    # mixtures, the permutation test), so that the order of `concepts` changes nothing
    by_name = sorted(names)
    pooled_concepts = np.concatenate([features[name] for name in by_name])
    mixture_size = int(round(np.mean([features[name].shape[0] for name in names])))
    for run in tqdm(range(n_runs), desc="TCAV random runs", disable=not progress):
        # one stream per (run, concept name) and one for the baseline: a concept's CAVs do not
        # depend on which other concepts are tested, nor on their order
        run_rng = np.random.default_rng([int(run_seeds[run]), 0])
        negatives = randoms[run]
        for j, name in enumerate(names):
            cav = fit_cav(features[name], negatives, classifier=classifier, space=space,
                          test_size=test_size,
                          rng=np.random.default_rng([int(run_seeds[run]), 1,
                                                     zlib.crc32(name.encode())]),
                          what=f"concept {name!r} vs random set {run}")
            derivatives = gradients @ cav.vector
            scores[j, run] = np.mean(derivatives > 0)
            magnitudes[j, run] = derivatives.mean()
            accuracies[j, run] = cav.accuracy
        if baseline == "random":
            # one fixed random counterpart against every R_r (Captum's [random_0, random_i],
            # tensorflow/tcav's random_counterpart); pairing R_{r+1} with R_r instead made
            # neighbouring runs anti-correlated (mirror images with two runs)
            if counterpart is not None:
                positives, what = counterpart, f"the random counterpart vs random set {run}"
            else:
                partner = 1 if run == 0 else 0
                positives, what = randoms[partner], f"random set {partner} vs random set {run}"
            cav = fit_cav(positives, negatives, classifier=classifier, space=space,
                          test_size=test_size, rng=run_rng, what=what)
        else:
            rows = np.sort(run_rng.choice(pooled_concepts.shape[0], mixture_size, replace=False))
            cav = fit_cav(pooled_concepts[rows], negatives, classifier=classifier, space=space,
                          test_size=test_size, rng=run_rng,
                          what=f"a random mixture of the concept sets vs random set {run}")
        derivatives = gradients @ cav.vector
        random_scores[run] = np.mean(derivatives > 0)
        random_magnitudes[run] = derivatives.mean()
        random_accuracies[run] = cav.accuracy

    # a zero gradient makes every derivative 0, whatever the statistic; the sign-count
    # statistic also degenerates when every derivative has one sign, magnitudes do not
    notes = zero_gradient_notes(gradients, class_id)
    if not notes and statistic == "sign_count":
        notes = same_sign_notes(scores, random_scores, gradients.shape[0])
    notes += one_input_notes(gradients.shape[0], statistic)
    notes += chance_notes(names, accuracies)
    if baseline == "concepts" and random_accuracies.mean() < CHANCE_ACCURACY:
        notes.append(f"the random-concept baseline is near chance: CAVs of mixtures of the "
                     f"concept sets barely tell them from the random sets (mean held-out "
                     f"accuracy {random_accuracies.mean():.2f}; chance is 0.5), so the random "
                     f"images look like the concepts' images, the mixtures' directions are "
                     f"noise and the test has little power. Use random images unlike the "
                     f"concept images (e.g. whole images where the concepts are parts shown "
                     f"alone), or the classic protocol (**CLASSIC_TCAV).")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    if test == "permutation":
        if n_permutations is None:  # the smallest p-value must pass the correction, with room
            n_permutations = _default_permutations(len(names), alpha)
        smallest = (1 if correction == "none" else len(names)) / (n_permutations + 1)
        if smallest >= alpha:
            warnings.warn(f"n_permutations={n_permutations}: the smallest corrected p-value the "
                          f"test can give is {smallest:.3g}, not below alpha={alpha:g}, so no "
                          f"concept can be significant. Leave `n_permutations` out (default "
                          f"{_default_permutations(len(names), alpha)}) or raise it.",
                          UserWarning, stacklevel=2)
        p_values = np.empty(len(names))
        p_values[[names.index(name) for name in by_name]] = _permutation_p_values(
            [features[name] for name in by_name], randoms, gradients, n_permutations,
            alternative, rng)
    else:
        tested, reference = ((magnitudes, random_magnitudes) if statistic == "magnitude"
                             else (scores, random_scores))
        p_values = np.array([_p_value(tested[j], reference, test, alternative)
                             for j in range(len(names))])
    corrected = correct_p_values(p_values, correction)
    significant, withheld = _gate_significance(names, corrected < alpha, p_values, accuracies,
                                               scores, magnitudes, statistic, alternative,
                                               explain_nan=not np.all(gradients == 0))
    if withheld:
        warnings.warn(withheld, UserWarning, stacklevel=2)
    notes = early_notes + notes + ([withheld] if withheld else [])
    return TCAVResult(
        concept_names=tuple(names), class_id=class_id, scores=scores, magnitudes=magnitudes,
        cav_accuracies=accuracies, random_scores=random_scores,
        random_magnitudes=random_magnitudes, random_cav_accuracies=random_accuracies,
        p_values=p_values, p_values_corrected=corrected, significant=significant,
        alpha=alpha, test=test, correction=correction, classifier=classifier, space=space,
        statistic=statistic, baseline=baseline, alternative=alternative, notes=tuple(notes),
        n_permutations=n_permutations if test == "permutation" else None,
        seed=None if isinstance(seed, np.random.Generator) else int(seed),
    )


def _gate_significance(names: Sequence[str], passed: np.ndarray, p_values: np.ndarray,
                       accuracies: np.ndarray, scores: np.ndarray, magnitudes: np.ndarray,
                       statistic: str, alternative: str,
                       explain_nan: bool = True) -> tuple[np.ndarray, str]:
    """``passed`` (corrected p below alpha) less the concepts that cannot be significant, and
    one note naming those whose significance was withheld and why ("" if none).

    A p-value compares a concept with the baseline, which with the default baseline is the
    *other tested concepts*: next to a concept that strongly lowers the class, anything else
    looks like it raises it, a set of random images included. So a concept is not called
    significant when its CAVs are near chance (mean held-out accuracy below 0.6, as in
    :func:`chance_notes`: there is no concept direction to speak of). A significant concept
    along whose CAVs the class logit still falls (mean magnitude <= 0, or mean sign count
    <= 0.5, with ``alternative="greater"``) stays significant, with a note: the test is
    relative, and on the ground-truth worlds such concepts include parts the model relies on
    (withholding them lost 9 relied-on parts in two seeds of `eval_tcav.py`). A NaN
    p-value (not testable) is never significant either (said unless ``explain_nan`` is false:
    a zero gradient has its own note). The p-values are kept as computed.
    """
    mean_accuracy = accuracies.mean(axis=1)
    if statistic == "magnitude":
        tested, what = magnitudes.mean(axis=1), "mean magnitude {:+.3g}"
        not_raising = tested <= 0
    else:
        tested, what = scores.mean(axis=1), "mean TCAV score {:.3g}"
        not_raising = tested <= 0.5
    reasons, falling = [], []
    significant = passed.copy()
    for j, name in enumerate(names):
        if passed[j] and mean_accuracy[j] < CHANCE_ACCURACY:
            significant[j] = False
            reasons.append(f"{name!r}: its CAVs are near chance (mean held-out accuracy "
                           f"{mean_accuracy[j]:.2f} < {CHANCE_ACCURACY})")
        elif passed[j] and alternative == "greater" and not_raising[j]:
            falling.append(f"{name!r} ({what.format(tested[j])})")
    nan = [name for name, p in zip(names, p_values) if np.isnan(p)]
    parts = []
    if reasons:
        parts.append(f"significance withheld from {len(reasons)} concept(s) whose corrected "
                     f"p-value is below alpha: " + "; ".join(reasons) + ". Their p-values "
                     "compare them with the baseline (with baseline='concepts', the other "
                     "tested concepts), so a concept the class does not rely on can pass it "
                     "next to one that lowers the class; the p-values are kept as computed.")
    if falling:
        parts.append(f"significant relative to the baseline, but the class logit falls along "
                     f"their CAVs: {', '.join(falling)}. With baseline='concepts' the test "
                     f"says such a concept lowers the class less than a typical tested concept "
                     f"does, not that it raises it.")
    if nan and explain_nan:
        parts.append(f"not testable (p-value NaN, never significant): "
                     f"{', '.join(repr(n) for n in nan)}: the concept's and the baseline's "
                     f"statistics are constant over the runs, so the t-test has no variation "
                     f"to compare them with (with few runs or a linear head). Use more runs, "
                     f"an earlier layer, or the magnitude statistic.")
    return significant, " ".join(parts)


def one_input_notes(n_inputs: int, statistic: str) -> list[str]:
    """A note when there is a single class input: every score is then 0 or 1 and the test
    speaks about that one input, not about the class."""
    if n_inputs >= 2:
        return []
    return [f"only {n_inputs} class input (`class_activations`): every TCAV score is 0 or 1 and "
            f"every statistic ({statistic} tested) describes that one input, not the class. "
            f"Pass the activations of many inputs of the class."]


def zero_gradient_notes(gradients: np.ndarray, class_id: int) -> list[str]:
    """A note when the class logit's gradient at the layer is zero for every class input (a dead
    ReLU after the layer, a zero weight row): every directional derivative is then 0."""
    if gradients.size == 0 or np.any(gradients != 0):
        return []
    return [f"degenerate TCAV: the gradient of class {class_id}'s logit at this layer is zero for "
            f"all {gradients.shape[0]} class inputs, so every directional derivative, TCAV score "
            f"and magnitude is 0 and TCAV cannot tell anything about this class here (no concept "
            f"can be significant). The logit does not depend on this layer for these inputs "
            f"(e.g. a dead ReLU or a zero weight row after it): check `class_id` and the model, "
            f"or use another layer."]


def chance_notes(names: Sequence[str], accuracies: np.ndarray) -> list[str]:
    """A note per concept whose CAVs are near chance (mean held-out accuracy over the runs below
    0.6 on balanced splits, where chance is 0.5): its examples are barely told from the random
    ones at this layer, so its CAVs point nowhere in particular and its scores say little."""
    notes = []
    for name, row in zip(names, accuracies):
        if row.mean() < CHANCE_ACCURACY:
            notes.append(f"concept {name!r}: its CAVs barely tell its examples from the random "
                         f"ones at this layer (mean held-out accuracy {row.mean():.2f} over "
                         f"{row.size} runs; chance is 0.5), so they point nowhere in particular "
                         f"and its scores say little about the concept. Use other or more "
                         f"concept examples, random examples the concept's are not drawn from, "
                         f"or another layer.")
    return notes


def same_sign_notes(scores: np.ndarray, random_scores: np.ndarray, n_inputs: int) -> list[str]:
    """A note when every CAV (concept and random) gives all class inputs directional derivatives
    of one sign, so that every score is 0 or 1 (and the random baseline decides significance)."""
    every = np.concatenate([np.ravel(scores), np.ravel(random_scores)])
    if n_inputs < 2 or not np.isin(every, (0.0, 1.0)).all():
        return []
    return [f"degenerate TCAV: for every CAV, all {n_inputs} class inputs have directional "
            f"derivatives of the same sign (or zero), so every TCAV score is 0 or 1 and significance is "
            f"decided by how often random CAVs point the same way. The class logit's gradient "
            f"has the same direction for every input, as at a layer followed only by pooling "
            f"and an affine head (the gradient is the head's weight row whatever the input). "
            f"Use an earlier layer, where the rest of the model is non-linear (e.g. the block "
            f"before the last), or test the magnitudes (mean directional derivatives: "
            f"statistic='magnitude', the default) rather than the sign counts."]


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
TCAVResult.__repr__ = dataclass_repr  # type: ignore[method-assign]
