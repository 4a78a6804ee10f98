"""How much each concept drives a class logit: Sobol indices, concept importance, metrics."""

from ._concept import METHODS, ConceptImportance, concept_importance
from ._design import SAMPLERS, replicated_design, to_salib_layout
from ._estimators import FIRST_ORDER_ESTIMATORS, TOTAL_ORDER_ESTIMATORS
from ._sobol import SobolResult, estimate_sobol, sobol_indices

__all__ = [
    "FIRST_ORDER_ESTIMATORS",
    "METHODS",
    "SAMPLERS",
    "TOTAL_ORDER_ESTIMATORS",
    "ConceptImportance",
    "SobolResult",
    "concept_importance",
    "estimate_sobol",
    "replicated_design",
    "sobol_indices",
    "to_salib_layout",
]
