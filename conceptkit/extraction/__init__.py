"""Activation extraction: split a model into ``g`` and ``h``, collect activations at a layer,
and cut images into the inputs of concept methods (crops, positions, segments)."""

from ._decompose import ACE_GREY, CropSet, PositionSet, SegmentSet, crops, positions, segments
from ._extractor import (
    ActivationExtractor,
    TokenHead,
    expected_in_channels,
    extract,
    infer_prefix_tokens,
    maps_to_tokens,
    tokens_to_maps,
)
from ._heads import SelectOutput, select_output
from ._layers import get_layer, layer_names
from ._provenance import Provenance
from ._split import CutError, check_split, split_model
from ._store import ActivationStore
from ._store_write import finalize_store, write_chunks, write_store

__all__ = [
    "ACE_GREY",
    "ActivationExtractor",
    "ActivationStore",
    "CropSet",
    "CutError",
    "PositionSet",
    "Provenance",
    "SelectOutput",
    "SegmentSet",
    "TokenHead",
    "check_split",
    "crops",
    "expected_in_channels",
    "extract",
    "finalize_store",
    "get_layer",
    "infer_prefix_tokens",
    "layer_names",
    "maps_to_tokens",
    "positions",
    "segments",
    "select_output",
    "split_model",
    "tokens_to_maps",
    "write_chunks",
    "write_store",
]
