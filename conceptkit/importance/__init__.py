"""How much each concept drives a class score.

- Generic Sobol indices of a vectorised function on ``[0, 1]^d``: :func:`sobol_indices`, with the
  samplers (:data:`SAMPLERS`), the replicated design and its SALib layout, and the total- and
  first-order estimators.
- Concept importance of a head ``h`` over a concept bank: :func:`concept_importance` (Sobol with an
  exact fast path for affine heads, closed form, gradient x input, integrated gradients,
  occlusion, RISE) returning a :class:`ConceptImportance`.
- TCAV: concept activation vectors, directional derivatives and significance tests (a specific
  protocol by default; :data:`CLASSIC_TCAV` for the TCAV paper's and Captum's).
- Fidelity metrics of importances: :mod:`conceptkit.importance.metrics` (C-Deletion, C-Insertion,
  C-μFidelity).
"""

from .._deprecation import module_getattr
from ..concepts._cav import CAV, compute_cav
from . import metrics
from ._cav import directional_derivatives
from ._concept import METHODS, ConceptImportance, concept_importance
from ._design import SAMPLERS, replicated_design
from ._estimators import FIRST_ORDER_ESTIMATORS, TOTAL_ORDER_ESTIMATORS
from ._sobol import SobolResult, estimate_sobol, sobol_indices, sobol_indices_with_ci
from ._tcav import CLASSIC_TCAV, TCAVResult, correct_p_values, tcav
from ._tcav_sources import concept_sets_from_codes, tcav_from_bank, tcav_images
from .metrics import CDeletion, CInsertion, CMuFidelity, MetricResult

__all__ = [
    "CAV",
    "CLASSIC_TCAV",
    "CDeletion",
    "CInsertion",
    "CMuFidelity",
    "ConceptImportance",
    "FIRST_ORDER_ESTIMATORS",
    "METHODS",
    "MetricResult",
    "SAMPLERS",
    "SobolResult",
    "TCAVResult",
    "TOTAL_ORDER_ESTIMATORS",
    "compute_cav",
    "concept_importance",
    "concept_sets_from_codes",
    "correct_p_values",
    "directional_derivatives",
    "estimate_sobol",
    "metrics",
    "replicated_design",
    "sobol_indices",
    "sobol_indices_with_ci",
    "tcav",
    "tcav_from_bank",
    "tcav_images",
]

# plumbing that left the face in 0.2 (still importable from its private module)
__getattr__ = module_getattr(__name__, {
    "to_salib_layout": ("conceptkit.importance._design", "to_salib_layout"),
})
