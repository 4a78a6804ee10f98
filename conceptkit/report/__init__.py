"""Figures and the HTML/JSON report of concept explanations.

The report renders what it is handed (a :class:`ClassReport` per class) and computes no
explanation itself: the pipeline assembles the numbers, this package draws them.
"""

from ..io import json_ready
from ._colors import concept_colors, concept_hex_colors
from ._data import ClassReport, ConceptSummary, IndexEntry
from ._figures import (
    figure_png,
    plot_concept_overlays,
    plot_exemplar_grid,
    plot_importances,
    save_figure,
)
from ._images import concept_overlay
from ._index import index_entry, write_index, write_reports
from ._structure import (
    concept_cooccurrence,
    plot_cooccurrence,
    plot_strategic_clusters,
    strategic_embedding,
    top_concepts,
)
from ._write import class_slug, write_class_report

__all__ = [
    "ClassReport",
    "ConceptSummary",
    "IndexEntry",
    "class_slug",
    "concept_colors",
    "concept_cooccurrence",
    "concept_hex_colors",
    "concept_overlay",
    "figure_png",
    "index_entry",
    "json_ready",
    "plot_concept_overlays",
    "plot_cooccurrence",
    "plot_exemplar_grid",
    "plot_importances",
    "plot_strategic_clusters",
    "save_figure",
    "strategic_embedding",
    "top_concepts",
    "write_class_report",
    "write_index",
    "write_reports",
]
