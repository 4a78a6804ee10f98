"""Activation extraction: split a model into ``g`` and ``h``, collect activations at a layer,
and cut images into the inputs of concept methods (crops, positions, segments)."""

from .._deprecation import module_getattr
from ._decompose import CropSet, PositionSet, SegmentSet, crops, positions, segments
from ._extractor import ActivationExtractor, extract
from ._heads import select_output
from ._layers import layer_names
from ._provenance import Provenance
from ._sizes import ImageSizeError
from ._split import CutError, check_split, split_model
from ._store import ActivationStore, write_store
from ._windows import cls_windows, head_reads_cls

__all__ = [
    "ActivationExtractor",
    "ActivationStore",
    "CropSet",
    "CutError",
    "ImageSizeError",
    "PositionSet",
    "Provenance",
    "SegmentSet",
    "check_split",
    "cls_windows",
    "crops",
    "extract",
    "head_reads_cls",
    "layer_names",
    "positions",
    "segments",
    "select_output",
    "split_model",
    "write_store",
]

# plumbing that left the face in 0.2 (still importable from its private module)
__getattr__ = module_getattr(__name__, {
    "ACE_GREY": ("conceptkit.extraction._decompose", "ACE_GREY"),
    "TokenHead": ("conceptkit.extraction._extractor", "TokenHead"),
    "expected_in_channels": ("conceptkit.extraction._extractor", "expected_in_channels"),
    "infer_prefix_tokens": ("conceptkit.extraction._extractor", "infer_prefix_tokens"),
    "maps_to_tokens": ("conceptkit.extraction._extractor", "maps_to_tokens"),
    "tokens_to_maps": ("conceptkit.extraction._extractor", "tokens_to_maps"),
    "get_layer": ("conceptkit.extraction._layers", "get_layer"),
    "write_chunks": ("conceptkit.extraction._store", "write_chunks"),
    "finalize_store": ("conceptkit.extraction._store", "finalize_store"),
})
