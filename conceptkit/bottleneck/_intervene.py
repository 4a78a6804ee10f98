"""Test-time interventions: replace predicted concepts by true ones and re-run the head.

Policies for :func:`intervention_curve` (which concept group is replaced next):

- ``"random"``: a random order of the groups, the same for every example, drawn afresh for
  each of ``n_trials`` seeded trials. The curve reports the mean and standard deviation over
  trials (Koh's ``tti.py`` reports the *maximum* over trials, which flatters the curve).
- ``"uncertainty"``: per example, the groups whose predicted presence ``sigmoid(logit)`` is
  closest to 0.5 first (the group's mean ``|p − 0.5|``, smallest first). Deterministic.
- ``"importance"``: per example, the groups that move the predicted class's logit the most
  first: the group's sum of ``|∂ logit_ŷ / ∂ concept_j|`` at the example's predicted bottleneck
  (for a linear head this is ``|W[ŷ, j]|``, with ``ŷ`` the class predicted before any
  intervention). Deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._reprs import dataclass_repr
from .._torchutils import model_dtype, on_device, preserved_model_state
from .._validation import check_choice, check_int, describe, make_rng, to_numpy
from ._data import as_cbm_data, as_inputs, as_tensor, check_concepts
from ._model import CBMOutput, ConceptBottleneckModel, check_cbm, check_inputs

POLICIES = ("random", "uncertainty", "importance")
#: The random policy's number of orders and seed when ``n_trials`` / ``seed`` are left out.
RANDOM_TRIALS, RANDOM_SEED = 5, 0


def refuse_random_arguments(policy: str, **given: Any) -> None:
    """Refuse ``n_trials`` / ``seed`` given (not None) to a policy other than ``"random"``: a
    deterministic policy takes one order per example and would ignore them without a word."""
    named = [f"`{name}`" for name, value in given.items() if value is not None]
    if policy == "random" or not named:
        return
    raise ValueError(f"{' and '.join(named)} set{'s' if len(named) == 1 else ''} the random "
                     f"orders of policy='random'; policy={policy!r} is deterministic (one order "
                     f"per example) and would ignore {'it' if len(named) == 1 else 'them'}. "
                     f"Leave {' and '.join(named)} out, or use policy='random'.")


@dataclass(frozen=True)
class InterventionCurve:
    """Task accuracy as concept groups are replaced by their true values.

    Attributes
    ----------
    n_intervened : np.ndarray
        ``(G + 1,)`` number of groups replaced: 0, 1, ..., G.
    accuracy_mean, accuracy_std : np.ndarray
        ``(G + 1,)`` task accuracy (mean and std over trials; std is 0 for deterministic policies).
    accuracies : np.ndarray
        ``(n_trials, G + 1)`` accuracy of every trial.
    policy : str
    groups : tuple of tuple of int
    area : float
        Normalised area under the mean curve: trapezoid rule over ``n_intervened / G`` in [0, 1],
        so a curve at accuracy 1 everywhere has area 1.
    """

    n_intervened: np.ndarray
    accuracy_mean: np.ndarray
    accuracy_std: np.ndarray
    accuracies: np.ndarray
    policy: str
    groups: tuple[tuple[int, ...], ...]
    area: float


def _as_mask(mask: Any, shape: tuple[int, int]) -> torch.Tensor:
    mask = torch.as_tensor(to_numpy(mask) if not isinstance(mask, torch.Tensor) else mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"`mask` must be boolean (True = replace); got dtype {mask.dtype}.")
    if mask.shape not in (torch.Size(shape), torch.Size(shape[1:])):
        raise ValueError(f"`mask` must have shape {shape} or ({shape[1]},); got {tuple(mask.shape)}.")
    return mask.expand(shape)


def intervene(model: ConceptBottleneckModel, x: Any, concept_values: Any, mask: Any) -> CBMOutput:
    """Predict with the concepts where ``mask`` is True replaced by ``concept_values``.

    Parameters
    ----------
    model : ConceptBottleneckModel
    x : torch.Tensor
        ``(N, ...)`` floating inputs (cast to the model's dtype; integer inputs are refused).
    concept_values : array-like
        ``(N, k)`` true concept presence in [0, 1]; mapped to bottleneck space by
        ``model.true_to_bottleneck`` (0/1 for sigmoid bottlenecks, the calibrated 5th/95th logit
        percentiles for logit bottlenecks).
    mask : array-like of bool
        ``(N, k)`` or ``(k,)``: True where the concept is replaced.

    Returns
    -------
    CBMOutput
        ``concepts`` holds the bottleneck after replacement, ``class_logits`` the head's output on
        it; ``concept_logits`` are the encoder's unchanged predictions.
    """
    model = check_cbm(model, calibrated=True)
    x = as_inputs(x, "x")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be a tensor of inputs (N, ...); got {describe(x)}.")
    concepts = check_concepts(as_tensor(concept_values, "concept_values"), "concept_values")
    if concepts.shape != (x.shape[0], model.n_concepts):
        raise ValueError(f"`concept_values` must have shape (N, n_concepts) = "
                         f"({x.shape[0]}, {model.n_concepts}); got {tuple(concepts.shape)}.")
    mask = _as_mask(mask, tuple(concepts.shape))
    check_inputs(model, x, "x")
    with preserved_model_state(model), torch.no_grad():
        device = model.intervention_low.device
        out = model(x.to(device, model_dtype(model)))  # float64 inputs to a float32 model
        replaced = torch.where(mask.to(device), model.true_to_bottleneck(concepts.to(device)),
                               out.concepts)
        return CBMOutput(out.concept_logits, replaced, model.predict_from_concepts(replaced))


def _check_groups(groups: Any, n_concepts: int) -> list[list[int]]:
    if groups is None:
        return [[j] for j in range(n_concepts)]
    if not isinstance(groups, (list, tuple)) or not groups:
        raise TypeError(f"`groups` must be a non-empty list of lists of concept indices; "
                        f"got {describe(groups)}.")
    checked, seen = [], set()
    for g, group in enumerate(groups):
        if not isinstance(group, (list, tuple)) or not group:
            raise ValueError(f"`groups[{g}]` must be a non-empty list of concept indices; got {group!r}.")
        members = [check_int(j, f"groups[{g}] entry", minimum=0, maximum=n_concepts - 1) for j in group]
        repeated = sorted({j for j in members if members.count(j) > 1})
        if repeated:
            raise ValueError(f"`groups[{g}]` lists concept(s) {repeated} more than once; list each "
                             f"concept once.")
        overlap = seen.intersection(members)
        if overlap:
            raise ValueError(f"`groups` must not overlap; concept(s) {sorted(overlap)} appear twice.")
        seen.update(members)
        checked.append(members)
    return checked


def _group_scores(policy: str, model: ConceptBottleneckModel, out: CBMOutput,
                  groups: list[list[int]]) -> torch.Tensor:
    """``(N, G)`` priority of each group per example (higher = intervene earlier)."""
    if policy == "uncertainty":
        per_concept = -(torch.sigmoid(out.concept_logits) - 0.5).abs()
        reduce = "mean"
    else:
        values = out.concepts.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model.predict_from_concepts(values)
            chosen = logits.gather(1, out.class_logits.argmax(1, keepdim=True)).sum()
            (grad,) = torch.autograd.grad(chosen, values)
        per_concept = grad.abs()
        reduce = "sum"
    cols = [per_concept[:, g].mean(1) if reduce == "mean" else per_concept[:, g].sum(1) for g in groups]
    return torch.stack(cols, dim=1)


def intervention_curve(model: ConceptBottleneckModel, data: Any, *, policy: str = "random",
                       groups: list[list[int]] | None = None, n_trials: int | None = None,
                       seed: int | None = None, batch_size: int = 256, device: Any = None,
                       progress: bool = False) -> InterventionCurve:
    """Task accuracy as true concept values replace predicted ones, group by group.

    Parameters
    ----------
    model : ConceptBottleneckModel
    data : tuple (x, concepts, labels) or Dataset yielding (x, c, y)
        Evaluation data (normally the test split).
    policy : {"random", "uncertainty", "importance"}
        Order of intervention (see the module notes).
    groups : list of list of int, optional
        Concept groups replaced together; default each concept its own group.
    n_trials : int, optional
        Random orders to average over (``"random"`` only; default 5).
    seed : int, optional
        Seed of the random orders (``"random"`` only; default 0). The other policies are
        deterministic and refuse ``n_trials`` and ``seed``, which would change nothing.

    Returns
    -------
    InterventionCurve
    """
    model = check_cbm(model, calibrated=True)
    policy = check_choice(policy, "policy", POLICIES)
    refuse_random_arguments(policy, n_trials=n_trials, seed=seed)
    n_trials = check_int(RANDOM_TRIALS if n_trials is None else n_trials, "n_trials", minimum=1)
    rng = make_rng(RANDOM_SEED if seed is None else seed)
    data = as_cbm_data(data, "data", n_concepts=model.n_concepts, n_classes=model.n_classes)
    groups = _check_groups(groups, model.n_concepts)
    out = model.predict_all(data, batch_size=batch_size, device=device, progress=progress)
    concepts, labels = data.columns()
    with preserved_model_state(model), on_device(model, device) as head_device, torch.no_grad():
        out = CBMOutput(*(t.to(head_device) for t in out))
        true_values = model.true_to_bottleneck(concepts.to(head_device))
        labels = labels.to(head_device)
        n, n_groups = len(labels), len(groups)
        membership = torch.zeros(n_groups, model.n_concepts, dtype=torch.bool, device=head_device)
        for g, members in enumerate(groups):
            membership[g, members] = True
        if policy == "random":
            orders = [torch.as_tensor(rng.permutation(n_groups), device=head_device).expand(n, -1)
                      for _ in range(n_trials)]
        else:
            scores = _group_scores(policy, model, out, groups)
            # stable sort so that ties keep the group order: deterministic across runs
            orders = [torch.sort(scores, dim=1, descending=True, stable=True).indices]
        accuracies = np.zeros((len(orders), n_groups + 1))
        for t, order in enumerate(orders):
            mask = torch.zeros(n, model.n_concepts, dtype=torch.bool, device=head_device)
            for step in range(n_groups + 1):
                if step > 0:
                    mask |= membership[order[:, step - 1]]
                values = torch.where(mask, true_values, out.concepts)
                predicted = model.predict_from_concepts(values).argmax(1)
                accuracies[t, step] = float((predicted == labels).double().mean())
    mean = accuracies.mean(0)
    x_axis = np.arange(n_groups + 1)
    area = float(np.trapezoid(mean, x_axis / n_groups))
    return InterventionCurve(n_intervened=x_axis, accuracy_mean=mean,
                             accuracy_std=accuracies.std(0), accuracies=accuracies, policy=policy,
                             groups=tuple(tuple(g) for g in groups), area=area)


# Short reprs: shapes of arrays, not their values (print(result) stays readable).
InterventionCurve.__repr__ = dataclass_repr  # type: ignore[method-assign]
