"""Explanations scored against ground truth: what the model relies on, where concepts sit, and
whether importance follows reliance.

- :func:`reliance` — the model's measured reliance on each part (the drop of the class
  probability and logit when the part is painted out), per image and averaged;
- :func:`localisation` — pointing game, relevance mass, IoU and ROC-AUC of each concept's maps
  against each part's masks, the best concept per part and the part each concept sits on;
- :func:`faithfulness` — Spearman and Kendall correlation of concept importance with the
  reliance of each concept's part, and deletion curves (concepts in importance order vs parts
  in reliance order);
- :func:`evaluate` — all of it for every explained class of a world (or of any data with part
  masks), as one table.

Exact definitions: ``docs/evaluation.md``. Works on any explanation that has ``importances``,
``class_id`` and ``concept_maps(images, kind=...)`` (a ``ClassConcepts``).
"""

from ._evaluate import (
    COLUMN_HELP,
    METRIC_COLUMNS,
    UNDEFINED_WITHOUT_RELIANCE,
    Evaluation,
    class_row,
    evaluate,
)
from ._faithfulness import REMOVALS, DeletionCurves, Faithfulness, concept_regions, faithfulness
from ._fill import FILLS, gaussian_blur
from ._inputs import MEASURES
from ._localisation import METRICS, Localisation, default_tolerance, localisation, roc_auc
from ._reliance import Reliance, reliance

__all__ = [
    "COLUMN_HELP",
    "FILLS",
    "MEASURES",
    "METRICS",
    "METRIC_COLUMNS",
    "REMOVALS",
    "UNDEFINED_WITHOUT_RELIANCE",
    "DeletionCurves",
    "Evaluation",
    "Faithfulness",
    "Localisation",
    "Reliance",
    "class_row",
    "concept_regions",
    "default_tolerance",
    "evaluate",
    "faithfulness",
    "gaussian_blur",
    "localisation",
    "reliance",
    "roc_auc",
]
