"""Concept attribution maps (where each concept sits in each image) and their agreement with
ground-truth masks."""

from ._kinds import MAP_KINDS, choose_map_kind
from ._localisation import (
    LOCALISATION_METRICS,
    ConceptMatch,
    localisation_table,
    mask_iou,
    match_concepts,
    pointing_game,
    relevance_mass,
)
from ._maps import (
    coefficient_maps,
    concept_scales,
    dominant_maps,
    gradient_maps,
    pixel_maps,
    provenance_maps,
    scale_matched_maps,
    upsample,
)

__all__ = [
    "LOCALISATION_METRICS",
    "MAP_KINDS",
    "ConceptMatch",
    "choose_map_kind",
    "coefficient_maps",
    "concept_scales",
    "dominant_maps",
    "gradient_maps",
    "localisation_table",
    "mask_iou",
    "match_concepts",
    "pixel_maps",
    "pointing_game",
    "provenance_maps",
    "relevance_mass",
    "scale_matched_maps",
    "upsample",
]


def _differentiable_codes(bank, pooled):
    return bank.encode_differentiable(pooled)


def __getattr__(name: str):
    if name == "differentiable_codes":
        from .._deprecation import warn_deprecated

        warn_deprecated("conceptkit.maps.differentiable_codes(bank, pooled)",
                        "bank.encode_differentiable(pooled)")
        return _differentiable_codes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
