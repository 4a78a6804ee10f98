"""What a :class:`~conceptkit.ConceptAtlas` returns: the class × concept importance table,
concept searches, and confusions explained concept by concept."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._deprecation import renamed_arguments
from .._reprs import summarize
from .._validation import check_int

#: Default rules of :meth:`AtlasImportance.important`: the smallest mean class-probability drop
#: (pixel ablation) and the smallest fraction of the class's largest importance (other methods).
PIXEL_MINIMUM = 0.1
RELATIVE_DEFAULT = 0.25


def important_rule(method: str, relative: float | None,
                   minimum: float | None) -> tuple[float | None, float | None]:
    """``(relative, minimum)`` of :meth:`AtlasImportance.important`: as given, or when both are
    None the default for ``method`` (a probability drop for pixel ablation, else relative)."""
    if relative is None and minimum is None:
        if method == "pixel_ablation":
            return None, PIXEL_MINIMUM
        return RELATIVE_DEFAULT, None
    return relative, minimum


@dataclass(frozen=True, eq=False)
class AtlasImportance:
    """Importance of every shared concept for every class: ``(n_classes, k)`` with intervals.

    Row ``i`` is class ``classes[i]``; each row comes from the per-class importance method of the
    pipeline (:func:`~conceptkit.importance.concept_importance`) run on that class's images with
    the atlas's one dictionary. ``ci_low`` / ``ci_high`` are the Student-t intervals of the
    class-level mean over the class's inputs.
    """

    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    classes: list[int]
    class_names: list[str]
    method: str
    params: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        n, k = self.values.shape
        return (f"AtlasImportance(method={self.method!r}, {n} classes x {k} concepts, "
                f"classes={summarize(list(self.classes))}, "
                f"{int(self.important().sum())} important class-concept pairs; values, "
                f"ci_low, ci_high: array({n}, {k}))")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.values, dtype=dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)

    def row(self, class_id: int) -> int:
        """Row index of ``class_id``; a clear error for a class that was not fitted."""
        class_id = check_int(class_id, "class_id")  # 0.5 or "a" named, not truncated
        try:
            return self.classes.index(class_id)
        except ValueError:
            raise ValueError(f"class {class_id} is not in the atlas; fitted classes: "
                             f"{self.classes}.") from None

    def normalized(self) -> np.ndarray:
        """Each class's importances divided by that class's largest one (rows in [0, 1])."""
        top = np.abs(self.values).max(axis=1, keepdims=True)
        return np.divide(self.values, top, out=np.zeros_like(self.values), where=top > 0)

    def important(self, relative: float | None = None,
                  minimum: float | None = None) -> np.ndarray:
        """Boolean ``(n_classes, k)``: does concept ``j`` matter to class ``c``?

        Always: its interval excludes 0 (lower bound > 0). Then, by default, the rule that fits
        the importance's units. Pixel ablation is a drop of the class probability, so a concept
        matters when painting it out costs the class at least ``minimum`` = 0.1 on average — the
        same threshold at which ``conceptkit.evaluate`` and the atlas benchmark say a class relies
        on a part. The other methods have no absolute scale (Sobol indices are shares of the
        variance), so a concept matters when its importance is at least ``relative`` = 0.25 times
        the class's largest. Passing ``relative`` and/or ``minimum`` applies exactly those.
        """
        low = np.nan_to_num(self.ci_low, nan=0.0)
        keep = low > 0
        relative, minimum = important_rule(self.method, relative, minimum)
        if relative is not None:
            keep &= self.normalized() >= float(relative)
        if minimum is not None:
            keep &= self.values >= float(minimum)
        return keep

    def to_dict(self) -> dict:
        clean = lambda a: [[None if not math.isfinite(v) else float(v) for v in r] for r in a]  # noqa: E731
        return {"values": clean(self.values), "ci_low": clean(self.ci_low),
                "ci_high": clean(self.ci_high), "classes": list(self.classes),
                "class_names": list(self.class_names), "method": self.method,
                "params": dict(self.params)}


@dataclass(frozen=True, eq=False)
class ConceptSearch:
    """The images where one concept is most present (``top_images``)."""

    concept: int
    image_ids: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    images: torch.Tensor | None
    maps: torch.Tensor | None

    def __repr__(self) -> str:
        return (f"ConceptSearch(concept {self.concept}, {len(self.image_ids)} images, "
                f"image_ids={summarize(np.asarray(self.image_ids))}, "
                f"scores={summarize(np.asarray(self.scores, dtype=np.float64))}, "
                f"labels={summarize(np.asarray(self.labels))}, images={summarize(self.images)}, "
                f"maps={summarize(self.maps)})")


@dataclass(frozen=True, eq=False)
class ConfusionExplanation:
    """Why images of class ``a`` drift towards class ``b``, concept by concept.

    ``contributions[j]`` is the mean over the selected images of the drop of the logit margin
    ``logit_b - logit_a`` when concept ``j`` is removed from the reconstruction
    ``(U ⊙ m) · W`` (positive: the concept pushes the images towards ``b``), with a Student-t
    interval. The selected images are those of ``a`` whose logit of ``b`` exceeds their logit of
    ``a`` (``n_confused`` of them), or, when fewer than ``min_images`` are, the ``min_images``
    images of ``a`` with the largest margin (the near-confusions, which the model may still
    classify as ``a``).
    """

    a: int
    b: int
    concepts: np.ndarray  # concept indices, largest contribution first
    contributions: np.ndarray  # (k,) in concept order
    ci_low: np.ndarray
    ci_high: np.ndarray
    per_image: np.ndarray  # (n_selected, k)
    image_ids: np.ndarray  # indices of the selected images (in the fitted data or `images`)
    margins: np.ndarray  # true margin logit_b - logit_a of the selected images
    reconstructed_margins: np.ndarray  # the same margin on the reconstruction (U · W)
    n_confused: int  # how many selected images the model actually classifies as b
    shared: np.ndarray  # (k,) bool: concept important to both a and b
    images: torch.Tensor | None = None

    def __repr__(self) -> str:
        shown = ", ".join(f"concept {int(j)} {float(self.contributions[j]):+.3g}"
                          for j in self.concepts[:3])
        more = ", ..." if len(self.concepts) > 3 else ""
        return (f"ConfusionExplanation(class {self.a} -> class {self.b}, "
                f"{len(self.image_ids)} images ({self.n_confused} classified as {self.b}), "
                f"mean margin {float(np.mean(self.margins)):.3g}; contributions towards "
                f"{self.b}: {shown}{more}; {int(np.sum(self.shared))} concepts shared)")

    @property
    def top(self) -> int:
        """The concept that pushes ``a`` towards ``b`` the most."""
        return int(self.concepts[0])

    @renamed_arguments(n="n_top_concepts")
    def to_dict(self, n_top_concepts: int = 5) -> dict:
        """The pair, its images and its ``n_top_concepts`` largest contributions, as JSON
        values."""
        n_top_concepts = check_int(n_top_concepts, "n_top_concepts", minimum=1)
        return {"a": self.a, "b": self.b, "n_images": int(len(self.image_ids)),
                "n_confused": int(self.n_confused),
                "mean_margin": float(np.mean(self.margins)),
                "concepts": [{"concept": int(j), "contribution": float(self.contributions[j]),
                              "ci_low": _finite(self.ci_low[j]), "ci_high": _finite(self.ci_high[j]),
                              "shared": bool(self.shared[j])} for j in self.concepts[:n_top_concepts]],
                "image_ids": [int(i) for i in self.image_ids]}


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def margin_contributions(h: Any, codes: torch.Tensor, decode: Any, a: int, b: int,
                         batch_size: int = 256,
                         context: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(margins (n,), contributions (n, k))`` of concept codes ``(n, k, ...)``: the margin
    ``logit_b - logit_a`` of ``h(decode(codes))`` and its drop when each concept is zeroed.

    With ``context`` (a transformer's CLS/register tokens ``(n, P, C)``), ``h`` is called as
    ``h(x, context)``, each image's tokens held at their values for all its variants."""
    n, k = codes.shape[:2]
    base, drops = [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            U = codes[start:start + batch_size]
            m = U.shape[0]
            masked = U.unsqueeze(1).repeat(1, k + 1, *([1] * (U.ndim - 1)))
            index = torch.arange(k)
            masked[:, index + 1, index] = 0  # variant j + 1 drops concept j; variant 0 keeps all
            x = decode(masked.reshape(m * (k + 1), *U.shape[1:]))
            if context is None:
                logits = h(x)
            else:
                logits = h(x, context[start:start + batch_size].repeat_interleave(k + 1, dim=0))
            margin = (logits[:, b] - logits[:, a]).reshape(m, k + 1).double()
            base.append(margin[:, 0])
            drops.append(margin[:, :1] - margin[:, 1:])
    return torch.cat(base).cpu().numpy(), torch.cat(drops).cpu().numpy()
