"""Concepts in words: names with scores, runner-ups and a trust score.

- :func:`name_concepts` (``method="dissect" | "clip" | "classes"``) names the concepts of a
  ``ClassConcepts`` (or of a :class:`~conceptkit.concepts.ConceptBank` with its model):
  :func:`name_by_masks` (Network Dissection: IoU of thresholded concept maps with part masks),
  :func:`name_by_clip` (CLIP-Dissect: soft-WPMI or cos³ against a vocabulary) and
  :func:`name_by_classes` (the classes a concept pushes most through ``h``).
- :class:`ConceptNames` / :class:`ConceptName`: the result, one frozen record per concept.
- :func:`visualize_concept` / :class:`ConceptVisualization`: MACO feature visualisation of a
  concept (phase-only optimisation under the user's images' magnitude spectrum) with its
  transparency map.
- :func:`vocabulary`: offline word lists (ImageNet class names, ImageNet-21k lemmas).
- :func:`soft_wpmi`, :func:`cos_cubed`, :func:`iou_table`, :func:`activation_auc`: the scores.
"""

from ._api import METHODS, name_by_classes, name_by_clip, name_by_masks, name_concepts
from ._clip import cos_cubed, soft_wpmi
from ._dissect import iou_table
from ._maco import ConceptVisualization, visualize_concept
from ._table import ConceptName, ConceptNames
from ._trust import activation_auc
from ._vocab import VOCABULARIES, vocabulary

__all__ = [
    "METHODS",
    "VOCABULARIES",
    "ConceptName",
    "ConceptNames",
    "ConceptVisualization",
    "activation_auc",
    "cos_cubed",
    "iou_table",
    "name_by_classes",
    "name_by_clip",
    "name_by_masks",
    "name_concepts",
    "soft_wpmi",
    "visualize_concept",
    "vocabulary",
]
