"""Figures and the HTML/JSON report of concept explanations.

The report renders what it is handed (a :class:`ClassReport` per class) and computes no
explanation itself: the pipeline assembles the numbers, this package draws them.
:func:`write_page` writes any other self-contained page in the same style (the CBM report).
"""

from .._deprecation import module_getattr
from ._atlas import AtlasReport, write_atlas_report
from ._colors import concept_colors, concept_hex_colors
from ._data import ClassReport, ConceptSummary, IndexEntry
from ._figures import (
    figure_png,
    plot_concept_overlays,
    plot_exemplar_grid,
    plot_importances,
    save_figure,
)
from ._html import PageTable, Picture, write_page
from ._images import concept_overlay
from ._index import index_entry, write_index, write_reports
from ._structure import (
    concept_cooccurrence,
    plot_cooccurrence,
    plot_strategic_clusters,
    strategic_embedding,
    top_concepts,
)
from ._write import write_class_report

__all__ = [
    "AtlasReport",
    "ClassReport",
    "ConceptSummary",
    "IndexEntry",
    "PageTable",
    "Picture",
    "concept_colors",
    "concept_cooccurrence",
    "concept_hex_colors",
    "concept_overlay",
    "figure_png",
    "index_entry",
    "plot_concept_overlays",
    "plot_cooccurrence",
    "plot_exemplar_grid",
    "plot_importances",
    "plot_strategic_clusters",
    "save_figure",
    "strategic_embedding",
    "top_concepts",
    "write_atlas_report",
    "write_class_report",
    "write_index",
    "write_page",
    "write_reports",
]

# plumbing that left the face in 0.2 (still importable from where it lives)
__getattr__ = module_getattr(__name__, {
    "class_slug": ("conceptkit.report._write", "class_slug"),
    "json_ready": ("conceptkit.io", "json_ready",
                   "conceptkit.io.json_ready (the one JSON converter lives in io)"),
})
