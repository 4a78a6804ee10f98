"""The model's measured reliance on each part: how much the class score drops when the part's
pixels are painted out of the images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torchutils import preserved_model_state
from .._validation import check_float, check_int
from ..importance._concept import student_interval
from ._fill import Fill, paint
from ._inputs import (
    check_class_id,
    check_masks,
    check_measure,
    check_model,
    check_part_names,
    check_preprocess,
    checked_images,
    class_scores,
    part_label,
    run_device,
)


@dataclass(frozen=True, eq=False)
class Reliance:
    """Measured reliance of a model's class score on each of ``P`` parts in ``N`` images.

    A drop is ``score(image) − score(image with the part painted out)``: positive when the
    part supports the class. NaN marks an image where the part is absent (nothing to paint).

    Attributes
    ----------
    per_image : ndarray (N, P)
        Drop of the class probability, NaN where the part is absent.
    mean : ndarray (P,)
        Mean of ``per_image`` over the images where the part is present (NaN if it is present
        in none).
    expected : ndarray (P,)
        Mean over *all* images, a part's absence counting as a drop of 0: how much the class
        score of these images depends on the part. Rankings use this.
    per_image_logit, mean_logit, expected_logit
        The same for the class logit.
    base_probability, base_logit : ndarray (N,)
        The scores of the untouched images.
    present : ndarray (N, P) of bool
        Whether each part is present (its mask is not empty).
    class_id : int
    fill : str
        The fill the parts were painted with.
    part_names : tuple of str or None
    """

    per_image: np.ndarray
    mean: np.ndarray
    expected: np.ndarray
    per_image_logit: np.ndarray
    mean_logit: np.ndarray
    expected_logit: np.ndarray
    base_probability: np.ndarray
    base_logit: np.ndarray
    present: np.ndarray
    class_id: int
    fill: str
    part_names: tuple[str, ...] | None = None
    #: ``(fill, blur_sigma)`` as given to :func:`reliance` (None on a hand-made Reliance):
    #: :func:`faithfulness` paints its deletion curves with it when given this reliance.
    fill_setting: tuple | None = field(default=None, repr=False)

    @property
    def n_present(self) -> np.ndarray:
        """Number of images showing each part ``(P,)``."""
        return self.present.sum(0)

    def values(self, measure: str = "probability") -> np.ndarray:
        """``expected`` (``measure="probability"``) or ``expected_logit`` ``(P,)``."""
        return self.expected if check_measure(measure) == "probability" else self.expected_logit

    def ranking(self, measure: str = "probability") -> np.ndarray:
        """Parts present in at least one image, from most to least relied on (by ``expected``;
        ties keep part order)."""
        values = self.values(measure)
        shown = np.flatnonzero(self.n_present > 0)
        return shown[np.argsort(-values[shown], kind="stable")]

    def most_relied(self, measure: str = "probability") -> int:
        """The part whose removal lowers the class score the most (``-1`` if no part is shown)."""
        ranking = self.ranking(measure)
        return int(ranking[0]) if ranking.size else -1

    def _drops(self, measure: str) -> np.ndarray:
        """Per-image drops ``(N, P)`` in ``measure`` with an absent part counting 0 (the terms
        of ``expected``)."""
        return np.nan_to_num(self.per_image if check_measure(measure) == "probability"
                             else self.per_image_logit)

    def most_relied_parts(self, measure: str = "probability",
                          confidence: float = 0.95) -> np.ndarray:
        """The most relied-on part and every part not measurably less relied on, most first.

        Part ``p`` ties with the most relied-on part ``m`` when the Student-t ``confidence``
        interval of the mean paired difference ``Δs_im − Δs_ip`` over all ``N`` images (an
        absent part counting 0, as in ``expected``) reaches 0: these images cannot tell which
        of the two the model relies on more (with one image: only an equal drop ties). Empty if
        no part is shown. ``confidence`` is in (0, 1)."""
        confidence = check_confidence(confidence)
        most = self.most_relied(measure)
        if most < 0:
            return np.zeros(0, dtype=int)
        drops = self._drops(measure)
        others = self.ranking(measure)[1:]
        diff = drops[:, [most]] - drops[:, others]
        low = student_interval(diff, confidence)[0] if diff.shape[0] > 1 else diff.mean(0)
        tied = [most] + [int(p) for p, bound in zip(others, low) if bound <= 0]
        return np.asarray(tied, dtype=int)

    def significant(self, measure: str = "probability", confidence: float = 0.95) -> np.ndarray:
        """``(P,)`` bool: parts whose reliance these images can tell from 0 — the Student-t
        ``confidence`` interval of the mean drop over all ``N`` images (an absent part counting
        0, as in ``expected``) excludes 0. False for a part shown in no image, and for every
        part when there are fewer than 2 images: one image has no spread, so no drop can be told
        from 0 (before, any non-zero drop of a single image counted). ``confidence`` is in
        (0, 1)."""
        confidence = check_confidence(confidence)
        drops = self._drops(measure)
        if drops.shape[0] < 2:  # no spread to tell a drop from 0 with
            return np.zeros(drops.shape[1], dtype=bool)
        low, high = student_interval(drops, confidence)
        return (self.n_present > 0) & ((low > 0) | (high < 0))

    def relies_on_a_part(self, measure: str = "probability", confidence: float = 0.95) -> bool:
        """Whether the most relied-on part's drop is above 0 and :meth:`significant` tells it
        from 0. Only that part (the largest mean drop) is tested: False when the model relies
        on no single part these images show (a class told by either of two parts, or by the
        absence of others; the most relied-on part is then the largest of noise-level drops),
        and also when that part's drop is too uneven over these images to be told from 0 while
        a part with a smaller, steadier drop can be (:meth:`unrelied_note` names it). Always
        False with fewer than 2 images."""
        most = self.most_relied(measure)
        return bool(most >= 0 and self.values(measure)[most] > 0
                    and self.significant(measure, confidence)[most])

    def unrelied_note(self, measure: str = "probability",
                      confidence: float = 0.95) -> str | None:
        """Why :meth:`relies_on_a_part` is False, in a sentence (None when it is True): the part
        with the largest mean drop cannot be told from 0 in these images, and which parts
        :meth:`significant` can tell from 0 instead, if any."""
        if self.relies_on_a_part(measure, confidence):
            return None
        n = self.present.shape[0]
        most = self.most_relied(measure)
        if most < 0:
            return (f"no part is shown in any of these {n} images: there is no part whose "
                    f"painting-out could be measured.")
        values = self.values(measure)
        unit = "probability" if check_measure(measure) == "probability" else "logit"
        largest = (f"the part with the largest mean {unit} drop, {self.name(most)} "
                   f"({values[most]:+.3g})")
        if n < 2:
            return (f"{largest}, cannot be told from 0 with one image (one image has no "
                    f"spread): evaluate more images of the class.")
        if values[most] <= 0:
            head = (f"no part's painting-out lowers the class score on average: {largest}, is "
                    f"not a drop")
        else:
            head = f"{largest}, cannot be told from 0 in these {n} images"
        # parts whose drop these images tell from 0 and above it (a part whose painting-out
        # measurably raises the score is not relied on)
        relied = [int(p) for p in np.flatnonzero(self.significant(measure, confidence))
                  if values[p] > 0]
        if not relied:
            return (f"{head}, and no other part's drop can be told to lie above 0: the model "
                    f"relies on no single part these images show (a class told by either of "
                    f"two parts, or by the absence of others), or these images are too few to "
                    f"tell; more images would say which.")
        told = ", ".join(f"{self.name(p)} ({values[p]:+.3g})" for p in relied)
        return (f"{head}, but {told} can be ({confidence:.0%} interval): the model does rely "
                f"on {'that part' if len(relied) == 1 else 'these parts'}, whose drop is "
                f"smaller but steadier; more images would tell whether {self.name(most)}'s drop "
                f"differs from 0.")

    def name(self, part: int) -> str:
        return part_label(part, self.part_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible summary (NaN becomes None)."""
        return {"class_id": self.class_id, "fill": self.fill,
                "part_names": list(self.part_names) if self.part_names else None,
                "n_present": [int(n) for n in self.n_present],
                "mean": _clean(self.mean), "expected": _clean(self.expected),
                "mean_logit": _clean(self.mean_logit),
                "expected_logit": _clean(self.expected_logit)}

    def __repr__(self) -> str:
        order = self.ranking()
        shown = ", ".join(f"{self.name(int(p))} {self.expected[p]:+.3f}" for p in order[:5])
        return (f"Reliance(class_id={self.class_id}, n_images={self.present.shape[0]}, "
                f"fill={self.fill!r}, expected probability drop: {shown}"
                f"{', ...' if order.size > 5 else ''})")


def check_confidence(confidence: Any) -> float:
    """A confidence level strictly between 0 and 1 (0 gives an empty interval, 1 an infinite one)."""
    confidence = check_float(confidence, "confidence")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be strictly between 0 and 1 (e.g. 0.95 for a 95 % "
                         f"interval); got {confidence}.")
    return confidence


def _clean(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.ravel(values)]


def reliance(model: nn.Module, images: Any, masks: Any, class_id: int, fill: str | Callable = "median",
             *, part_names: Sequence[str] | None = None, preprocess: Callable | None = None,
             blur_sigma: float | None = None, batch_size: int = 64, device: Any = None,
             progress: bool = True) -> Reliance:
    """Measure how much ``model``'s score for ``class_id`` relies on each part.

    Each part is painted out of each image that shows it, one part at a time, and the drop of
    the class probability and of the class logit is recorded.

    Parameters
    ----------
    model : nn.Module
        The classifier (left exactly as found: modes, grad flags, hooks, device). It must
        return logits ``(N, n_classes)``: the class probability is their softmax (a sigmoid
        for one output), and a model whose outputs are probabilities (rows >= 0 summing to 1)
        is refused.
    images : tensor (N, 3, H, W)
        Images in [0, 1] (``preprocess`` is applied after painting).
    masks : tensor (N, P, H, W) of bool
        One mask per image and part; an empty mask means the part is absent.
    class_id : int
        The class whose score is measured.
    fill : str or callable
        ``"median"`` (default: each image's median colour), ``"blur"`` (Gaussian blur of the
        image, ``blur_sigma`` px, default the longer side / 10), ``"mean"`` (mean colour of all ``images``),
        ``"zero"``, or ``fill(images) -> images`` giving the replacement pixels of a batch.
    part_names : sequence of str, optional
        A name per part, kept in the result.
    preprocess : callable, optional
        Applied to image batches before the model (e.g. normalisation).
    batch_size : int
        Images per forward pass.
    device : str or torch.device, optional
        Where the model is (default: where its parameters are); the model is never moved.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Reliance
    """
    model = check_model(model)
    images = checked_images(images)
    masks = check_masks(masks, images)
    class_id = check_class_id(class_id)
    names = check_part_names(part_names, masks.shape[1])
    preprocess = check_preprocess(preprocess)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    filler = Fill(fill, images, blur_sigma)
    present = masks.flatten(2).any(-1).numpy()
    pairs = np.argwhere(present)  # (image, part) of every part to paint out
    with preserved_model_state(model), torch.no_grad():
        where = run_device(model, device)
        base_p, base_l = class_scores(model, images, class_id, preprocess=preprocess,
                                      device=where, batch_size=batch_size, probe=True)
        drop_p = np.full(present.shape, np.nan)
        drop_l = np.full(present.shape, np.nan)
        starts = range(0, len(pairs), batch_size)
        for start in tqdm(starts, disable=not progress, desc="reliance", leave=False):
            chunk = pairs[start:start + batch_size]
            rows = torch.as_tensor(chunk[:, 0])
            painted = paint(images[rows], masks[rows, torch.as_tensor(chunk[:, 1])], filler)
            prob, logit = class_scores(model, painted, class_id, preprocess=preprocess,
                                       device=where, batch_size=batch_size)
            drop_p[chunk[:, 0], chunk[:, 1]] = base_p[chunk[:, 0]] - prob
            drop_l[chunk[:, 0], chunk[:, 1]] = base_l[chunk[:, 0]] - logit
    return Reliance(per_image=drop_p, mean=_mean_present(drop_p, present),
                    expected=np.nan_to_num(drop_p, nan=0.0).mean(0),
                    per_image_logit=drop_l, mean_logit=_mean_present(drop_l, present),
                    expected_logit=np.nan_to_num(drop_l, nan=0.0).mean(0),
                    base_probability=base_p, base_logit=base_l, present=present,
                    class_id=class_id, fill=filler.describe(), part_names=names,
                    fill_setting=filler.setting)


def _mean_present(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    counts = present.sum(0)
    total = np.nan_to_num(values, nan=0.0).sum(0)
    out = np.full(values.shape[1], np.nan)
    out[counts > 0] = total[counts > 0] / counts[counts > 0]
    return out
