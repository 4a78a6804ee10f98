"""The pipeline: explain one class, every class, or one concept again at an earlier layer.

- :class:`ConceptExplainer` — one class: inputs of the method → ``g`` → factorization →
  importance on ``h``; returns a :class:`ClassConcepts`.
- :class:`ConceptManager` — one explanation per class (by label or by the model's prediction).
- :class:`ClassConcepts` — the result: importances, maps, exemplars, report, save/load.
- :func:`decompose_concept` / :class:`ConceptTree` — CRAFT's recursive sub-concepts.
- :class:`ModelAtLayer` — a model cut at a layer with the settings used to run it.
- :func:`pixel_ablation` — the default importance: each concept's map region painted out of the
  images at four sizes, the mean drop of the class probability with the whole model re-run.
- :func:`build_class_report` — the :class:`~conceptkit.report.ClassReport` of an explanation
  (what ``ClassConcepts.report`` draws with :func:`conceptkit.report.write_class_report`).
- :class:`ConceptAtlas` — one concept dictionary for all classes: importance table, shared
  concepts, confusions explained by concepts, concept search; streamed from a store and fitted
  across torch.distributed ranks.
"""

from .._deprecation import module_getattr
from ._assemble import build_class_report
from ._atlas import ConceptAtlas
from ._atlas_results import AtlasImportance, ConceptSearch, ConfusionExplanation
from ._explainer import DISCOVERY_METHODS, ConceptExplainer, predict_labels, token_factorizer
from ._handle import ModelAtLayer
from ._manager import ConceptManager
from ._pixel import pixel_ablation
from ._recursion import ConceptTree, decompose_concept, plot_subconcepts, subconcept_examples
from ._result import ClassConcepts

__all__ = [
    "AtlasImportance",
    "ConceptAtlas",
    "ConceptSearch",
    "ConfusionExplanation",
    "DISCOVERY_METHODS",
    "ClassConcepts",
    "ConceptExplainer",
    "ConceptManager",
    "ConceptTree",
    "ModelAtLayer",
    "build_class_report",
    "decompose_concept",
    "pixel_ablation",
    "plot_subconcepts",
    "predict_labels",
    "subconcept_examples",
    "token_factorizer",
]

__getattr__ = module_getattr(__name__, {
    # plumbing: ClassConcepts.metrics() is the call
    "compute_metrics": ("conceptkit.pipeline._assemble", "compute_metrics"),
    # renamed in 0.2 (report.write_class_report draws a ClassReport; this assembled one)
    "write_class_report": ("conceptkit.pipeline._assemble", "write_class_report",
                           "ClassConcepts.report(out_dir), or conceptkit.pipeline."
                           "build_class_report with conceptkit.report.write_class_report"),
})
