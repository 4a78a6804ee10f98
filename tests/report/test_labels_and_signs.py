"""Found by the second review: repeated concept names get their concept's index in every legend
(the overlays showed "red disk" three times), the class report shows how much of a concept's top
pixels lie on its named part, and the atlas heatmap tells a negative importance from none."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

import conceptkit
from conceptkit.datasets import load_world
from conceptkit.pipeline._assemble import build_class_report
from conceptkit.report import plot_concept_overlays
from conceptkit.report._atlas import AtlasReport, heatmap_figure
from conceptkit.report._heatmaps import plot_concept_heatmaps

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def test_repeated_labels_get_an_index_in_the_legends():
    images = torch.rand(2, 3, 16, 16)
    maps = torch.rand(2, 3, 4, 4)
    labels = ["red disk", "blue square", "red disk"]
    fig = plot_concept_overlays(images, maps, labels, n_top_concepts=3)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == \
        ["red disk [0]", "blue square", "red disk [2]"]
    rows = plot_concept_heatmaps(images, maps, labels, n_top_concepts=3)
    shown = " ".join(t.get_text() for ax in rows.axes for t in ax.texts + [ax.yaxis.label])
    assert "red disk [0]" in shown and "red disk [2]" in shown
    assert labels == ["red disk", "blue square", "red disk"]   # the caller's list as found


@pytest.fixture(scope="module")
def named():
    world = load_world("shapes")
    probe = world.sample(30, seed=0)
    cc = conceptkit.ConceptExplainer(world.model(), "block3", 6, seed=0, progress=False,
                                     importance="gradient_input").fit(
        probe.images[probe.labels == 0], 0)
    cc.name_concepts("dissect", probe)
    return cc


def test_the_class_report_labels_repeated_names_by_concept_and_shows_the_part_share(named):
    cc = named
    names = [e.name for e in cc.names]
    assert names.count("red disk") == 3      # concepts 0, 2 and 3
    report = build_class_report(cc, n_images=2, n_exemplars=2)
    by_index = {c.index: c for c in report.concepts}
    assert {by_index[j].label for j in (0, 2, 3)} == {"red disk [0]", "red disk [2]",
                                                        "red disk [3]"}
    assert len(set(report.labels)) == len(report.labels)
    for j, entry in enumerate(cc.names):
        shown = by_index[j].extra.get("top pixels on the named part")
        assert shown == (None if entry.name is None else f"{entry.part_share:.0%}")
    small = [note for note in report.notes if note.startswith("Concept names: concept 3 ")]
    assert small and "of its top pixels lie on the part" in small[0]


def _atlas(importance: np.ndarray) -> AtlasReport:
    n, k = importance.shape
    return AtlasReport(title="t", class_ids=list(range(n)), class_names=[f"c{i}" for i in range(n)],
                       importance=importance, ci_low=importance, ci_high=importance,
                       important=np.zeros((n, k), bool), concept_names=[f"C{j}" for j in range(k)],
                       exemplars=[], exemplar_maps=[], exemplar_labels=[], confusions=[])


def test_the_atlas_heatmap_shows_negative_importance_apart_from_none():
    """Class 0: concept 0 raises it (1), concept 1 lowers it (-1), concept 2 does nothing (0).
    Before, the scale was clipped at 0: -1 and 0 were drawn in the same colour."""
    png, rows, cols = heatmap_figure(_atlas(np.array([[1.0, -1.0, 0.0], [1.0, 0.0, 0.0]])))
    assert rows == [0, 1] and cols == [0, 1, 2]
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    def count(value):
        colour = np.array(colormaps["RdBu_r"]((value + 1) / 2)[:3]) * 255
        return int((np.abs(pixels - colour).max(-1) <= 3).sum())

    cell = pixels.shape[0] * pixels.shape[1] // 60   # a cell is well over 1/60 of the figure
    assert count(-1.0) > cell            # the negative cell, in the blue end
    assert count(1.0) > 2 * cell         # the two positive cells
    assert count(0.0) > 3 * cell         # the three cells of no effect, white
