"""Does an explanation's importance ranking follow what the model really relies on?

Each concept is given the part it sits on (:func:`localisation`), and that part's measured
reliance (:func:`reliance`); the rank correlation of importance and reliance over the class's
concepts is the faithfulness. A deletion curve compares removing concepts in importance order
with removing parts in reliance order.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import model_device, preserved_model_state
from .._validation import check_choice, check_float, check_int, describe
from ..extraction._fingerprint import callable_identity
from ._fill import Fill, paint
from ._inputs import (
    UNDETERMINED,
    check_masks,
    check_measure,
    check_model,
    check_part_names,
    check_preprocess,
    checked_images,
    class_id_of,
    class_scores,
    fitted_on,
    importances_of,
    model_at_layer_of,
    part_label,
    run_device,
    same_weights,
)
from ._localisation import Localisation
from ._localisation import localisation as locate
from ._reliance import Reliance
from ._reliance import reliance as measure_reliance

#: How a concept is removed for the deletion curve.
REMOVALS = ("pixels", "activations")


@dataclass(frozen=True, eq=False)
class DeletionCurves:
    """Mean class score as concepts (importance order) or parts (reliance order) are removed.

    Attributes
    ----------
    removal : str
        ``"pixels"`` (a concept's high-map pixels painted out) or ``"activations"`` (its
        contribution subtracted from the layer's activations).
    measure : str
        ``"probability"`` or ``"logit"``.
    concept_order, part_order : ndarray of int
        The removal orders (most important / most relied-on first).
    concept_curve : ndarray (k + 1,)
        Mean class score after removing the first ``s`` concepts, ``s = 0 .. k``.
    part_curve : ndarray (P' + 1,)
        The same for the ``P'`` parts shown in at least one image.
    concept_area, part_area : float
        Normalised areas under the curves (see :attr:`area_between`).
    area_between : float
        ``concept_area − part_area``: both curves on steps ``s / S``, ``S = max(k, P')``, a curve
        staying at its last value once everything is removed, integrated by the trapezoid
        rule over [0, 1]. 0: concepts in importance order destroy the class score as fast as
        parts in reliance order; positive: slower (the ranking is less faithful).
    """

    removal: str
    measure: str
    concept_order: np.ndarray
    part_order: np.ndarray
    concept_curve: np.ndarray
    part_curve: np.ndarray
    concept_area: float
    part_area: float
    area_between: float

    def to_dict(self) -> dict[str, Any]:
        return {"removal": self.removal, "measure": self.measure,
                "concept_order": [int(i) for i in self.concept_order],
                "part_order": [int(i) for i in self.part_order],
                "concept_curve": [float(v) for v in self.concept_curve],
                "part_curve": [float(v) for v in self.part_curve],
                "concept_area": self.concept_area, "part_area": self.part_area,
                "area_between": self.area_between}


@dataclass(frozen=True, eq=False)
class Faithfulness:
    """Agreement of an explanation's concept importances with the model's measured reliance.

    Attributes
    ----------
    spearman, kendall : float
        Spearman's rho and Kendall's tau-b (``scipy.stats``; ties get average ranks) between
        ``importances`` and ``concept_reliance`` over the ``k`` concepts. NaN when either is
        constant (every concept on the background, say): see ``notes``.
    spearman_significant : float
        ``spearman`` with the reliance of every part that the images cannot tell from 0
        (:meth:`Reliance.significant`, 95 %) set to 0: noise-level drops of distractors do not
        rank the concepts sitting on them.
    importances : ndarray (k,)
    concept_parts : ndarray (k,) of int
        The part each concept sits on (``-1``: background; ``-2``: undetermined, no part shown
        in enough images).
    concept_reliance : ndarray (k,)
        The measured reliance (``Reliance.expected`` in ``measure``) of each concept's part;
        0 for a concept on the background (and for parts within ``reliance_floor`` of 0).
    part_spearman, part_kendall : float
        The same over the parts shown in at least one image, between each part's importance
        (the sum of the importances of the concepts sitting on it; 0 if none) and its reliance:
        unlike the concept-level statistics, several concepts on one part (duplicates of a large
        dictionary) count once.
    part_importances : ndarray (P,)
    measure : str
    class_id : int
    deletion : DeletionCurves or None
    reliance : Reliance
    localisation : Localisation
    notes : tuple of str
    """

    spearman: float
    kendall: float
    importances: np.ndarray
    concept_parts: np.ndarray
    concept_reliance: np.ndarray
    part_spearman: float
    part_kendall: float
    part_importances: np.ndarray
    measure: str
    class_id: int
    deletion: DeletionCurves | None
    reliance: Reliance = field(repr=False)
    localisation: Localisation = field(repr=False)
    notes: tuple[str, ...] = ()
    spearman_significant: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None
        names = self.reliance.part_names
        return {"class_id": self.class_id, "measure": self.measure,
                "spearman": num(self.spearman), "kendall": num(self.kendall),
                "spearman_significant": num(self.spearman_significant),
                "part_spearman": num(self.part_spearman), "part_kendall": num(self.part_kendall),
                "part_importances": [float(v) for v in self.part_importances],
                "importances": [float(v) for v in self.importances],
                "concept_parts": [int(p) for p in self.concept_parts],
                "concept_part_names": [part_label(int(p), names) for p in self.concept_parts],
                "concept_reliance": [float(v) for v in self.concept_reliance],
                "deletion": None if self.deletion is None else self.deletion.to_dict(),
                "notes": list(self.notes)}

    def __repr__(self) -> str:
        area = ("" if self.deletion is None
                else f", deletion area between {self.deletion.area_between:+.3f}")
        return (f"Faithfulness(class_id={self.class_id}, spearman={self.spearman:.3f}, "
                f"kendall={self.kendall:.3f}{area})")


def rank_correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho and Kendall's tau-b of ``x`` and ``y`` (NaN when either is constant)."""
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (float(stats.spearmanr(x, y).statistic),
                float(stats.kendalltau(x, y).statistic))


def faithfulness(result: Any, model: nn.Module, images: Any, masks: Any,
                 part_names: Sequence[str] | None = None, *, class_id: int | None = None,
                 kind: str | None = None, fill: str | Callable | None = None,
                 measure: str = "probability", deletion: bool = True, removal: str = "pixels",
                 reliance: Reliance | None = None, localisation: Localisation | None = None,
                 tolerance: int | None = None, quantile: float | None = None,
                 min_images: int | None = None, assign_threshold: float | None = None,
                 reliance_floor: float = 0.0,
                 blur_sigma: float | None = None, preprocess: Callable | None = None,
                 batch_size: int = 64, device: Any = None, progress: bool = True) -> Faithfulness:
    """Rank correlation between concept importance and the reliance of the part each concept
    sits on, and deletion curves.

    Parameters
    ----------
    result : explanation
        Has ``importances (k,)``, ``concept_maps(images, kind=...)`` and ``class_id`` (a
        ClassConcepts). ``removal="activations"`` also needs ``bank`` and ``model_at_layer``.
    model : nn.Module
        The explained model (left as found). With ``removal="activations"`` it must be the
        explanation's own (``result.model_at_layer.model``, or one with the same weights), as
        must ``preprocess``: the concepts' curve runs that model.
    images, masks, part_names
        Images ``(N, 3, H, W)`` in [0, 1] and part masks ``(N, P, H, W)``.
    class_id : int, optional
        Default ``result.class_id``; another class than ``result.class_id`` is refused.
    kind, tolerance, quantile, min_images, assign_threshold
        Passed to :func:`localisation` (which part each concept sits on); None: its defaults
        (``"auto"``, ``max(1, round(side / 16))``, 0.9, 3, 0.5). ``quantile`` also cuts the
        concepts' regions of ``removal="pixels"``. With a precomputed ``localisation`` the settings it was
        computed with are used; passing one that differs is an error.
    fill, blur_sigma
        How parts (and, for the deletion curve, concepts) are painted out (:func:`reliance`);
        None: ``"median"``. With a precomputed ``reliance`` the deletion curves paint with the
        fill it was measured with; passing another is an error (a callable: another object,
        even one of the same name, such as a second lambda).
    measure : str
        ``"probability"`` (default) or ``"logit"``: the class score used throughout.
    reliance_floor : float
        A part whose reliance lies within ``±reliance_floor`` counts as 0 (not relied on) in
        the correlations, so that noise-level drops (distractors: ~0.003 on the shapes world)
        do not rank concepts; default 0: every drop counts as measured.
    deletion : bool
        Also compute the deletion curves.
    removal : str
        ``"pixels"`` (default): removing concept ``j`` paints out, in every image, the pixels
        where its map is at or above the ``quantile`` of all its map values over all images and
        positive (CRAFT's display threshold, per concept); removed regions accumulate.
        ``"activations"``: removing ``j`` subtracts ``u_j ⊗ w_j`` (its code times its
        dictionary row) from the layer's activations, the reconstruction residual kept, and the
        head is re-run. Parts are always removed as pixels.
    reliance, localisation : optional
        Results already computed for these images (then not recomputed; their settings are
        used, see ``fill`` and ``kind`` above). With ``deletion`` and ``removal="pixels"`` the
        localisation must keep its maps (``Localisation.maps``; a hand-made one without them is
        refused: pass ``deletion=False``).
    preprocess, batch_size, device, progress
        As for :func:`reliance`; ``preprocess`` defaults to the explanation's own (that of its
        ``model_at_layer``), so that the parts are painted out of the images the model was
        explained on, as :func:`evaluate` does.

    Returns
    -------
    Faithfulness
    """
    model = check_model(model)
    images = checked_images(images)
    masks = check_masks(masks, images)
    importances = importances_of(result)
    class_id = class_id_of(result, class_id)
    names = check_part_names(part_names, masks.shape[1])
    measure = check_measure(measure)
    removal = check_choice(removal, "removal", REMOVALS)
    preprocess = check_preprocess(preprocess)
    own = model_at_layer_of(result)
    if preprocess is None:  # the explanation's own, as for its maps and evaluate()
        preprocess = getattr(own, "preprocess", None)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    deletion = bool(deletion)
    if deletion and removal == "activations":  # before anything is measured
        _check_activation_removal(result, own, model, preprocess)
    if localisation is not None:  # before anything is measured
        _check_given(localisation, Localisation, "localisation", None)
        if deletion and removal == "pixels" and getattr(localisation, "maps", None) is None:
            raise ValueError("`localisation` has no maps (`localisation.maps` is None, as on a "
                             "Localisation made by hand): the deletion curve of "
                             "removal='pixels' paints out each concept's high-map pixels, "
                             "which it reads from them. Pass deletion=False, or a localisation "
                             "that has maps (conceptkit.evaluate.localisation keeps the maps it "
                             "scored).")
    if reliance is None:
        reliance = measure_reliance(model, images, masks, class_id,
                                    "median" if fill is None else fill, part_names=names,
                                    preprocess=preprocess, blur_sigma=blur_sigma,
                                    batch_size=batch_size, device=device, progress=progress)
    _check_given(reliance, Reliance, "reliance", masks.shape[:2])
    if reliance.class_id != class_id:
        raise ValueError(f"`reliance` was measured for class {reliance.class_id}, not "
                         f"{class_id}; measure it for class {class_id} or pass reliance=None.")
    fill_setting = _fill_setting(reliance, fill, blur_sigma, images, deletion)
    if localisation is None:
        localisation = locate(result, images, masks, names,
                              kind="auto" if kind is None else kind, tolerance=tolerance,
                              quantile=0.9 if quantile is None else quantile,
                              min_images=3 if min_images is None else min_images,
                              assign_threshold=0.5 if assign_threshold is None
                              else assign_threshold)
    else:
        _check_given(localisation, Localisation, "localisation", None)
        _check_localisation_settings(localisation, kind=kind, tolerance=tolerance,
                                     quantile=quantile, min_images=min_images,
                                     assign_threshold=assign_threshold)
    quantile = localisation.quantile  # the concepts' regions are cut where they were located
    located = tuple(localisation.per_image["pointing_game"].shape[::2])
    if located != tuple(masks.shape[:2]):
        raise ValueError(f"`localisation` covers {located} (images, parts) but `masks` has "
                         f"{tuple(masks.shape[:2])}; compute it on the same images and masks.")
    if localisation.n_concepts != importances.size:
        raise ValueError(f"`result` has {importances.size} importances but its maps show "
                         f"{localisation.n_concepts} concepts.")
    parts = localisation.concept_parts
    part_reliance = reliance.values(measure)
    reliance_floor = check_float(reliance_floor, "reliance_floor", minimum=0.0)
    concept_reliance = np.where(parts >= 0, part_reliance[np.maximum(parts, 0)], 0.0)
    concept_reliance = np.where(np.abs(concept_reliance) <= reliance_floor, 0.0, concept_reliance)
    spearman, kendall = rank_correlations(importances, concept_reliance)
    # the same with every reliance these images cannot tell from 0 set to 0, so that the order
    # of noise-level drops (distractors, the background) does not rank concepts
    significant = reliance.significant(measure)
    on_significant = (parts >= 0) & significant[np.maximum(parts, 0)]
    spearman_significant = rank_correlations(importances,
                                             np.where(on_significant, concept_reliance, 0.0))[0]
    part_importances = np.zeros(reliance.present.shape[1])
    np.add.at(part_importances, parts[parts >= 0], importances[parts >= 0])
    shown = reliance.n_present > 0
    floored = np.where(np.abs(part_reliance) <= reliance_floor, 0.0, part_reliance)
    part_spearman, part_kendall = rank_correlations(part_importances[shown], floored[shown])
    notes = []
    if not np.isfinite(spearman):
        what = ("every concept has the same importance" if np.ptp(importances) == 0 else
                "no part is shown in enough images to place a concept on it (localisation's "
                "`min_images`)" if (parts == UNDETERMINED).all() else
                "every concept sits on parts of equal reliance (or on the background)")
        notes.append(f"faithfulness is undefined (NaN): {what}.")
    if not np.isfinite(part_spearman):
        notes.append(f"part-level faithfulness is undefined (NaN): "
                     f"{_part_nan_reason(part_importances[shown], floored[shown], reliance_floor)}.")
    curves = None
    if deletion and not shown.any():  # no part to remove: no curve to compare the concepts' with
        notes.append("no deletion curves: no image shows any part, so there is no part curve "
                     "to compare the concepts' curve with.")
    elif deletion:
        filler = Fill(fill_setting[0], images, fill_setting[1])
        curves = _deletion(result, model, images, masks, importances, reliance, localisation,
                           filler, class_id, measure, removal, quantile, preprocess, batch_size,
                           device, progress)
        start_c, start_p = curves.concept_curve[0], curves.part_curve[0]
        if not np.isclose(start_c, start_p, rtol=1e-3, atol=1e-4):
            # both curves start from the untouched images: apart, they measure other models
            notes.append(f"the deletion curves start from different class scores (concepts "
                         f"{start_c:.4g}, parts {start_p:.4g}): the concepts' curve did not "
                         f"run the same model and preprocessing as the parts', so "
                         f"`area_between` compares two models.")
    return Faithfulness(spearman=spearman, kendall=kendall, importances=importances,
                        concept_parts=parts.copy(), concept_reliance=concept_reliance,
                        part_spearman=part_spearman, part_kendall=part_kendall,
                        part_importances=part_importances, measure=measure, class_id=class_id, deletion=curves, reliance=reliance,
                        localisation=localisation, notes=tuple(notes),
                        spearman_significant=spearman_significant)


def _part_nan_reason(importances: np.ndarray, reliances: np.ndarray, floor: float) -> str:
    """Why the part-level statistics over the shown parts are NaN: which vector is constant."""
    if importances.size < 2:
        return (f"{'no part is' if importances.size == 0 else 'only one part is'} shown in these "
                f"images, and a ranking needs two")
    if np.ptp(importances) == 0:
        if importances[0] == 0:
            return "no concept sits on a shown part (every shown part's importance is 0)"
        return (f"every shown part has the same importance ({importances[0]:.3g}, the summed "
                f"importance of the concepts sitting on it)")
    within = f" (within `reliance_floor` {floor:g} of 0)" if floor > 0 and reliances[0] == 0 else ""
    return f"the shown parts are equally relied on ({reliances[0]:+.3g} each{within})"


def _fill_setting(reliance: Reliance, fill: Any, blur_sigma: Any, images: torch.Tensor,
                  deletion: bool) -> tuple | None:
    """The ``(fill, blur_sigma)`` the deletion curves paint with: the fill ``reliance`` was
    measured with (its parts' order comes from that fill), or ``fill`` if it is the same (a
    callable: the very object, not one of the same name); another is refused. A hand-made
    Reliance keeps only its fill's description, so a callable can only be compared by name
    there."""
    recorded = reliance.fill_setting
    if recorded is None:  # a hand-made Reliance: read its description
        recorded = Fill.parse(reliance.fill)
    if fill is None and blur_sigma is None:
        if recorded is None and deletion:
            raise ValueError(f"`reliance` was measured with the fill {reliance.fill!r}, which it "
                             f"does not keep; pass that fill as `fill=` (the deletion curves "
                             f"paint with it), or deletion=False.")
        return recorded
    if fill is None:
        if recorded is None:
            raise ValueError(f"`blur_sigma` is given but `fill` is not, and `reliance` does not "
                             f"keep its fill ({reliance.fill!r}); pass `fill` too.")
        fill = recorded[0]
    asked = Fill(fill, images, blur_sigma)
    measured_with = None if recorded is None else recorded[0]
    if recorded is not None and (callable(fill) or callable(measured_with)):
        # A callable is known by the object itself, not by its name: every lambda is
        # "<lambda>" and every functools.partial "partial", and a function may be named
        # "median". The description is only what files and JSON keep.
        if not _same_callable(fill, measured_with):
            what = (f"another callable than the one `reliance` was measured with (both are "
                    f"named {reliance.fill!r})" if asked.describe() == reliance.fill
                    else f"({asked.describe()!r}) differs from the fill `reliance` was "
                         f"measured with ({reliance.fill!r})")
            raise ValueError(f"`fill` is {what}: the deletion curves would paint the parts "
                             f"otherwise than the reliance that orders them. Leave `fill` out "
                             f"(the reliance's fill is then used), pass the very object "
                             f"`reliance` was measured with, or pass reliance=None to measure "
                             f"it with this fill.")
        return asked.setting
    if asked.describe() != reliance.fill:
        raise ValueError(f"`fill` ({asked.describe()!r}) differs from the fill `reliance` was "
                         f"measured with ({reliance.fill!r}): the deletion curves would paint "
                         f"the parts otherwise than the reliance that orders them. Leave "
                         f"`fill` and `blur_sigma` out (the reliance's fill is then used), or "
                         f"pass reliance=None to measure it with this fill.")
    return asked.setting


def _same_callable(given: Any, recorded: Any) -> bool:
    """Whether ``given`` is the fill object ``recorded`` (a bound method counts as the same when
    it binds the same function to the same object, as ``obj.method`` is a new object each
    time it is read)."""
    if given is recorded:
        return True
    return (inspect.ismethod(given) and inspect.ismethod(recorded)
            and given.__self__ is recorded.__self__ and given.__func__ is recorded.__func__)


def _check_localisation_settings(localisation: Localisation, **given: Any) -> None:
    """Refuse a localisation setting that differs from the one ``localisation`` was computed
    with (it would be silently unused)."""
    checks = {"kind": lambda v: v,  # the explanation checks its map kinds
              "tolerance": lambda v: check_int(v, "tolerance", minimum=0),
              "quantile": lambda v: check_float(v, "quantile", minimum=0.0, maximum=1.0),
              "min_images": lambda v: check_int(v, "min_images", minimum=1),
              "assign_threshold": lambda v: check_float(v, "assign_threshold", minimum=0.0,
                                                        maximum=1.0)}
    for name, value in given.items():
        if value is None:
            continue
        value = checks[name](value)
        recorded = getattr(localisation, name, None)
        if recorded is None or recorded != value:
            was = (f"does not record its {name}" if recorded is None
                   else f"was computed with {name}={recorded!r}, not {value!r}")
            raise ValueError(f"`{name}`={value!r} is a setting of the localisation, but the "
                             f"`localisation` passed {was}: it would not be used. Leave "
                             f"`{name}` out (the given localisation's is used), or pass "
                             f"localisation=None to compute it with {name}={value!r}.")


def _check_activation_removal(result: Any, own: Any, model: nn.Module, preprocess: Any) -> None:
    """``removal="activations"`` runs the explanation's own model on its activations: refuse
    before anything is measured when it cannot, or when ``model``/``preprocess`` (which the
    parts' curve runs) are not that model's."""
    if getattr(result, "bank", None) is None or own is None:
        raise ValueError("`removal`='activations' needs an explanation with its concept bank and "
                         "its model (`model_at_layer`: a ClassConcepts fitted in this session, "
                         "or loaded and attached); use removal='pixels'.")
    if getattr(own, "tokens", None) == "cls":
        raise ValueError("`removal`='activations' subtracts concepts from the layer's "
                         "activations and re-runs the rest of the model, but this explanation "
                         "reads the CLS token of image windows (tokens='cls'), which no part of "
                         "the model takes; use removal='pixels' (or explain with "
                         "tokens='patches').")
    own_model = getattr(own, "model", None)
    if not same_weights(own_model, model):
        raise ValueError("`model` is not the explanation's model (`result.model_at_layer.model`, "
                         "other weights): with `removal`='activations' the concepts' deletion "
                         "curve runs the explanation's model and the parts' curve `model`, so "
                         "they would start from different scores. Pass the explanation's model, "
                         "or use removal='pixels'.")
    own_preprocess = getattr(own, "preprocess", None)
    if own_preprocess is not preprocess and (callable_identity(own_preprocess)
                                             != callable_identity(preprocess)):
        raise ValueError("`preprocess` differs from the explanation's own "
                         "(`result.model_at_layer.preprocess`): with `removal`='activations' the "
                         "concepts' deletion curve runs the explanation's preprocessing and the "
                         "parts' curve `preprocess`, so they would start from different scores. "
                         "Leave `preprocess` out (the explanation's is the default), or use "
                         "removal='pixels'.")


def _check_given(value: Any, cls: type, name: str, shape: tuple | None) -> None:
    if not isinstance(value, cls):
        raise TypeError(f"`{name}` must be a {cls.__name__} (from conceptkit.evaluate.{name}) or "
                        f"None; got {describe(value)}.")
    if shape is not None and tuple(value.present.shape) != tuple(shape):
        raise ValueError(f"`{name}` covers {value.present.shape} (images, parts) but `masks` has "
                         f"{tuple(shape)}; measure it on the same images.")


def concept_regions(maps: torch.Tensor, quantile: float) -> torch.Tensor:
    """``(N, k, H, W)`` bool: where each concept's map is positive and at or above the
    ``quantile`` of all its values over all images."""
    flat = maps.transpose(0, 1).reshape(maps.shape[1], -1).double().numpy()
    cut = torch.from_numpy(np.quantile(flat, quantile, axis=1)).to(maps.dtype)
    return (maps >= cut[None, :, None, None]) & (maps > 0)


def _area(curve: np.ndarray, steps: int) -> float:
    full = np.concatenate([curve, np.full(steps + 1 - curve.size, curve[-1])])
    return float(((full[1:] + full[:-1]) / 2).sum() / steps) if steps else float(full[0])


def _deletion(result, model, images, masks, importances, reliance, localisation, filler,
              class_id, measure, removal, quantile, preprocess, batch_size, device,
              progress) -> DeletionCurves:
    concept_order = np.argsort(-importances, kind="stable")
    part_order = reliance.ranking(measure)
    pick = 0 if measure == "probability" else 1
    with preserved_model_state(model), torch.no_grad():
        where = run_device(model, device)

        def score_regions(regions: torch.Tensor) -> float:
            painted = paint(images, regions, filler)
            scores = class_scores(model, painted, class_id, preprocess=preprocess, device=where,
                                  batch_size=batch_size)
            return float(scores[pick].mean())

        base = class_scores(model, images, class_id, preprocess=preprocess, device=where,
                            batch_size=batch_size, probe=True)
        part_curve = [float(base[pick].mean())]
        removed = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
        for p in tqdm(part_order, disable=not progress, desc="deletion (parts)", leave=False):
            removed |= masks[:, int(p)]
            part_curve.append(score_regions(removed))
        if removal == "pixels":
            regions = concept_regions(localisation.maps, quantile)
            concept_curve = [part_curve[0]]
            removed = torch.zeros_like(removed)
            for j in tqdm(concept_order, disable=not progress, desc="deletion (concepts)",
                          leave=False):
                removed |= regions[:, int(j)]
                concept_curve.append(score_regions(removed))
    if removal == "activations":
        concept_curve = _activation_deletion(result, images, concept_order, class_id, pick,
                                             batch_size, progress)
    concept_curve = np.asarray(concept_curve)
    part_curve = np.asarray(part_curve)
    steps = max(concept_curve.size, part_curve.size) - 1
    concept_area, part_area = _area(concept_curve, steps), _area(part_curve, steps)
    return DeletionCurves(removal=removal, measure=measure, concept_order=concept_order,
                          part_order=part_order, concept_curve=concept_curve,
                          part_curve=part_curve, concept_area=concept_area, part_area=part_area,
                          area_between=concept_area - part_area)


def _activation_deletion(result, images, order, class_id, pick, batch_size, progress) -> list:
    """Class score as concept contributions ``u_j ⊗ w_j`` are subtracted from the activations."""
    bank, explainer = getattr(result, "bank", None), model_at_layer_of(result)
    try:
        head = explainer.maps_head
    except (AttributeError, ValueError) as error:  # a handle without a head on its maps
        raise ValueError(f"`removal`='activations' needs the rest of the explanation's model "
                         f"after its layer (`model_at_layer.maps_head`), which it has not: "
                         f"{error} Use removal='pixels'.") from None
    if fitted_on(result, images) and getattr(result, "activations", None) is not None:
        acts, context = result.activations, getattr(result, "context", None)
    else:
        acts, context = explainer.activations(images, with_context=True)
    acts = torch.as_tensor(acts).float()
    codes = torch.as_tensor(bank.encode(acts)).float()
    components = torch.as_tensor(bank.components).float()
    device = model_device(explainer.model)
    keep = torch.ones(codes.shape[1])
    curve = []
    with preserved_model_state(explainer.model), torch.no_grad():
        for step in tqdm(range(len(order) + 1), disable=not progress,
                         desc="deletion (concepts)", leave=False):
            if step:
                keep[int(order[step - 1])] = 0.0
            scores = []
            for start in range(0, acts.shape[0], batch_size):
                a = acts[start:start + batch_size]
                u = codes[start:start + batch_size] * (1 - keep).view(1, -1, *[1] * (codes.ndim - 2))
                removed = (torch.einsum("nk...,kc->nc...", u, components) if u.ndim > 2
                           else u @ components)
                args = [(a - removed).to(device)]
                if context is not None:
                    args.append(context[start:start + batch_size].to(device))
                out = head(*args)
                out = (out[0] if isinstance(out, (tuple, list)) else out).float()
                prob = (torch.sigmoid(out[:, 0]) if out.shape[1] == 1
                        else torch.softmax(out, 1)[:, class_id])
                scores.append((prob if pick == 0 else out[:, class_id]).cpu().double())
            curve.append(float(torch.cat(scores).mean()))
    return curve
