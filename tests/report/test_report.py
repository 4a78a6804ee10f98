"""conceptkit.report: data contract, figures, class pages, index; numbers checked against their
sources (inputs, numpy, scikit-learn, closed forms)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from _shared import LABELS, make_report
from matplotlib.colors import to_rgb
from PIL import Image

from conceptkit.io import json_ready
from conceptkit.report import (
    ConceptSummary,
    IndexEntry,
    concept_colors,
    concept_cooccurrence,
    concept_hex_colors,
    concept_overlay,
    figure_png,
    index_entry,
    plot_concept_overlays,
    plot_cooccurrence,
    plot_exemplar_grid,
    plot_importances,
    plot_strategic_clusters,
    save_figure,
    strategic_embedding,
    write_class_report,
    write_index,
    write_reports,
)
from conceptkit.report._write import class_slug

FIGURES = ["importance.png", "exemplars.png", "overlays.png", "heatmaps.png", "clusters.png",
           "cooccurrence.png"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = make_report()
    page = write_class_report(report, out)
    return report, page


class Tables(HTMLParser):
    """Collects every table of a page as rows of (text, css class) cells, and every img src."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"class": attrs.get("class"), "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = ["", attrs.get("class") or tag]
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(tuple(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


def parse(page: Path) -> Tables:
    parser = Tables()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def json_numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in json_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in json_numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}, which is not valid JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# ---------------------------------------------------------------------------------------------
# The class page
# ---------------------------------------------------------------------------------------------

def test_class_report_writes_page_figures_and_json(written):
    report, page = written
    assert page.name == "index.html" and page.parent.name == "class-3-red-squares"
    for name in FIGURES + ["report.json"]:
        assert (page.parent / name).is_file(), name
    for name in FIGURES:
        with Image.open(page.parent / name) as png:
            png.verify()
        with Image.open(page.parent / name) as png:
            assert png.format == "PNG" and png.mode in ("RGB", "RGBA")
            assert 250 <= png.width <= 2000 and 150 <= png.height <= 2500, (name, png.size)
            pixels = np.asarray(png.convert("RGB"), dtype=np.float64)
            assert pixels.std() > 10, f"{name} is blank"


def test_page_embeds_the_png_files_as_data_uris(written):
    _, page = written
    images = parse(page).images
    assert sorted(img["data-file"] for img in images) == sorted(FIGURES)
    for img in images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert data == (page.parent / img["data-file"]).read_bytes()
        with Image.open(io.BytesIO(data)) as png:
            assert (png.width, png.height) == (int(img["width"]), int(img["height"]))


def test_page_shows_every_label_importance_and_escapes_text(written):
    report, page = written
    text = page.read_text(encoding="utf-8")
    assert "blue &lt;b&gt;square&lt;/b&gt; &amp; co" in text and "<b>square</b>" not in text
    assert "the &lt;watermark&gt; cue looks spurious" in text
    concepts = next(t for t in parse(page).tables if t["class"] == "concepts")
    rows = concepts["rows"][1:]
    assert len(rows) == report.n_concepts
    for row, concept in zip(rows, report.concepts):
        cells = [c[0] for c in row]
        assert cells[1] == concept.label
        assert int(cells[2]) == concept.index
        assert float(cells[3]) == pytest.approx(concept.importance, rel=5e-4)
        for cell, bound in zip(cells[4:6], (concept.ci_low, concept.ci_high)):
            if math.isnan(bound):
                assert cell == "—"
            else:
                assert float(cell) == pytest.approx(bound, rel=5e-4)
        assert [int(s) for s in cells[6].split(", ") if s] == concept.exemplar_sources
    assert "↓ lower is better" in text and "↑ higher is better" in text


def test_report_json_holds_every_number_of_the_page(written):
    report, page = written
    data = strict_json(page.parent / "report.json")
    assert data["kind"] == "conceptkit.class_report" and data["format_version"] == 1
    assert (data["class_id"], data["class_name"], data["layer"]) == (3, "Red squares", "layer4.1")
    assert [c["label"] for c in data["concepts"]] == report.labels
    assert [c["importance"] for c in data["concepts"]] == pytest.approx(report.importances)
    assert data["concepts"][-1]["ci_low"] is None and data["concepts"][-1]["ci_high"] is None
    assert [c["exemplar_sources"] for c in data["concepts"]] == [
        c.exemplar_sources for c in report.concepts]
    assert [c["color"] for c in data["concepts"]] == concept_hex_colors(report.n_concepts)
    assert data["metrics"]["extraction"]["relative_l2"] == {"value": 0.123456,
                                                            "higher_is_better": False}
    assert data["metrics"]["importance"]["c_deletion"]["value"] is None
    assert data["timings_total"] == pytest.approx(3.8125)
    clusters = data["strategic_clusters"]
    assert clusters["method"] == "tsne"  # 60 images: t-SNE under "auto"
    # concepts by their index (the report's arrays are in importance order: rank r is
    # concept report.concepts[r].index), as README's "concept <i>" promises
    index = [c.index for c in report.concepts]
    assert index != sorted(index)
    assert clusters["concepts"] == data["cooccurrence"]["concepts"] == sorted(index)
    assert clusters["top_concept"] == [index[r] for r in np.arange(60) % 5]
    assert clusters["counts"] == [12] * 5
    matrix = np.array(data["cooccurrence"]["matrix"], dtype=float)
    by_rank = np.corrcoef(report.codes.T.astype(np.float64))
    rank_of = np.argsort(index)  # the rank of concept 0, 1, ...
    assert np.allclose(matrix, by_rank[np.ix_(rank_of, rank_of)], atol=1e-6)
    # Every number in every table of the page is a number of report.json (4 significant digits).
    numbers = json_numbers(data)
    shown = [cell for table in parse(page).tables for row in table["rows"] for cell in row
             if cell[1] == "num" and cell[0] != "—"]
    assert len(shown) == 5 * 5 - 2 + 3 + 4  # concepts (2 unknown CIs), metrics, timings
    for text, _ in shown:
        value = float(text)
        assert any(math.isclose(value, x, rel_tol=5e-4, abs_tol=1e-12) for x in numbers), text


def test_same_report_gives_identical_files(written, tmp_path):
    report, page = written
    again = write_class_report(report, tmp_path)
    for name in FIGURES + ["report.json", "index.html"]:
        assert (again.parent / name).read_bytes() == (page.parent / name).read_bytes(), name


def test_rendering_leaves_no_open_figures(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plt.figure()
    save_figure(fig, tmp_path / "a.png")
    assert plt.get_fignums() == before
    assert (tmp_path / "a.png").stat().st_size > 0
    plot = plot_importances(np.array([0.3, 0.1]))
    assert isinstance(figure_png(plot), bytes) and plt.get_fignums() == before
    with pytest.raises(IsADirectoryError, match="`path`"):
        save_figure(plot_importances(np.array([0.3])), tmp_path)


# ---------------------------------------------------------------------------------------------
# Index and multi-class reports
# ---------------------------------------------------------------------------------------------

def test_write_reports_links_every_class_and_writes_index_json(tmp_path):
    reports = [make_report(class_id=c, class_name=name, n_all=12, seed=c)
               for c, name in ((0, "cats"), (7, "dogs & wolves"))]
    index = write_reports(reports, tmp_path, title="Two classes")
    assert index == tmp_path / "index.html"
    data = strict_json(tmp_path / "index.json")
    assert data["kind"] == "conceptkit.report_index" and data["n_classes"] == 2
    assert data["n_images"] == 24
    parsed = parse(index)
    links = re.findall(r'href="([^"#]+/index\.html)"', index.read_text(encoding="utf-8"))
    for report, entry in zip(reports, data["classes"]):
        assert entry["page"] == f"{class_slug(report.class_id, report.class_name)}/index.html"
        assert entry["page"] in links and (tmp_path / entry["page"]).is_file()
        assert [t["label"] for t in entry["top_concepts"]] == report.labels[:3]
        assert [t["importance"] for t in entry["top_concepts"]] == pytest.approx(
            report.importances[:3])
        assert "../index.html" in (tmp_path / entry["page"]).read_text(encoding="utf-8")
        thumb = tmp_path / entry["thumbnail"]
        with Image.open(thumb) as png:
            assert max(png.size) == 64  # the 64-pixel image is never enlarged
    rows = next(t for t in parsed.tables if t["class"] == "index")["rows"][1:]
    assert [int(r[1][0]) for r in rows] == [0, 7]
    assert [int(r[4][0]) for r in rows] == [12, 12]
    for img in parsed.images:
        data_bytes = base64.b64decode(img["src"].split(",", 1)[1])
        assert data_bytes == (tmp_path / img["data-file"]).read_bytes()
    with pytest.raises(ValueError, match="same class folder"):
        write_reports([reports[0], reports[0]], tmp_path)


def test_index_entry_matches_the_pipeline_call(written, tmp_path):
    report, page = written
    entry = index_entry(report, page, page.parent.parent)
    assert entry.page == "class-3-red-squares/index.html"
    assert entry.n_images == 60 and entry.top_concepts[0] == (LABELS[0], 0.41)
    assert entry.thumbnail.shape == (3, 64, 64)
    # The thumbnail is the first image with the top 3 concepts painted on, outlined.
    expected = concept_overlay(report.images[:1], report.maps[:1], n_top_concepts=3,
                               outline=True)[0]
    assert np.allclose(entry.thumbnail, expected.transpose(2, 0, 1), atol=1e-6)
    with pytest.raises(TypeError, match="index_entry"):
        write_index([report], tmp_path)
    with pytest.raises(TypeError, match="`entries`"):
        write_index([], tmp_path)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def test_importance_bars_and_error_bars_equal_inputs():
    importances = np.array([0.5, 0.3, -0.05, 0.12])
    low = np.array([0.45, 0.35, -0.1, np.nan])  # the second interval misses its estimate
    high = np.array([0.6, 0.4, 0.0, np.nan])
    fig = plot_importances(importances, ["a", "b", "c", "d"], low, high)
    ax = fig.axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == pytest.approx(importances)
    assert [to_rgb(b.get_facecolor()) for b in bars] == [tuple(c) for c in concept_colors(4)]
    segments = ax.collections[0].get_segments()
    assert len(segments) == 3
    for segment, lo, hi, x in zip(segments, low, high, range(3)):
        assert segment[:, 0] == pytest.approx([x, x])
        assert sorted(segment[:, 1]) == pytest.approx([lo, hi])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    long_label = "concept " + "x" * 40
    ticks = plot_importances(importances[:1], [long_label]).axes[0].get_xticklabels()
    assert ticks[0].get_text() == long_label[:27] + "…"
    with pytest.raises(ValueError, match="`ci_low`"):
        plot_importances(importances, ci_low=high, ci_high=low)
    with pytest.raises(ValueError, match="`importances`"):
        plot_importances(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match=r"`colors\[1\]`"):
        plot_importances(np.array([0.1, 0.2]), colors=["red", "no-such-colour"])


def test_exemplar_grid_rows_frames_and_labels():
    rng = np.random.default_rng(0)
    blocks = [rng.random((3, 3, 20, 20)), rng.random((1, 3, 20, 10)), np.zeros((0, 3, 8, 8))]
    fig = plot_exemplar_grid(blocks, ["x", "y", "z"], np.array([0.9, 0.5, 0.1]))
    assert len(fig.axes) == 3
    colours = concept_colors(3)
    for ax, colour, block in zip(fig.axes, colours, blocks):
        strip = np.asarray(ax.images[0].get_array())
        assert strip.shape[0] == 20 + 2 * 2 and strip.shape[1] == 3 * 24 + 2 * 3
        if block.shape[0]:
            assert np.allclose(strip[0, 0], colour) and np.allclose(strip[-1, 23], colour)
        else:
            assert np.allclose(strip, 1.0)
    # Exemplars sit inside their frames unchanged (20 px fits the 20 px cell); a narrow one is
    # centred on white.
    first = np.asarray(fig.axes[0].images[0].get_array())[2:22, 2:22]
    assert np.allclose(first, blocks[0][0].transpose(1, 2, 0), atol=1e-6)
    narrow = np.asarray(fig.axes[1].images[0].get_array())
    assert np.allclose(narrow[2:22, 7:17], blocks[1][0].transpose(1, 2, 0), atol=1e-6)
    assert np.allclose(narrow[2:22, 2:7], 1.0) and np.allclose(narrow[2:22, 17:22], 1.0)
    texts = [t.get_text() for t in fig.texts]
    assert texts == ["x\n0.9", "y\n0.5", "z\n0.1"]
    assert [to_rgb(t.get_color()) for t in fig.texts] == [tuple(c) for c in colours]
    # Long labels fold into at most 3 lines of 24 characters; light colours darken for reading.
    long_label = "a concept label much too long to fit left of its row of exemplars, really far too long"
    light = concept_colors(12)[11]  # light orange from tab20
    fig = plot_exemplar_grid(blocks[:1], [long_label], colors=[light])
    lines = fig.texts[0].get_text().split("\n")
    assert len(lines) == 3 and all(len(line) <= 24 for line in lines)
    assert lines[-1].endswith("…") and long_label.startswith(" ".join(lines)[:-1])
    assert np.allclose(to_rgb(fig.texts[0].get_color()), 0.6 * np.array(light))
    with pytest.raises(ValueError, match=r"`exemplars\[1\]`"):
        plot_exemplar_grid([blocks[0], rng.random((2, 20, 20))])


def test_overlay_closed_form_blend():
    image = np.full((1, 3, 8, 8), 0.5, dtype=np.float32)
    maps = np.zeros((1, 2, 8, 8), dtype=np.float32)
    maps[0, 0, :2, :2] = 3.0
    maps[0, 1, 4:, 4:] = 1.0
    maps[0, 1, 5:, 5:] = 2.0
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    out = concept_overlay(image, maps, [red, blue], percentile=50, max_alpha=0.6)[0]
    # Concept 0: 4 of 64 pixels non-zero, so only they pass; opacity 0.6 * 3 / 3.
    assert np.allclose(out[:2, :2], 0.4 * 0.5 + 0.6 * np.array(red))
    # Concept 1: 16 pixels, the inner 9 at its maximum (opacity 0.6), the rim 7 at half of it.
    assert np.allclose(out[5:, 5:], 0.4 * 0.5 + 0.6 * np.array(blue))
    assert np.allclose(out[4, 4:], 0.7 * 0.5 + 0.3 * np.array(blue))
    painted = np.zeros((8, 8), dtype=bool)
    painted[:2, :2] = painted[4:, 4:] = True
    assert np.allclose(out[~painted], 0.5)
    # The 90th percentile of concept 1 (over its 64 values) drops its rim of value 1.
    strict = concept_overlay(image, maps, [red, blue], percentile=90)[0]
    assert np.allclose(strict[4, 4:], 0.5) and np.allclose(strict[6, 6], 0.4 * 0.5 + 0.6 * np.array(blue))


def test_overlay_stacking_and_argmax_modes():
    image = np.zeros((1, 3, 4, 4), dtype=np.float32)
    maps = np.zeros((1, 2, 4, 4), dtype=np.float32)
    maps[0, 0] = 1.0
    maps[0, 1, 0, 0] = 1.0
    maps[0, 1, 1, 1] = 0.5
    red, blue = np.array([1.0, 0, 0]), np.array([0, 0, 1.0])
    stacked = concept_overlay(image, maps, [red, blue], percentile=0, max_alpha=0.5)[0]
    # Alpha mode: blue (concept 1) first, then red (most important) on top.
    assert np.allclose(stacked[0, 0], 0.5 * (0.5 * blue) + 0.5 * red)
    winner = concept_overlay(image, maps, [red, blue], percentile=0, mode="argmax",
                             max_alpha=0.5)[0]
    assert np.allclose(winner[0, 0], 0.5 * red)  # tie: the first (more important) concept
    assert np.allclose(winner[1, 1], 0.5 * red)  # red 1.0 beats blue 0.5 / 1.0
    with pytest.raises(ValueError, match="Did you mean 'argmax'"):
        concept_overlay(image, maps, mode="argmx")
    with pytest.raises(ValueError, match="`maps` has 2 images"):
        concept_overlay(image, np.zeros((2, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        concept_overlay(image + 2, maps)


def test_overlay_figure_panels_and_legend(written):
    report, _ = written
    fig = plot_concept_overlays(report.images, report.maps, report.labels,
                                image_ids=report.image_ids, n_top_concepts=3, ncols=3)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4
    assert [ax.get_title() for ax in shown] == [f"image {i}" for i in report.image_ids]
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == report.labels[:3]
    expected = concept_overlay(report.images, report.maps, n_top_concepts=3, outline=True)
    assert np.allclose(np.asarray(shown[1].images[0].get_array()), expected[1], atol=1e-6)


def test_cluster_graph_colours_points_by_top_concept():
    rng = np.random.default_rng(1)
    values = rng.random((30, 4))
    values[:, 3] *= 0.1  # concept 3 is never the top concept
    winners = values.argmax(axis=1)
    fig = plot_strategic_clusters(values, ["a", "b", "c", "d"], method="pca")
    scatter = fig.axes[0].collections[0]
    colours = concept_colors(4)
    assert np.allclose(scatter.get_facecolors()[:, :3], np.array(colours)[winners])
    from sklearn.decomposition import PCA

    assert np.allclose(scatter.get_offsets(), PCA(2, svd_solver="full").fit_transform(values))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    counts = np.bincount(winners, minlength=4)
    assert labels == [f"{n} ({counts[i]})" for i, n in enumerate("abc")]
    # Lens: a concept is coloured only when it tops at least `min_count` images.
    rare = int(np.argmin(counts[:3]))
    grey = plot_strategic_clusters(values, min_count=int(counts[rare]) + 1, method="pca")
    faces = grey.axes[0].collections[0].get_facecolors()[:, :3]
    assert np.allclose(faces[winners == rare], to_rgb("0.75"))
    assert np.allclose(faces[winners != rare], np.array(colours)[winners[winners != rare]])


def test_tsne_embedding_is_seeded_and_keeps_clusters():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(3), 20)
    values = 0.05 * rng.random((60, 3))
    values[np.arange(60), groups] += 1.0
    coords, used = strategic_embedding(values, "auto", seed=3)
    assert used == "tsne" and coords.shape == (60, 2)
    again, _ = strategic_embedding(values, "tsne", seed=3)
    assert np.array_equal(coords, again)
    # Every point's nearest neighbour in the embedding shares its top concept.
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (groups[distances.argmin(axis=1)] == groups).all()
    small, used = strategic_embedding(values[:10], "auto")
    assert used == "pca" and small.shape == (10, 2)
    assert np.array_equal(strategic_embedding(values[:1])[0], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="at least 5"):
        strategic_embedding(values[:4], "tsne")


def test_cooccurrence_matches_numpy_and_sklearn():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(2)
    codes = rng.random((300, 4))
    codes[:, 1] = codes[:, 0] + 0.05 * rng.random(300)
    codes[:, 3] = 0.0  # a dead concept: its correlations are undefined
    corr = concept_cooccurrence(codes, "correlation")
    assert np.allclose(corr[:3, :3], np.corrcoef(codes[:, :3].T))
    assert np.isnan(corr[3]).all() and np.isnan(corr[:, 3]).all()
    jac = concept_cooccurrence(codes, "jaccard", quantile=0.8)
    present = codes > np.quantile(codes, 0.8, axis=0)
    assert present[:, :3].sum(axis=0).tolist() == [60, 60, 60]
    for a in range(3):
        for b in range(3):
            assert jac[a, b] == pytest.approx(jaccard_score(present[:, a], present[:, b]))
    assert np.isnan(jac[3, 3]) and jac[0, 1] > 0.8
    fig = plot_cooccurrence(codes, list("abcd"))
    shown = fig.axes[0].images[0].get_array()
    assert np.allclose(shown.filled(np.nan)[:3, :3], corr[:3, :3]) and shown.mask[3].all()
    assert sum(t.get_text() == "–" for t in fig.axes[0].texts) == 7
    with pytest.raises(ValueError, match="Did you mean 'jaccard'"):
        concept_cooccurrence(codes, "jacard")


def test_palette_is_stable_and_distinct():
    assert concept_colors(3) == concept_colors(70)[:3]
    assert concept_colors(10) == [tuple(c) for c in matplotlib.colormaps["tab10"].colors]
    many = concept_colors(70)
    assert len({tuple(np.round(c, 3)) for c in many}) == 70
    assert concept_hex_colors(1) == ["#1f77b4"]


def test_json_ready_writes_null_for_non_finite():
    value = {"a": np.float32(np.nan), "b": [np.inf, 1, np.int64(2)], "c": np.array([0.5, np.nan])}
    assert json_ready(value) == {"a": None, "b": [None, 1, 2], "c": [0.5, None]}
    json.dumps(json_ready(value), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Invalid input
# ---------------------------------------------------------------------------------------------

def test_mismatched_concepts_and_maps_name_the_argument():
    report = make_report(n_all=10)
    with pytest.raises(ValueError, match=r"`maps` has 6 concepts in axis 1 but `concepts` lists 5"):
        make_report(n_all=10, maps=np.zeros((4, 6, 8, 8)))
    with pytest.raises(ValueError, match=r"`maps` has 3 images in axis 0 but `images` has 4"):
        make_report(n_all=10, maps=report.maps[:3])
    with pytest.raises(ValueError, match="`per_image_importance` has 4 concepts"):
        make_report(n_all=10, per_image_importance=np.zeros((10, 4)))
    with pytest.raises(ValueError, match="`codes` has 3 concepts"):
        make_report(n_all=10, codes=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="`image_ids` has 2 entries"):
        make_report(n_all=10, image_ids=[1, 2])
    with pytest.raises(ValueError, match=r"`images` must hold colours in \[0, 1\]"):
        make_report(n_all=10, images=report.images * 2 - 1)
    with pytest.raises(ValueError, match="`images` must be RGB"):
        make_report(n_all=10, images=report.images[:, :1])
    with pytest.raises(ValueError, match="`maps` contains NaN"):
        make_report(n_all=10, maps=np.full_like(report.maps, np.nan))
    with pytest.raises(ValueError, match="`concepts` must be a non-empty list"):
        make_report(n_all=10, concepts=[])
    with pytest.raises(TypeError, match=r"`concepts\[0\]` must be a ConceptSummary"):
        make_report(n_all=10, concepts=[{"label": "x"}] * 5)
    with pytest.raises(ValueError, match=r"`metrics\['a'\]\['b'\]` must have a 'value' key"):
        make_report(n_all=10, metrics={"a": {"b": {"score": 1.0}}})
    with pytest.raises(ValueError, match=r"`timings\['fit'\]` must be >= 0"):
        make_report(n_all=10, timings={"fit": -1.0})


def test_invalid_concept_summary_and_writer_arguments(tmp_path):
    ok = dict(index=0, label="a", importance=0.5, ci_low=0.4, ci_high=0.6,
              exemplars=np.zeros((2, 3, 8, 8)), exemplar_sources=[1, 2], extra={})
    ConceptSummary(**ok)
    with pytest.raises(ValueError, match="`ci_low` .* is above `ci_high`"):
        ConceptSummary(**{**ok, "ci_low": 0.7})
    with pytest.raises(ValueError, match="`exemplar_sources` has 1 entries"):
        ConceptSummary(**{**ok, "exemplar_sources": [1]})
    with pytest.raises(ValueError, match="`importance` must be finite"):
        ConceptSummary(**{**ok, "importance": float("nan")})
    with pytest.raises(TypeError, match="`label` must be a str"):
        ConceptSummary(**{**ok, "label": 3})
    with pytest.raises(TypeError, match="`report` must be a ClassReport"):
        write_class_report({"class_id": 1}, tmp_path)
    report = make_report(n_all=10)
    with pytest.raises(ValueError, match="Did you mean 'tsne'"):
        write_class_report(report, tmp_path, embedding="tnse")
    with pytest.raises(ValueError, match="`percentile` must be below 100"):
        write_class_report(report, tmp_path, percentile=100)
    with pytest.raises(ValueError, match="`thumbnail` must be an array of shape"):
        IndexEntry(1, "a", "craft", 3, [("x", 0.1)], "a/index.html", np.zeros((8, 8)))
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_details_column_only_when_some_concept_has_extras(tmp_path):
    report = make_report(n_all=10)
    bare = make_report(n_all=10, concepts=[
        ConceptSummary(c.index, c.label, c.importance, c.ci_low, c.ci_high, c.exemplars,
                       c.exemplar_sources, {}) for c in report.concepts])
    page = write_class_report(bare, tmp_path, embedding="pca")
    concepts = next(t for t in parse(page).tables if t["class"] == "concepts")
    assert [h[0] for h in concepts["rows"][0]][-1] == "exemplar source images"
    assert all(len(row) == 7 for row in concepts["rows"])


def test_write_page_embeds_pictures_writes_their_files_and_escapes_text(tmp_path):
    from conceptkit.report import PageTable, Picture, write_page

    fig = matplotlib.figure.Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    png = figure_png(fig, 30)
    page = write_page(tmp_path / "p", "A <title>", [
        ("Numbers", [PageTable(["name", "value"], [["<b>", 0.123456], ["missing", None]])]),
        ("Figure", [Picture("f", "F", png, "f.png", "a caption"), "a & b"]),
    ])
    text = page.read_text()
    assert (tmp_path / "p" / "f.png").read_bytes() == png
    assert text.count("data:image/png;base64,") == 1 and base64.b64encode(png).decode() in text
    assert "A &lt;title&gt;" in text and "&lt;b&gt;" in text and "a &amp; b" in text
    assert '<td class="num">0.1235</td>' in text and '<td class="num">—</td>' in text
    with pytest.raises(TypeError, match="Picture, a PageTable or a str"):
        write_page(tmp_path / "q", "t", [("s", [3])])


def test_overlay_outlines_each_region_in_its_colour():
    image = np.full((1, 3, 8, 8), 0.5, dtype=np.float32)
    maps = np.zeros((1, 1, 8, 8), dtype=np.float32)
    maps[0, 0, 2:6, 2:6] = 1.0
    red = (1.0, 0.0, 0.0)
    plain = concept_overlay(image, maps, [red], percentile=50, max_alpha=0.5)[0]
    lined = concept_overlay(image, maps, [red], percentile=50, max_alpha=0.5, outline=True)[0]
    ring = np.zeros((8, 8), dtype=bool)
    ring[2:6, 2:6] = True
    ring[3:5, 3:5] = False
    assert np.allclose(lined[ring], red)  # the region's edge, opaque
    assert np.allclose(lined[~ring], plain[~ring])  # inside and outside: the blend as before
    with pytest.raises(TypeError, match="outline"):
        concept_overlay(image, maps, [red], outline="yes")
