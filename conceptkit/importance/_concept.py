"""Concept importance for one class: how much each concept drives the class score of ``h``."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .._deprecation import warn_deprecated
from .._reprs import dataclass_repr
from .._validation import check_choice, check_float, check_int, check_seed, describe, resolve_seed
from ._attribution import (
    HEAD_ROUNDING,
    MethodOutput,
    Seeds,
    closed_form,
    gradient_input,
    input_groups,
    integrated_gradients,
    occlusion,
    rise,
)
from ._design import check_sampler, replicated_design
from ._engine import (
    DEFAULT_MEMORY_BUDGET,
    SCORES,
    ConceptProblem,
    cancelled_message,
    model_guard,
    prepare_problem,
)
from ._estimators import check_estimator, estimate_constant
from ._fastpath import DesignCheck, fit_affine


@dataclass(frozen=True, eq=False)
class ConceptImportance:
    """Importances of ``k`` concepts for one class.

    Attributes
    ----------
    per_input : ndarray of shape (n, k)
        Importance of each concept for each input.
    importances : ndarray of shape (k,)
        Class-level importance: the mean of ``per_input`` over inputs.
    ci_low, ci_high : ndarray of shape (k,) or None
        Student-t confidence interval of that mean over inputs (NaN for a single input; None
        when ``confidence=None``).
    method : str
    class_id : int
    params : dict
        The settings that produced the result (JSON-compatible), including ``fast_path`` for
        Sobol.
    """

    per_input: np.ndarray
    importances: np.ndarray
    ci_low: np.ndarray | None
    ci_high: np.ndarray | None
    method: str
    class_id: int
    params: dict = field(default_factory=dict)

    @property
    def ranking(self) -> np.ndarray:
        """Concept indices from most to least important (ties keep concept order)."""
        return np.argsort(-self.importances, kind="stable")

    def to_dict(self) -> dict:
        """A JSON-compatible dict (NaN becomes None)."""
        def clean(values):
            if values is None:
                return None
            return [None if not math.isfinite(v) else float(v) for v in np.ravel(values)]
        return {
            "method": self.method,
            "class_id": int(self.class_id),
            "importances": clean(self.importances),
            "ci_low": clean(self.ci_low),
            "ci_high": clean(self.ci_high),
            "ranking": [int(i) for i in self.ranking],
            "per_input": [clean(row) for row in self.per_input],
            "params": dict(self.params),
        }


def _sobol(problem: ConceptProblem, seeds: Seeds, *, n_designs: int, estimator: str,
           sampler: str, shared_design: bool, fast_path: Any, order: str = "total") -> MethodOutput:
    entry = check_sampler(sampler, n_designs)
    function = check_estimator(order, estimator)
    include_b = order == "first"
    k = problem.n_concepts
    affine = fit_affine(problem, seeds.probe_rng()) if fast_path in ("auto", True) else None
    if fast_path is True and affine is None:
        raise ValueError("fast_path=True needs a head `h` that is affine in its input "
                         "activations; this `h` failed the affinity check. Use fast_path='auto'.")
    shared = shared_design or not entry.randomized
    rows = n_designs * (k + 2 if include_b else k + 1)

    def run(head, check):
        def outputs(points: np.ndarray, group: np.ndarray | None) -> np.ndarray:
            # float32 masks: what a float32 head sees anyway, and the same for both paths.
            a, b = points[..., :k].astype(np.float32), points[..., k:].astype(np.float32)
            if head is not None:
                check.collect(a, b, include_b, group)
                return head.design_scores(a, b, include_b, group)
            return problem.scores(replicated_design(a, b, include_b), group)

        # the scores are float64 here, but h rounded them in its own dtype: an input whose
        # score moves by no more than that rounding is constant (indices 0), not ranked noise
        def indices(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return estimate_constant(values, k, function, include_b, problem.precision,
                                     HEAD_ROUNDING)

        out = np.empty((problem.n_inputs, k))
        constant = np.empty(problem.n_inputs, dtype=bool)
        if shared:
            out[:], constant[:] = indices(outputs(entry.draw(n_designs, 2 * k,
                                                             seeds.shared_rng()), None))
        else:
            for group in input_groups(problem.n_inputs, rows * k * 4):
                points = entry.draw_batch(n_designs, 2 * k, [seeds.input_rng(i) for i in group])
                out[group], constant[group] = indices(outputs(points, group))
        return out, constant

    check = None
    if affine is not None:
        check = DesignCheck(problem, affine, seeds.check_rng(), rows)
        out, constant = run(affine, check)
        if not check.holds():   # the collapse is wrong where it matters: ask h itself
            if fast_path is True:
                raise ValueError("fast_path=True needs a head `h` that is affine in its input "
                                 "activations; on rows of the Sobol design `h` differs from "
                                 "its affine collapse. Use fast_path='auto'.")
            affine = None
    if affine is None:
        out, constant = run(None, None)
    info = {"n_designs": n_designs, "estimator": estimator, "sampler": sampler, "order": order,
            "shared_design": bool(shared), "fast_path": affine is not None}
    if check is not None and affine is None:
        info["fast_path_rejected"] = "design"   # the probe passed, the design check did not
    return MethodOutput(out, info, constant)


@dataclass(frozen=True)
class _Method:
    run: Callable[..., MethodOutput]
    options: dict                     # extra keyword arguments and their checks
    residual: bool = False            # default of ``residual`` (see concept_importance)
    score: str = "logit"              # default of ``score``
    renamed: dict = field(default_factory=dict)  # old option name -> new (warns, for 0.2)


def _check_positive_int(value: Any, name: str) -> int:
    return check_int(value, name, minimum=1)


def _check_two_or_more(value: Any, name: str) -> int:
    # RISE's centred estimator compares masks that keep and drop a concept: with one mask
    # every importance is exactly 0
    return check_int(value, name, minimum=2)


def _check_order(value: Any, name: str) -> str:
    return check_choice(value, name, ("total", "first"))


def _check_open_unit(value: Any, name: str) -> float:
    value = check_float(value, name, minimum=0.0, maximum=1.0, strict_minimum=True)
    if value >= 1.0:
        raise ValueError(f"`{name}` must be < 1; got {value}.")
    return value


#: Concept importance methods by name.
METHODS: dict[str, _Method] = {
    "sobol": _Method(_sobol, {"order": _check_order}),
    "closed_form": _Method(closed_form, {}),
    "gradient_input": _Method(gradient_input, {}),
    "integrated_gradients": _Method(integrated_gradients, {"steps": _check_positive_int}),
    "occlusion": _Method(occlusion, {}),
    # Image-level concept ablation: occlusion of one concept at every position of the real
    # activation (residual kept), read as the drop of the class probability.
    "ablation": _Method(occlusion, {}, residual=True, score="probability"),
    "rise": _Method(rise, {"n_samples": _check_two_or_more, "probability": _check_open_unit},
                    renamed={"n_masks": "n_samples"}),
}


def _check_seed(seed: Any) -> int | None:
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63))
    return check_seed(seed)


#: Sobol's own settings of :func:`concept_importance`: another method does not read them, so a
#: value other than the default (read from its signature) is refused there rather than ignored.
SOBOL_SETTINGS = ("n_designs", "estimator", "sampler", "shared_design", "fast_path")
#: Arguments of :func:`concept_importance` that a caller such as the explainer sets itself.
OWN_ARGUMENTS = ("n_designs", "seed", "device", "progress", "context")


def _keyword_defaults() -> dict[str, Any]:
    """The keyword arguments of :func:`concept_importance` and their defaults."""
    return {name: p.default for name, p in inspect.signature(concept_importance).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def method_options(method: str, method_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The checked options of ``method`` (deprecated names renamed in ``method_kwargs``);
    unknown ones are refused naming what the method accepts."""
    check_choice(method, "method", METHODS)
    entry = METHODS[method]
    for old, new in entry.renamed.items():
        if old in method_kwargs:
            if new in method_kwargs:
                raise TypeError(f"got both `{old}` (its deprecated name) and `{new}` for "
                                f"method={method!r}; pass only `{new}`.")
            warn_deprecated(f"the {method!r} option `{old}` of concept_importance()", f"`{new}`")
            method_kwargs[new] = method_kwargs.pop(old)
    unknown = sorted(set(method_kwargs) - set(entry.options))
    if unknown:
        accepted = ", ".join(entry.options) or "none"
        raise TypeError(f"unexpected keyword argument(s) {unknown} for method={method!r}; "
                        f"accepted: {accepted}.")
    return {name: entry.options[name](value, name) for name, value in method_kwargs.items()}


def sobol_designs(method: str, n_designs: int) -> dict[str, int]:
    """``{"n_designs": n_designs}`` for Sobol, nothing for a method that draws no design: what a
    caller holding one ``n_designs`` setting for every method passes on."""
    return {"n_designs": n_designs} if method == "sobol" else {}


#: Sobol designs per input when none are given (CRAFT's 32).
DEFAULT_DESIGNS = 32


def designs_setting(n_designs: Any, method: str, default: int = DEFAULT_DESIGNS) -> int | None:
    """Check a caller's ``n_designs`` against the importance ``method`` it goes with: Sobol's
    designs per input (``default`` when None), None for a method that draws no design. A value
    given with such a method would be ignored, so it is refused."""
    if n_designs is None:
        return default if method == "sobol" else None
    n_designs = check_int(n_designs, "n_designs", minimum=1)
    if method != "sobol":
        raise TypeError(f"`n_designs` sets how many Sobol designs score each input; "
                        f"importance={method!r} draws none, so it would be ignored. Leave "
                        f"`n_designs` out, or pass importance='sobol'.")
    return n_designs


def check_importance_kwargs(method: str, kwargs: dict[str, Any]) -> None:
    """Check an explainer's ``importance_kwargs`` for ``method`` when it is built: keys the
    explainer sets itself, options of another method and bad values are refused now, not after
    the activations and the factorization."""
    own = sorted(set(kwargs) & set(OWN_ARGUMENTS))
    if own:
        raise TypeError(f"`importance_kwargs` may not set {own}: the explainer passes its own "
                        f"(give them to the explainer itself, e.g. ConceptExplainer(n_designs=...)).")
    general = set(_keyword_defaults())  # concept_importance's own keywords, not the method's
    rest = {k: v for k, v in kwargs.items() if k not in general}
    try:
        method_options(method, dict(rest))
        _check_sobol_settings(method, {k: v for k, v in kwargs.items() if k in SOBOL_SETTINGS})
    except (TypeError, ValueError) as err:
        raise type(err)(f"importance_kwargs: {err}") from None


def _check_sobol_settings(method: str, settings: dict[str, Any]) -> None:
    """Refuse Sobol's settings, other than their defaults, with another method (they would be
    ignored), and check their values for Sobol."""
    if method != "sobol":
        defaults = _keyword_defaults()
        given = sorted(k for k, v in settings.items() if not (v is defaults[k] or v == defaults[k]))
        if given:
            raise TypeError(f"{given} are Sobol settings; method={method!r} does not use them.")
        return
    settings = {**{k: v for k, v in _keyword_defaults().items() if k in SOBOL_SETTINGS},
                **settings}
    if settings["fast_path"] not in ("auto", True, False):
        raise ValueError(f"`fast_path` must be 'auto', True or False; got "
                         f"{describe(settings['fast_path'])}.")
    check_sampler(settings["sampler"], settings["n_designs"])


def student_interval(per_input: np.ndarray, confidence: float | None):
    """The Student-t interval of the mean over axis 0 (the inputs): NaN with fewer than two
    inputs; ``(None, None)`` without a confidence level. The one interval of concept importance,
    pixel ablation and the atlas."""
    if confidence is None:
        return None, None
    n = per_input.shape[0]
    if n < 2:
        nan = np.full(per_input.shape[1:], np.nan)
        return nan, nan.copy()
    half = (stats.t.ppf((1 + confidence) / 2, n - 1) * per_input.std(axis=0, ddof=1)
            / math.sqrt(n))
    mean = per_input.mean(axis=0)
    return mean - half, mean + half


def _warn_constant(result: MethodOutput, problem: ConceptProblem, method: str) -> None:
    """Warn when some inputs with a concept were scored constant up to rounding (their
    importances are 0), as ``sobol_indices`` does; every input is the all-zero warning's."""
    if result.constant is None:
        return
    constant = np.flatnonzero(result.constant & problem.present())
    if constant.size == 0 or not np.any(result.per_input):
        return
    shown = ", ".join(str(int(i)) for i in constant[:10]) + (", ..." if constant.size > 10 else "")
    warnings.warn(f"concept_importance(method={method!r}): the class {problem.class_id} score of "
                  f"`h` is constant up to the rounding of its dtype "
                  f"({str(problem.precision).replace('torch.', '')}) on {constant.size} of the "
                  f"{problem.n_inputs} inputs (inputs {shown}): there is no variance to share "
                  f"out, and their importances are returned as 0. No concept of `bank` moves "
                  f"the score on those inputs.", RuntimeWarning, stacklevel=3)


#: How :func:`concept_importance`'s warning about importances that cancel begins.
CANCELLED_WARNING = "concept_importance: importances that cancel. "


def concept_importance(h: Any, activations: Any, bank: Any, class_id: int,
                       method: str = "sobol", *, n_designs: int = 32, estimator: str = "jansen",
                       sampler: str = "sobol", shared_design: bool = False,
                       fast_path: bool | str = "auto", batch_size: int | None = None,
                       memory_budget: int = DEFAULT_MEMORY_BUDGET,
                       seed: int | np.random.Generator | None = None, device: Any = None,
                       confidence: float | None = 0.95, progress: bool = True,
                       context: Any = None, residual: bool | None = None,
                       score: str | None = None, **method_kwargs: Any) -> ConceptImportance:
    """Importance of each concept of ``bank`` for class ``class_id`` of the head ``h``.

    Only ``h`` runs, on reconstructions ``(U ⊙ m) · W`` of the class's activations, where
    ``U = bank.encode(activations)`` and ``W = bank.components``; a mask value ``m_j`` scales
    concept ``j`` at every spatial position (CRAFT's reparameterisation). The score is
    ``h(...)[:, class_id]``, the class logit for a classifier head.

    Parameters
    ----------
    h : nn.Module or callable
        Maps activations ``(n, C, h, w)`` (or ``(n, C)``) to logits ``(n, n_classes)``. A module
        runs in eval mode; its training and ``requires_grad`` flags are restored afterwards.
    activations : tensor or array of shape (n, C, h, w) or (n, C)
        The class's activations at the layer that ``h`` starts from.
    bank : object
        Provides ``components`` ``(k, C)`` and ``encode(activations)`` (``(n, k[, h, w])``),
        for example a ``conceptkit.concepts.ConceptBank``.
    class_id : int
        Column of ``h``'s output to explain.
    method : str
        ``"sobol"`` (total Sobol index, default), ``"closed_form"`` (exact total index of an
        affine ``h``: the affinity checks of Sobol's fast path but the design rows, refused
        when ``h`` fails them), ``"gradient_input"``, ``"integrated_gradients"`` (kwarg
        ``steps=50``), ``"occlusion"``, ``"rise"`` (kwargs ``n_samples=1000`` masks, at least
        2, ``probability=0.5``) or ``"ablation"``: image-level concept ablation, the drop of
        the class probability when concept ``j``'s contribution ``u_j w_j`` is removed from
        every position of each input's real activation (occlusion with ``residual=True,
        score="probability"``; signed: a concept whose removal raises the class probability
        gets a negative importance).
    n_designs, estimator, sampler, shared_design, fast_path
        Sobol settings (another method refuses a value other than the default rather than
        ignore it). ``n_designs`` base points per input (a power
        of two for Sobol' samplers). ``shared_design=False`` scrambles an independent design per
        input (several times more accurate class-level importances at equal cost than one shared
        design); ``shared_design=True, sampler="halton_unscrambled"`` reproduces CRAFT.
        ``fast_path="auto"`` collapses an affine ``h`` to one vector per input (no pass
        through ``h`` per mask); ``True`` requires it, ``False`` disables it. The collapse is
        used only where it matches ``h``, each input within a tolerance of its own (``1e-4``
        of that input's score range, ``1e-9`` for float64 heads, plus rounding): on a probe
        of a few inputs (random masks and the corners of the mask cube), on every input with
        all concepts kept and on two seeded random masks of its own, and on 64 seeded rows of
        the design. Where every check passes, the results are those of ``fast_path=False``
        up to that tolerance (a nonlinearity confined to a thin region of the mask cube that
        no checked mask reaches can still pass); otherwise ``h`` scores every mask itself
        (``params["fast_path"]`` is then False, and ``params["fast_path_rejected"]`` is
        ``"design"`` when only the design rows disagreed). A score that varies by no more than
        a couple of rounding steps of ``h``'s output dtype at its magnitude is constant: its
        indices are 0, with a warning.
        Sobol also accepts ``order="first"`` (Saltelli 2010; evaluates ``B`` too).
    batch_size : int or None
        Most rows per call of ``h`` (otherwise set by ``memory_budget``).
    memory_budget : int
        Bytes of reconstructed activations per call of ``h`` (default 256 MiB).
    seed : int or None
        Seeds designs, masks and the affinity checks; the same seed gives the same result.
        None draws one from fresh entropy; ``params["seed"]`` records the seed used either way.
    device : str, torch.device or None
        Where ``h`` runs; defaults to the device of ``h``'s parameters.
    confidence : float or None
        Level of the Student-t interval of the class-level mean over inputs.
    progress : bool
        Show a progress bar over calls of ``h``.
    context : tensor of shape (n, ...) or None
        An extra per-input argument: ``h`` is then called as ``h(activations, context)`` with
        each input's own entry (a ViT's CLS/register tokens, which are not decomposed).
    residual : bool or None
        Keep each input's reconstruction residual ``A - U W``: ``h`` then sees
        ``(U ⊙ m) W + (A - U W)``, which is the real activation when no concept is masked, so
        only the masked concepts' contributions change. False: ``h`` sees ``(U ⊙ m) W`` (CRAFT).
        None: the method's default (True for ``"ablation"``, False otherwise).
    score : {"logit", "probability"} or None
        Read the class logit or the class softmax probability (sigmoid for one output) from
        ``h``. None: the method's default (``"probability"`` for ``"ablation"``, the logit
        otherwise). The exact fast path and ``"closed_form"`` need the logit of an affine head.

    Returns
    -------
    ConceptImportance
        Signed per-input values whose means cancel (every concept's mean is 0 up to rounding
        beside per-input values far from 0: centred codes such as PCA's under a head that pools
        linearly) come back as computed, with a RuntimeWarning that says why; the explainer
        refuses them.
    """
    options = method_options(method, method_kwargs)
    entry = METHODS[method]
    _check_sobol_settings(method, {"n_designs": n_designs, "estimator": estimator,
                                   "sampler": sampler, "shared_design": shared_design,
                                   "fast_path": fast_path})
    if method == "sobol":
        options.update(n_designs=n_designs, estimator=estimator, sampler=sampler,
                       shared_design=bool(shared_design), fast_path=fast_path)
        check_estimator(options.get("order", "total"), estimator)
    if confidence is not None:
        confidence = _check_open_unit(confidence, "confidence")
    seed = _check_seed(seed)
    if seed is None:  # fresh randomness, recorded in ``params`` so that the run can be repeated
        seed = resolve_seed(None)
    residual = entry.residual if residual is None else residual
    if not isinstance(residual, bool):
        raise TypeError(f"`residual` must be True, False or None; got {describe(residual)}.")
    score = entry.score if score is None else check_choice(score, "score", SCORES)
    with model_guard(h, device):
        problem = prepare_problem(h, activations, bank, class_id, device=device,
                                  batch_size=batch_size, memory_budget=memory_budget,
                                  progress=progress, context=context, residual=residual,
                                  score=score)
        result = entry.run(problem, Seeds(seed), **options)
    _warn_constant(result, problem, method)
    if not np.any(result.per_input):
        warnings.warn(f"concept_importance(method={method!r}): every importance is 0 — the class "
                      f"{problem.class_id} score of `h` does not change (up to rounding) when "
                      f"any concept of `bank` is scaled or removed, on any of the "
                      f"{problem.n_inputs} inputs. The ranking means nothing: check that `h` reads "
                      f"these activations (e.g. the patch tokens of a CLS-pooled transformer's "
                      f"last block do not reach its output) and that `class_id` is the class "
                      f"meant.", RuntimeWarning, stacklevel=2)
    factorizer = getattr(bank, "factorizer", None)
    cancelled = cancelled_message(result.per_input, method, None if factorizer is None
                                  else type(factorizer).__name__, argument="method")
    if cancelled is not None:  # the explainer refuses these; here the caller gets them, warned
        warnings.warn(f"{CANCELLED_WARNING}{cancelled}", RuntimeWarning, stacklevel=2)
    low, high = student_interval(result.per_input, confidence)
    params = {"seed": seed, "confidence": confidence, "n_inputs": problem.n_inputs,
              "n_concepts": problem.n_concepts, "residual": residual, "score": score,
              **result.info}
    return ConceptImportance(per_input=result.per_input, importances=result.per_input.mean(axis=0),
                             ci_low=low, ci_high=high, method=method, class_id=problem.class_id,
                             params=params)


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
ConceptImportance.__repr__ = dataclass_repr  # type: ignore[method-assign]
