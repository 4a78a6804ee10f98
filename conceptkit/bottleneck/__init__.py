"""Concept bottleneck models: supervised (Koh et al.), label-free (CLIP text) and post-hoc.

Public names::

    ConceptBottleneckModel, CBMOutput, train_cbm, TrainHistory, StageHistory,
    intervene, intervention_curve, InterventionCurve,
    evaluate_cbm, CBMEvaluation, leakage_score, LeakageReport
"""

from ._clip import ClipEncoders, ClipLike
from ._intervene import InterventionCurve, intervene, intervention_curve
from ._label_free import LabelFreeCBM
from ._metrics import CBMEvaluation, LeakageReport, evaluate_cbm, leakage_score
from ._model import CBMOutput, ConceptBottleneckModel
from ._train import StageHistory, TrainHistory, train_cbm

__all__ = [
    "ClipEncoders",
    "ClipLike",
    "LabelFreeCBM",
    "CBMEvaluation",
    "CBMOutput",
    "ConceptBottleneckModel",
    "InterventionCurve",
    "LeakageReport",
    "StageHistory",
    "TrainHistory",
    "evaluate_cbm",
    "intervene",
    "intervention_curve",
    "leakage_score",
    "train_cbm",
]
