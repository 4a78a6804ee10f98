"""Fourth review of the reports: greyscale and RGBA models, atlas importances never measured,
one metric that does not apply, dollar signs in user text, the CBM report and the user's
matplotlib backend, file names in column titles, the atlas graph's labels, notes that name
concepts as the page does, and long names on the page."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from _shared import two_block_cnn
from matplotlib.text import Text
from torch import nn

import conceptkit
from conceptkit.pipeline import build_class_report
from conceptkit.report import AtlasReport, write_atlas_report
from conceptkit.report import _atlas as atlas_module
from conceptkit.report._figures import (
    image_title,
    plot_concept_overlays,
    plot_exemplar_grid,
    plot_importances,
)
from conceptkit.report._heatmaps import plot_concept_heatmaps
from conceptkit.report._structure import plot_cooccurrence, plot_strategic_clusters

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOLLAR_LABELS = ["tail $2 vs $3", r"bad $\foo$ name", "wing"]


def drawn(fig) -> list[str]:
    """Every text of ``fig`` as matplotlib draws it, asserting none is read as mathtext."""
    shown = []
    for text in fig.findobj(Text):
        string, math = text._preprocess_math(text.get_text())
        assert math is False, f"{text.get_text()!r} is drawn as mathtext"
        shown.append(string)
    return shown


def channel_cnn(channels: int) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("block1", nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(),
                                             nn.MaxPool2d(2)))
    model.add_module("block2", nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU()))
    model.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3)))
    return model.eval()


# ---------------------------------------------------------------- 1. grey and RGBA models


@pytest.mark.parametrize("channels", [1, 4])
def test_grey_and_rgba_models_write_a_report_in_rgb(channels, tmp_path):
    rgb = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(channels))
    images = (rgb.mean(1, keepdim=True) if channels == 1
              else torch.cat([rgb, torch.ones_like(rgb[:, :1])], 1))
    cc = conceptkit.ConceptExplainer(channel_cnn(channels), "block2", n_concepts=3, seed=0,
                                     progress=False).fit(images, 0)
    report = build_class_report(cc, n_images=3, n_exemplars=2)
    expected = (images[:3].repeat(1, 3, 1, 1) if channels == 1 else images[:3, :3]).numpy()
    np.testing.assert_allclose(report.images, expected, atol=1e-6)
    for summary in report.concepts:
        crops, _ = cc.top_examples(summary.index, 2, image_size=24)
        crops = crops.numpy()
        np.testing.assert_allclose(summary.exemplars, crops.repeat(3, 1) if channels == 1
                                   else crops[:, :3], atol=1e-6)
    page = conceptkit.report.write_class_report(report, tmp_path, dpi=30)
    data = json.loads((page.parent / "report.json").read_text(encoding="utf-8"))
    said = [note for note in data["notes"] if f"{channels}-channel images" in note]
    assert len(said) == 1 and ("grey" in said[0] if channels == 1 else "first 3" in said[0])
    assert "channel images" in page.read_text(encoding="utf-8")


def test_a_report_refuses_two_channel_pictures_naming_the_fix():
    from conceptkit.report._images import display_rgb

    with pytest.raises(ValueError, match=r"`images` has 2 channels .* Give the pictures as RGB"):
        display_rgb(np.zeros((1, 2, 4, 4)), "images")


# ---------------------------------------------------------------- 3. one metric does not apply


def test_a_metric_that_does_not_apply_keeps_the_others(tmp_path):
    images = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    cc = conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=1, seed=0,
                                     progress=False).fit(images, 1)
    metrics = cc.compute_metrics()
    hoyer = metrics["extraction"]["hoyer"]
    assert hoyer["value"] is None and "at least 2 concepts" in hoyer["reason"]
    kept = {name: entry["value"] for group in metrics.values() for name, entry in group.items()
            if name != "hoyer"}
    assert {"relative_l2", "sparsity_l0", "c_deletion", "c_insertion"} <= set(kept)
    assert all(value is None or np.isfinite(value) for value in kept.values())
    assert np.isfinite(kept["relative_l2"])
    page = cc.report(tmp_path, dpi=30, n_images=2, n_exemplars=2)
    html = Path(page).read_text(encoding="utf-8")
    assert "No metrics were given" not in html
    assert "not applicable: the Hoyer sparsity" in html
    shown = json.loads((Path(page).parent / "report.json").read_text())["metrics"]["extraction"]
    assert shown["relative_l2"]["value"] == pytest.approx(kept["relative_l2"])
    assert shown["hoyer"]["value"] is None and shown["hoyer"]["reason"] == hoyer["reason"]


def test_an_unrelated_error_of_a_metric_is_not_swallowed(monkeypatch):
    from conceptkit.concepts import metrics as extraction
    from conceptkit.pipeline._assemble import compute_metrics

    images = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    cc = conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=2, seed=0,
                                     progress=False).fit(images, 1)

    def broken(A, A_hat):
        raise RuntimeError("a bug in a metric")

    monkeypatch.setitem(extraction.EXTRACTION_METRICS, "relative_l2",
                        extraction.Metric("relative_l2", broken, False, "reconstruction"))
    with pytest.raises(RuntimeError, match="a bug in a metric"):
        compute_metrics(cc)


# ---------------------------------------------------------------- 5. dollar signs


def test_dollar_signs_are_drawn_as_dollars_in_every_class_figure():
    k = len(DOLLAR_LABELS)
    rng = np.random.default_rng(0)
    images, maps = rng.random((2, 3, 16, 16)), rng.random((2, k, 4, 4))
    ids = [r"a$\foo$.png", "cost $5 and $6.png"]
    figures = [
        plot_importances(np.arange(k, dtype=float), DOLLAR_LABELS),
        plot_exemplar_grid([rng.random((1, 3, 8, 8)) for _ in range(k)], DOLLAR_LABELS),
        plot_concept_overlays(images, maps, DOLLAR_LABELS, image_ids=ids),
        plot_concept_heatmaps(images, maps, DOLLAR_LABELS, image_ids=ids),
        plot_cooccurrence(rng.random((20, k)), DOLLAR_LABELS),
        plot_strategic_clusters(rng.random((6, k)), DOLLAR_LABELS, method="pca"),
    ]
    for fig in figures:
        text = "\n".join(drawn(fig))
        fig.savefig(io.BytesIO(), format="png")  # draws without a parse error
        assert "tail $2 vs $3" in text and r"bad $\foo$ name" in text
    for fig in figures[2:4]:
        text = "\n".join(drawn(fig))
        assert r"a$\foo$.png" in text and "$5" in text


def test_a_report_with_dollar_labels_and_file_names_is_written(tmp_path):
    images = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    cc = conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=3, seed=0,
                                     progress=False).fit(images, 1, "price $low$",
                                                         image_ids=[r"a$\foo$.png", "b", "c"])
    page = cc.report(tmp_path, dpi=30, labels=dict(enumerate(DOLLAR_LABELS)))
    data = json.loads((Path(page).parent / "report.json").read_text())
    assert sorted(c["label"] for c in data["concepts"]) == sorted(DOLLAR_LABELS)


def _atlas(importance, no_region=(), names=None):
    n, k = importance.shape
    return AtlasReport(
        title="t", class_ids=list(range(n)),
        class_names=names or [f"class {i}" for i in range(n)], importance=importance,
        ci_low=importance - 0.1, ci_high=importance + 0.1, important=importance > 0.5,
        concept_names=[f"C{j}" for j in range(k)],
        exemplars=[np.full((1, 3, 8, 8), 0.5) for _ in range(k)],
        exemplar_maps=[np.ones((1, 8, 8)) for _ in range(k)],
        exemplar_labels=[np.zeros(1, int) for _ in range(k)], confusions=[],
        **({"no_region": list(no_region)} if no_region else {}))


def _captured(monkeypatch, module):
    figures = []
    original = module.figure_png

    def capture(fig, *args, **kwargs):
        figures.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(module, "figure_png", capture)
    return figures


def test_atlas_figures_draw_dollar_names_as_dollars(monkeypatch):
    figures = _captured(monkeypatch, atlas_module)
    report = _atlas(np.array([[1.0, 0.9], [0.8, 1.0], [1.0, 0.7]]),
                    names=["tail $2 vs $3", r"bad $\foo$", "plain"])
    report.concept_names = ["$x$ wing", "c1"]
    atlas_module.heatmap_figure(report)
    atlas_module.graph_figure(report)
    for fig in figures:
        text = "\n".join(drawn(fig))
        assert "tail $2 vs $3" in text and r"bad $\foo$" in text and "$x$ wing" in text


# ---------------------------------------------------------------- 6. CBM report and the backend


@pytest.fixture()
def cbm_parts():
    from conceptkit.bottleneck import ConceptBottleneckModel, evaluate_cbm, intervention_curve
    from conceptkit.datasets import make_concept_dataset

    ds = make_concept_dataset(4, seed=0, split="test")
    torch.manual_seed(0)
    x = torch.rand(len(ds.labels), 5)
    names = list(ds.concept_names)
    names[0] = "tail $2 vs $3"
    model = ConceptBottleneckModel(torch.nn.Linear(5, ds.n_concepts), ds.n_concepts, ds.n_classes,
                                   concept_names=names, class_names=list(ds.class_names))
    data = (x, ds.concepts, ds.labels)
    return model, evaluate_cbm(model, data), {
        "random": intervention_curve(model, data, policy="random", n_trials=1, seed=0)}


def test_the_cbm_report_leaves_the_matplotlib_backend_alone(cbm_parts, tmp_path, monkeypatch):
    import conceptkit.report as report_package
    from conceptkit.bottleneck._report import write_cbm_report

    figures = _captured(monkeypatch, report_package)
    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # stands for a notebook's or a GUI's backend chosen by the user
    try:
        page = write_cbm_report(tmp_path, *cbm_parts)
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
    assert page.is_file() and len(figures) == 3
    # the concept names reach the figures as they are, dollars included
    assert "tail $2 vs $3" in "\n".join(drawn(figures[0]))
    # weights: white on the dark ends of the scale, black on the light middle
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    from conceptkit.bottleneck._report import concept_class_weights

    values = concept_class_weights(cbm_parts[0])
    weights = figures[0].axes[0]
    image = weights.images[0]
    cmap, norm = colormaps["RdBu_r"], Normalize(*image.get_clim())
    cells = [t for t in weights.texts]
    assert len(cells) == values.size
    for text in cells:
        j, i = text.get_position()
        r, g, b = cmap(norm(values[int(i), int(j)]))[:3]
        dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.45
        assert text.get_color() == ("white" if dark else "black")
    # the legend of the quality chart sits above every bar (scores are at most 1)
    quality = figures[1].axes[0]
    assert quality.get_ylim()[1] > 1.2
    legend = quality.get_legend().get_window_extent()
    tops = [quality.transData.transform((0, bar.get_height()))[1] for bar in quality.patches]
    assert legend.y0 >= max(tops) - 1


# ---------------------------------------------------------------- 7. file names in titles


def test_column_titles_keep_the_end_of_file_names():
    ids = [f"IMG_20240315_1422{33 + i}.jpg" for i in range(6)]
    titles = [image_title(i, width=18) for i in ids]
    assert len(set(titles)) == len(ids)
    assert all(len(t) <= 18 and t.startswith("IMG_") and t.endswith(f"{33 + i}.jpg")
               for i, t in enumerate(titles))
    rng = np.random.default_rng(1)
    fig = plot_concept_heatmaps(rng.random((6, 3, 16, 16)), rng.random((6, 2, 4, 4)),
                                image_ids=ids)
    shown = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert shown == titles


# ---------------------------------------------------------------- 2. atlas: no region


def test_the_atlas_shows_unmeasured_importances_as_no_region(tmp_path):
    importance = np.array([[1.0, 0.0, 0.4], [0.0, 1.0, 0.2]])
    index = write_atlas_report(_atlas(importance, no_region=[[1], []]), tmp_path, dpi=40)
    data = json.loads((tmp_path / "atlas.json").read_text())
    assert data["no_region"] == [[1], []]
    # not measured is null in the JSON, not the 0 it is held as; class 1's measured 0 stays 0
    assert data["importance"] == [[1.0, None, 0.4], [0.0, 1.0, 0.2]]
    assert data["ci_low"][0][1] is None and data["ci_high"][0][1] is None
    class0 = (tmp_path / "classes" / "class-0.html").read_text()
    rows = re.findall(r"<tr>(.*?)</tr>", class0)
    row = next(r for r in rows if "concept-1.html" in r)
    assert "— (no region)" in row and ">0<" not in row
    assert rows[-1] == row  # unmeasured, listed after the measured concepts
    class1 = (tmp_path / "classes" / "class-1.html").read_text()
    assert "no region" not in class1  # class 1's 0 (concept 0) was measured
    concept1 = (tmp_path / "concepts" / "concept-1.html").read_text()
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", concept1)
    assert cells.count("— (no region)") == 1 and "not measured" in concept1
    assert "hatched grey" in index.read_text()


def test_the_atlas_heatmap_marks_unmeasured_cells_apart_from_none():
    from PIL import Image

    importance = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    pngs = [atlas_module.heatmap_figure(_atlas(importance, no_region=rows))[0]
            for rows in ([[], []], [[1], []])]
    from matplotlib import colormaps

    none = np.array(colormaps[atlas_module.HEATMAP_CMAP](0.5)[:3]) * 255  # the colour of "0 none"
    white, grey = [], []
    for png in pngs:
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        white.append(int((np.abs(pixels - none).max(-1) <= 3).sum()))
        grey.append(int((np.abs(pixels - 199).max(-1) <= 4).sum()))
    cell = pixels.shape[0] * pixels.shape[1] // 60
    assert white[0] - white[1] > cell // 2  # one "0 none" cell less is drawn as no effect
    assert grey[1] - grey[0] > cell // 4    # it is grey (hatched) instead


def test_write_atlas_report_refuses_a_wrong_no_region(tmp_path):
    with pytest.raises(ValueError, match=r"`no_region` has 1 rows but there are 2 classes"):
        write_atlas_report(_atlas(np.ones((2, 2)), no_region=[[0]]), tmp_path)
    with pytest.raises(ValueError, match=r"`no_region\[0\]` names concept 5"):
        write_atlas_report(_atlas(np.ones((2, 2)), no_region=[[5], []]), tmp_path / "b")


def test_an_atlas_report_carries_no_region_from_its_importance(tmp_path):
    from conceptkit import ConceptAtlas
    from conceptkit.datasets import make_concept_dataset, reference_model

    world = make_concept_dataset(4, split="test")
    atlas = ConceptAtlas(reference_model(), "block4", n_concepts=4, method="ice", seed=0,
                         class_names=world.class_names, progress=False).fit(world)
    expected = atlas.importance.params["no_region"]
    assert any(expected)  # the pixel-ablation atlas leaves some concept unmeasured
    atlas.report(tmp_path, n_exemplars=2, n_confusions=1)
    assert json.loads((tmp_path / "atlas.json").read_text())["no_region"] == \
        [sorted(int(j) for j in row) for row in expected]
    row, concepts = next((r, c) for r, c in enumerate(expected) if c)
    page = (tmp_path / "classes" / f"class-{atlas.importance.classes[row]}.html").read_text()
    assert re.findall(r"<td[^>]*>([^<]*)</td>", page).count("— (no region)") == len(concepts)


# ---------------------------------------------------------------- 8. the atlas graph's labels


def test_atlas_graph_labels_clear_their_node_and_the_edges(monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = _captured(monkeypatch, atlas_module)
    n = 6
    important = np.ones((n, 2), bool)
    report = _atlas(np.ones((n, 2)), names=[f"a long class name {i}" for i in range(n)])
    report.important = important
    atlas_module.graph_figure(report)
    fig = figures[0]
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    radius = np.sqrt(500 / np.pi) * fig.dpi / 72
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + np.pi / 2
    centres = ax.transData.transform(np.stack([np.cos(angles), np.sin(angles)], 1))
    labels = [t for t in ax.texts if t.get_text().startswith("a long class name")]
    assert len(labels) == n
    edges = [line.get_xydata() for line in ax.lines]
    for text in labels:
        box = text.get_window_extent()
        for centre in centres:  # no node circle reaches into a label
            nearest = np.clip(centre, [box.x0, box.y0], [box.x1, box.y1])
            assert np.linalg.norm(centre - nearest) > radius
        for ends in edges:  # no edge runs through a label
            points = ax.transData.transform(
                ends[0] + np.linspace(0, 1, 200)[:, None] * (ends[1] - ends[0]))
            inside = ((points[:, 0] > box.x0) & (points[:, 0] < box.x1)
                      & (points[:, 1] > box.y0) & (points[:, 1] < box.y1))
            assert not inside.any()


# ---------------------------------------------------------------- 9. notes name the shown labels


def test_the_notes_name_concepts_by_the_labels_shown():
    images = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    cc = conceptkit.ConceptExplainer(two_block_cnn(), "block2", n_concepts=3, seed=0,
                                     progress=False).fit(images, 1)
    plain = [n for n in cc.notes() if re.search(r"\bconcept \d+\b", n)]
    assert plain, "this explanation has no note naming a concept; pick another seed"
    labels = {0: "red disk", 1: "tail $2", 2: "ring"}
    report = build_class_report(cc, labels=labels, n_images=2, n_exemplars=2)
    expected = [re.sub(r"\bconcept (\d+)\b", lambda m: labels[int(m.group(1))], n)
                for n in cc.notes()]
    assert report.notes[:len(expected)] == expected
    assert not any(re.search(r"\bconcept \d+\b", n) for n in report.notes[:len(expected)])
    # the explanation's own notes are unchanged
    assert [n for n in cc.notes() if re.search(r"\bconcept \d+\b", n)] == plain


# ---------------------------------------------------------------- 10. long names wrap


def test_long_names_without_spaces_wrap_on_the_page():
    from conceptkit.report._html import CSS

    rules = {selector.strip(): body for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", CSS)}
    wrapping = [s for s, body in rules.items() if "overflow-wrap: anywhere" in body]
    assert wrapping
    selectors = {part.strip() for s in wrapping for part in s.split(",")}
    assert {"h1", "td", ".meta", "li"} <= selectors
    # not the column headers: they would break inside words ("importan|ce") to make room
    assert "th" not in selectors
