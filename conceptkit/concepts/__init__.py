"""Concept extraction: factorizers that write activations as codes times a concept dictionary.

Every factorizer follows one scikit-learn style contract (:class:`Factorizer`): ``fit``,
``fit_transform(A) -> U (n, k)``, ``transform``, ``inverse_transform(U) -> A_hat (n, C)``, fitted
``components_ (k, C)`` and ``reconstruction_err_``. Extraction metrics live in
:mod:`conceptkit.concepts.metrics`; discovery methods (CRAFT, ICE, ACE) wrap a factorizer and
return a :class:`ConceptBank`.
"""

from .._deprecation import module_getattr
from . import metrics
from ._bank import ConceptBank
from ._base import FACTORIZERS, Factorizer
from ._distributed import fit_distributed
from ._methods import ACE, CRAFT, ICE, bank_from_activations
from ._nmf import NMF
from ._sae import TopKSAE
from ._seminmf import SemiNMF
from ._sklearn_factorizers import ICAConcepts, KMeansConcepts, PCAConcepts, SparseDictionary
from ._streaming import fit_streaming, streaming_error, transform_streaming, write_codes

__all__ = [
    "ACE",
    "CRAFT",
    "ConceptBank",
    "FACTORIZERS",
    "Factorizer",
    "ICAConcepts",
    "ICE",
    "KMeansConcepts",
    "NMF",
    "PCAConcepts",
    "SemiNMF",
    "SparseDictionary",
    "TopKSAE",
    "bank_from_activations",
    "fit_distributed",
    "fit_streaming",
    "metrics",
    "streaming_error",
    "transform_streaming",
    "write_codes",
]

# plumbing that left the face in 0.2 (still importable from its private module)
__getattr__ = module_getattr(__name__, {
    "ace_keep_clusters": ("conceptkit.concepts._methods", "ace_keep_clusters"),
    "factorizer_from_state": ("conceptkit.concepts._base", "factorizer_from_state"),
    "restrict_bank": ("conceptkit.concepts._methods", "restrict_bank"),
})
