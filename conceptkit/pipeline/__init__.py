"""The pipeline: explain one class, every class, or one concept again at an earlier layer.

- :class:`ConceptExplainer` — one class: inputs of the method → ``g`` → factorization →
  importance on ``h``; returns a :class:`ClassConcepts`.
- :class:`ConceptManager` — one explanation per class (by label or by the model's prediction).
- :class:`ClassConcepts` — the result: importances, maps, exemplars, report, save/load.
- :func:`decompose_concept` / :class:`ConceptTree` — CRAFT's recursive sub-concepts.
- :class:`ModelAtLayer` — a model cut at a layer with the settings used to run it.
"""

from ._assemble import compute_metrics, write_class_report
from ._explainer import DISCOVERY_METHODS, ConceptExplainer, predict_labels
from ._handle import ModelAtLayer
from ._manager import ConceptManager
from ._recursion import ConceptTree, decompose_concept, plot_subconcepts, subconcept_examples
from ._result import ClassConcepts

__all__ = [
    "DISCOVERY_METHODS",
    "ClassConcepts",
    "ConceptExplainer",
    "ConceptManager",
    "ConceptTree",
    "ModelAtLayer",
    "compute_metrics",
    "decompose_concept",
    "plot_subconcepts",
    "predict_labels",
    "subconcept_examples",
    "write_class_report",
]
