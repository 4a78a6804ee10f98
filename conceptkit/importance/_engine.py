"""Run a head ``h`` on concept-masked reconstructions ``(U ⊙ m) · W``, in memory-bounded chunks.

This is the only place that calls ``h`` for concept importance and the concept metrics. Codes
are kept as ``(n, P, k)`` with ``P`` the number of spatial positions (``P = 1`` for 2-D cuts); a
mask value multiplies a concept's code at every position, as in CRAFT.

Two settings change what ``h`` sees and what is read from it:

- ``residual=True`` adds each input's reconstruction residual ``R = A - U W`` back, so the head
  sees ``(U ⊙ m) W + R``: with every mask at 1 that is exactly the real activation ``A``, and
  masking concept ``j`` removes only its contribution ``u_j w_j`` (image-level concept ablation);
  without it the head sees the reconstruction ``U W`` only (CRAFT).
- ``score="probability"`` reads the class's softmax probability (a sigmoid for one output)
  instead of its logit: the quantity the model's measured reliance on a part is defined with.
  It is computed in float64 from the logits, so that a confident float32 model's probability
  is not rounded to exactly 1 before a concept is removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import model_device, model_dtype, on_device, preserved_model_state
from .._validation import (
    PROBABILITIES_GIVEN,
    all_finite,
    are_probabilities,
    check_choice,
    check_int,
    check_not_meta,
    describe,
    resolve_device,
)

DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: What is read from ``h``'s output: the class logit or the class probability.
SCORES = ("logit", "probability")
#: Why every importance would be 0 when every code is: said by :func:`prepare_problem` and by
#: the explainer (whichever importance it runs, pixel ablation included).
NO_CONCEPT_PRESENT = ("`bank.encode(activations)` is zero for every input: no concept is present "
                      "in these activations, so every importance would be 0.")
_NON_FINITE_HEAD = ("`h` returned NaN or Inf values on concept-masked reconstructions of the "
                    "activations; the importances would be NaN. Check `h` (e.g. a log or division "
                    "of an activation that masking can drive to 0).")


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or numpy array; got {describe(x)}.")
    check_not_meta(x, name)
    return x.detach()


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not all_finite(x):
        raise ValueError(f"`{name}` contains NaN or Inf values.")


@dataclass(eq=False)
class ConceptProblem:
    """A validated (head, codes, dictionary, class) tuple; see :func:`prepare_problem`."""

    h: Callable[[torch.Tensor], Any]
    module: nn.Module | None
    codes: torch.Tensor          # (n, P, k) on `device`, position-major
    components: torch.Tensor     # (k, C) on `device`
    spatial: tuple[int, ...]     # () for (n, C) activations, (h, w) for maps
    class_id: int
    n_classes: int
    rows_per_chunk: int
    progress: bool
    # Per-input extra argument of ``h`` (e.g. a ViT's CLS/register tokens): ``h(acts, context)``.
    context: torch.Tensor | None = None
    # (n, P, C) activations minus their reconstruction, added back when set (``residual=True``).
    residual: torch.Tensor | None = None
    score: str = "logit"
    # The dtype whose rounding the scores carry (see :attr:`precision`): the dtype of ``h``'s
    # output, set by :func:`prepare_problem`.
    output_dtype: torch.dtype = torch.float32

    @property
    def n_inputs(self) -> int:
        return self.codes.shape[0]

    @property
    def n_concepts(self) -> int:
        return self.codes.shape[2]

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def present(self) -> np.ndarray:
        """``(n,)`` bool: the inputs in which some concept is present (a non-zero code)."""
        return (self.codes.abs().amax(dim=(1, 2)) > 0).cpu().numpy()

    @property
    def precision(self) -> torch.dtype:
        """The dtype whose rounding the scores carry: that of ``h``'s logits for the logit
        score (bfloat16 included); float64 for the probability, which is computed in float64
        and resolves changes far below the logits' rounding near 0 and 1."""
        return self.output_dtype if self.score == "logit" else torch.float64

    def reconstruct(self, rows: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Activations ``(R, C, *spatial)`` from codes ``(R, P, k)`` of inputs ``inputs`` (plus
        their residual when the problem keeps it)."""
        # One GEMM (R P, k) @ (k, C); viewed as (R, C, h, w) the result is channels_last.
        out = torch.matmul(rows, self.components)
        if self.residual is not None:
            out = out + self.residual[inputs]
        out = out.transpose(1, 2)
        return out.reshape(rows.shape[0], self.components.shape[1], *self.spatial)

    def read_score(self, logits: torch.Tensor) -> torch.Tensor:
        """The class score of ``h``'s output ``(R, n_classes)``: logit or probability."""
        if self.score == "logit":
            return logits[:, self.class_id]
        # float64: a float32 softmax rounds a confident class's probability to exactly 1
        if logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0].double())
        return torch.softmax(logits.double(), dim=1)[:, self.class_id]

    def _head(self, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Class scores of reconstructions ``rows`` belonging to inputs ``inputs``."""
        if self.context is None:
            logits = self.h(self.reconstruct(rows, inputs))
        else:
            logits = self.h(self.reconstruct(rows, inputs), self.context[inputs])
        return self.read_score(logits)

    def _chunks(self, total: int, desc: str) -> Iterator[tuple[int, int]]:
        bar = tqdm(total=total, desc=desc, disable=not self.progress, leave=False)
        try:
            for start in range(0, total, self.rows_per_chunk):
                stop = min(total, start + self.rows_per_chunk)
                yield start, stop
                bar.update(stop - start)
        finally:
            bar.close()

    def scores(self, masks: np.ndarray | torch.Tensor, inputs: np.ndarray | None = None,
               desc: str = "h evaluations") -> np.ndarray:
        """Class scores ``(n_sel, M)`` of ``h`` on masked reconstructions, as float64.

        ``masks`` is ``(M, k)`` (the same masks for every selected input) or ``(n_sel, M, k)``
        (one set per input); ``inputs`` selects inputs (all by default).
        """
        index = torch.arange(self.n_inputs) if inputs is None else torch.as_tensor(inputs)
        masks = torch.as_tensor(masks).to(self.device, self.codes.dtype)
        shared = masks.ndim == 2
        n_masks = masks.shape[-2]
        flat_masks = masks if shared else masks.reshape(-1, masks.shape[-1])
        total = len(index) * n_masks
        # float64 whatever the head's dtype (numpy has no bfloat16; probabilities are float64)
        out = torch.empty(total, dtype=torch.float64, device=self.device)
        index = index.to(self.device)
        with torch.no_grad():
            for start, stop in self._chunks(total, desc):
                rows = torch.arange(start, stop, device=self.device)
                row_masks = flat_masks[rows % n_masks] if shared else flat_masks[start:stop]
                codes = self.codes[index[rows // n_masks]] * row_masks[:, None, :]
                out[start:stop] = self._head(codes, index[rows // n_masks])
        if not bool(torch.isfinite(out).all()):
            raise ValueError(_NON_FINITE_HEAD)
        return out.cpu().numpy().reshape(len(index), n_masks)

    def gradients(self, inputs: np.ndarray, scales: np.ndarray,
                  desc: str = "gradients") -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(start, stop, grad)``: ``d y_c / d x`` at ``x = scale * U[input]``, ``(R, P, k)``.

        Raises a ValueError when ``h`` is not differentiable with respect to its input.
        """
        index = torch.as_tensor(inputs, device=self.device)
        scales = torch.as_tensor(scales, dtype=self.codes.dtype, device=self.device)
        params = list(self.module.parameters()) if self.module is not None else []
        frozen = [p.requires_grad for p in params]
        try:
            for p in params:   # gradients w.r.t. the codes only; flags are restored below
                p.requires_grad_(False)
            for start, stop in self._chunks(len(index), desc):
                codes = self.codes[index[start:stop]] * scales[start:stop, None, None]
                codes.requires_grad_(True)
                with torch.enable_grad():
                    target = self._head(codes, index[start:stop])
                    grad = None
                    if target.requires_grad:
                        (grad,) = torch.autograd.grad(target.sum(), codes, allow_unused=True)
                if grad is None:
                    raise ValueError(
                        "`h` is not differentiable with respect to its input activations (its "
                        "output carries no gradient to them); use method='sobol', 'occlusion' "
                        "or 'rise', which only need forward passes.")
                if not bool(torch.isfinite(target).all()):
                    raise ValueError(_NON_FINITE_HEAD)
                if not bool(torch.isfinite(grad).all()):
                    raise ValueError(_NON_FINITE_HEAD.replace("values", "gradients"))
                yield start, stop, grad
        finally:
            for p, flag in zip(params, frozen):
                p.requires_grad_(flag)


@contextlib.contextmanager
def model_guard(h: Any, device: Any = None):
    """For modules: eval mode and every flag restored (``preserved_model_state``), and ``h`` on
    ``device`` for the block (moved back afterwards); a no-op for plain callables."""
    if not isinstance(h, nn.Module):
        yield
        return
    with preserved_model_state(h), on_device(h, device):
        yield


def _components(bank: Any) -> torch.Tensor:
    if not hasattr(bank, "components") or not callable(getattr(bank, "encode", None)):
        raise TypeError(
            "`bank` must provide `components` (k, C) and `encode(activations)` mapping (n, C) to "
            f"(n, k) and (n, C, h, w) to (n, k, h, w), such as a ConceptBank; got {describe(bank)}."
        )
    components = _as_tensor(bank.components, "bank.components")
    if components.ndim != 2 or 0 in components.shape:
        raise ValueError("`bank.components` must be a non-empty (k, C) matrix; got shape "
                         f"{tuple(components.shape)}.")
    _check_finite(components, "bank.components")
    return components


def prepare_problem(h: Any, activations: Any, bank: Any, class_id: Any, *,
                    device: Any = None, batch_size: int | None = None,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET,
                    progress: bool = True, context: Any = None, residual: bool = False,
                    score: str = "logit") -> ConceptProblem:
    """Validate the inputs of a concept importance or metric call and encode the activations.

    Must run inside :func:`model_guard` so that ``h`` is in eval mode. ``context`` (one entry
    per input along axis 0) is passed to ``h`` as a second argument with each input's rows.
    ``residual`` and ``score``: see the module docstring.
    """
    check_choice(score, "score", SCORES)
    if not isinstance(residual, bool):
        raise TypeError(f"`residual` must be True or False; got {describe(residual)}.")
    if not callable(h):
        raise TypeError(f"`h` must be an nn.Module or a callable mapping activations to logits "
                        f"(n, n_classes); got {describe(h)}.")
    module = h if isinstance(h, nn.Module) else None
    components = _components(bank)
    n_concepts, n_channels = components.shape
    acts = _as_tensor(activations, "activations")
    if acts.ndim not in (2, 4):
        raise ValueError(f"`activations` must be (n, C) or (n, C, h, w); got shape "
                         f"{tuple(acts.shape)}.")
    if acts.shape[0] == 0:
        raise ValueError("`activations` is empty: need at least one input.")
    if acts.shape[1] != n_channels:
        raise ValueError(f"`activations` has {acts.shape[1]} channels in axis 1 but the bank's "
                         f"components are (k={n_concepts}, C={n_channels}).")
    if not acts.is_floating_point():
        raise TypeError(f"`activations` must be floating point; got dtype {acts.dtype}.")
    _check_finite(acts, "activations")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)

    codes = _as_tensor(bank.encode(activations), "bank.encode(activations)")
    spatial = tuple(acts.shape[2:])
    expected = (acts.shape[0], n_concepts, *spatial)
    if tuple(codes.shape) != expected:
        raise ValueError(f"`bank.encode(activations)` must return codes of shape {expected} "
                         f"(n, k{', h, w' if spatial else ''}); got {tuple(codes.shape)}.")
    _check_finite(codes, "bank.encode(activations)")

    if device is None:
        device = model_device(module) if module is not None else acts.device
    device = resolve_device(device)
    dtype = model_dtype(module) if module is not None else (
        acts.dtype if acts.dtype in (torch.float32, torch.float64) else torch.float32)
    codes = codes.to(device, dtype).reshape(expected[0], n_concepts, -1).transpose(1, 2)
    codes = codes.contiguous()
    components = components.to(device, dtype)
    bytes_per_row = max(1, n_channels * codes.shape[1] * components.element_size())
    rows = max(1, memory_budget // bytes_per_row)
    if batch_size is not None:
        rows = min(rows, batch_size)
    if context is not None:
        context = _as_tensor(context, "context")
        if context.ndim == 0 or context.shape[0] != acts.shape[0]:
            raise ValueError(f"`context` must have one entry per input along axis 0 "
                             f"({acts.shape[0]}); got shape {tuple(context.shape)}.")
        context = context.to(device, dtype if context.is_floating_point() else context.dtype)
    rest = None
    if residual:
        flat = acts.to(device, dtype).reshape(acts.shape[0], n_channels, -1).transpose(1, 2)
        rest = (flat - torch.matmul(codes, components)).contiguous()
        if not all_finite(rest):
            raise ValueError("the reconstruction residual `activations - codes @ components` "
                             "contains NaN or Inf values; check the bank.")
    problem = ConceptProblem(h=h, module=module, codes=codes, components=components,
                             spatial=spatial, class_id=-1, n_classes=-1, rows_per_chunk=rows,
                             progress=bool(progress), context=context, residual=rest,
                             score=score)
    problem.n_classes, problem.output_dtype = _probe_head(problem)
    problem.class_id = _check_class(class_id, problem.n_classes)
    _check_sensitive(problem)
    return problem


def _insensitive(problem: ConceptProblem, inputs: np.ndarray) -> np.ndarray | None:
    """The class scores ``(len(inputs),)`` with every concept kept when removing every concept,
    or any one of them, leaves each of them bit-for-bit unchanged; None when one moves."""
    k = problem.n_concepts
    y = problem.scores(np.stack([np.ones(k), np.zeros(k)]), inputs, desc="sensitivity probe")
    if not np.array_equal(y[:, 0], y[:, 1]):
        return None
    # a head can score "all" and "none" alike and still respond to single concepts (one that
    # reads a difference of two): removing each concept alone settles it
    single = problem.scores(1.0 - np.eye(k), inputs, desc="sensitivity probe")
    return y[:, 0] if np.all(single == y[:, :1]) else None


def _check_sensitive(problem: ConceptProblem, n_probe: int = 1) -> None:
    """Refuse a problem whose every importance would be exactly 0 (no silent zeros): codes that
    are all zero, or a class score that removing every concept leaves bit-for-bit unchanged on
    every input.

    The first ``n_probe`` inputs with a concept are probed first; only when none of them
    responds are the others probed too, so the problem is refused only when no input responds
    (whatever their order), and a responsive problem costs two passes of ``h``."""
    active = np.flatnonzero(problem.present())
    if active.size == 0:
        raise ValueError(f"{NO_CONCEPT_PRESENT} Check that the activations come from the layer "
                         f"the bank was fitted at.")
    kept = []
    for inputs in (active[:n_probe], active[n_probe:]):
        if inputs.size == 0:
            continue
        scores = _insensitive(problem, inputs)
        if scores is None:
            return
        kept.append(scores)
    scores = np.concatenate(kept)
    if problem.score == "probability" and np.all((scores == 0.0) | (scores == 1.0)):
        level = " or ".join(str(v) for v in sorted({int(v) for v in scores}, reverse=True))
        raise ValueError(
            f"the class probability of `h` (class {problem.class_id}) is exactly {level} in "
            f"float64 on all {active.size} inputs with a concept, with every concept kept, "
            f"removed, or any one of them removed: the softmax is saturated, so no concept can "
            f"move it and every importance would be 0. Read the class logit, which does not "
            f"saturate: concept_importance(..., score=\"logit\") (through the explainer, "
            f"ConceptExplainer(..., importance_kwargs={{\"score\": \"logit\"}})).")
    raise ValueError(
        f"the class score of `h` (class {problem.class_id}) is exactly the same with every "
        f"concept removed from the activations, or any one of them, as with all of them (on "
        f"all {active.size} inputs with a concept), so every importance would be 0: these "
        "activations do not reach the output. A CLS-pooled transformer explained at its last "
        "block is the usual cause (its head reads only the CLS token, never the patch tokens); "
        "explain at an earlier block.")


#: Importances whose class-level values (the means over inputs) are all at most this share of
#: the largest per-input importance are 0 up to rounding: see :func:`check_not_cancelled`.
CANCELLED_SHARE = 1e-3


def check_not_cancelled(per_input: Any, method: str, factorizer: str | None = None) -> None:
    """Refuse importances that cancel: signed per-input values ``(n, k)`` whose mean over the
    inputs is, for every concept, 0 up to rounding (at most :data:`CANCELLED_SHARE` of the
    largest per-input value), so that the ranking would order rounding noise.

    This is what a centred factorizer (PCA, ICA: each concept's codes sum to 0 over the fitted
    rows) gives with a head that pools the layer linearly (global average pooling, then a
    linear layer): each concept's contribution to the class score, summed over the class's
    positions, is exactly 0, and gradient x input, integrated gradients and occlusion return
    means of about 1e-9 beside per-image values of about 1e-3. The share: the residues
    measured there were 1e-6 to 7e-5 of the largest per-image value (a float32 head, 256 to
    4,096 positions; they grow with the number of positions summed), and importances that mean
    something are of the order of that value (0.67 to 0.73 with NMF on the same models): 1e-3
    sits far from both. Values all 0 have their own warning and are left to it."""
    message = cancelled_message(per_input, method, factorizer)
    if message is not None:
        raise ValueError(message)


def cancelled_message(per_input: Any, method: str, factorizer: str | None = None,
                      argument: str = "importance") -> str | None:
    """What :func:`check_not_cancelled` says about ``per_input`` (None when nothing cancels);
    ``argument`` names the setting the caller's user chose the method with (``importance`` for
    the explainer, ``method`` for :func:`conceptkit.importance.concept_importance`)."""
    values = np.asarray(per_input, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        return None
    peak = float(np.abs(values).max())
    if peak == 0.0 or not ((values > 0).any() and (values < 0).any()):
        return None  # all 0 (warned about), or of one sign: such values cannot cancel
    largest_mean = float(np.abs(values.mean(axis=0)).max())
    if largest_mean > CANCELLED_SHARE * peak:
        return None
    cause = (f"{factorizer}'s codes are centred" if factorizer in _CENTRED_FACTORIZERS
             else "the usual cause: a factorizer whose codes are centred, such as PCAConcepts or "
                  "ICAConcepts, whose codes sum to 0")
    return (
        f"{argument}={method!r}: every concept's importance (the mean of its per-image values "
        f"over the {values.shape[0]} inputs) is 0 up to rounding, at most {largest_mean:.2g} "
        f"beside per-image values up to {peak:.2g}: the per-image importances cancel, and the "
        f"ranking would order rounding noise. Why: {cause} over the fitted rows, and a head "
        f"that pools the layer linearly (global average pooling, then a linear layer) adds "
        f"each concept's contributions over the class to exactly 0. Use a factorizer whose "
        f"codes are not centred (NMF, the default, or SemiNMF), or "
        + ("importance='pixel_ablation' or 'sobol'" if argument == "importance" else f"{argument}='sobol'")
        + ", which do not average signed contributions.")


#: The factorizers whose codes are centred on the fitted rows (see :func:`check_not_cancelled`).
_CENTRED_FACTORIZERS = ("PCAConcepts", "ICAConcepts")


def _probe_head(problem: ConceptProblem) -> tuple[int, torch.dtype]:
    """The number of classes ``h`` returns and the dtype of its logits."""
    sample = problem.reconstruct(problem.codes[:1], torch.zeros(1, dtype=torch.long,
                                                                device=problem.device))
    try:
        with torch.no_grad():
            out = problem.h(sample) if problem.context is None else problem.h(sample, problem.context[:1])
    except Exception as err:   # a user's head failing on our input: say what we passed
        raise ValueError(f"`h` failed on reconstructed activations of shape "
                         f"{tuple(sample.shape)}: {type(err).__name__}: {err}") from err
    if not isinstance(out, torch.Tensor):
        from ..extraction._heads import describe_output

        raise ValueError(f"`h` (the model after the layer) must return class logits (n, "
                         f"n_classes), but it returns {describe_output(out)} (the pipeline: "
                         f"ConceptExplainer(..., output=...); elsewhere: "
                         f"h = conceptkit.extraction.select_output(h, key)).")
    if out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"`h` must return logits of shape (n, n_classes); for input of shape "
                         f"{tuple(sample.shape)} it returned {describe(out)}.")
    if problem.score == "probability" and are_probabilities(out):
        raise ValueError(PROBABILITIES_GIVEN.format(what="`h`", n=out.shape[1]))
    dtype = out.dtype if out.is_floating_point() else torch.float64
    return int(out.shape[1]), dtype


def _check_class(class_id: Any, n_classes: int) -> int:
    try:
        return check_int(class_id, "class_id", minimum=0, maximum=n_classes - 1)
    except ValueError as err:
        raise ValueError(f"`class_id` must be in [0, {n_classes - 1}]: `h` returns {n_classes} "
                         f"classes; got {class_id}.") from err
