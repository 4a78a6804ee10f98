"""Concept bottleneck models: supervised (Koh et al.), label-free (CLIP text) and post-hoc.

Public names::

    supervised   ConceptBottleneckModel, CBMOutput, SpatialProbe, train_cbm, TrainHistory, StageHistory,
                 intervene, intervention_curve, InterventionCurve,
                 evaluate_cbm, CBMEvaluation, leakage_score, LeakageReport
    label-free   LabelFreeCBM, ClipEncoders, ClipLike
    post-hoc     PosthocCBM, CAVBank (concept activation vectors: the post-hoc CBM's concepts)
    discovered   DiscoveredCBM (a bottleneck of CRAFT / ICE / ACE concepts)
    report       write_cbm_report, concept_class_weights
"""

from .._deprecation import module_getattr
from ._clip import ClipEncoders, ClipLike
from ._discovered import DiscoveredCBM
from ._intervene import InterventionCurve, intervene, intervention_curve
from ._label_free import LabelFreeCBM, load_needs_backbone
from ._metrics import CBMEvaluation, LeakageReport, evaluate_cbm, leakage_score
from ._model import CBMOutput, ConceptBottleneckModel, SpatialProbe
from ._posthoc import CAVBank, PosthocCBM
from ._report import concept_class_weights, write_cbm_report
from ._train import StageHistory, TrainHistory, train_cbm

#: Loaders of the CBM kinds for :func:`conceptkit.load`, keyed by the saved file's kind.
LOADERS = {"concept_bottleneck_model": ConceptBottleneckModel.load, "posthoc_cbm": PosthocCBM.load,
           "label_free_cbm": load_needs_backbone, "discovered_cbm": DiscoveredCBM.load}

__all__ = [
    "CAVBank",
    "CBMEvaluation",
    "CBMOutput",
    "ClipEncoders",
    "ClipLike",
    "ConceptBottleneckModel",
    "DiscoveredCBM",
    "InterventionCurve",
    "LabelFreeCBM",
    "LeakageReport",
    "PosthocCBM",
    "SpatialProbe",
    "StageHistory",
    "TrainHistory",
    "concept_class_weights",
    "evaluate_cbm",
    "intervene",
    "intervention_curve",
    "leakage_score",
    "train_cbm",
    "write_cbm_report",
]

__getattr__ = module_getattr(__name__, {
    # renamed in 0.2: concepts.ConceptBank is the factorization bank, this one holds CAVs
    "ConceptBank": ("conceptkit.bottleneck._posthoc", "CAVBank"),
})
