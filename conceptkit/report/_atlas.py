"""The atlas report: one dictionary for all classes, drawn as an index, concept pages and class
pages that link to each other.

It renders an :class:`AtlasReport` that the pipeline assembles and computes no explanation
itself. Pages: ``index.html`` (the clustered class × concept importance heatmap, the graph of
classes linked by shared concepts, the most confused class pairs with the concepts that explain
them), ``concepts/concept-<j>.html`` (exemplars across classes, which classes use the concept,
its maps) and ``classes/class-<c>.html`` (the class's concepts, linked both ways); plus
``atlas.json`` with every number shown.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from scipy.cluster.hierarchy import leaves_list, linkage

from ._figures import figure_png, plain
from ._html import Picture, document, esc, figure_block, format_number, section, table
from ._images import display_rgb, png_bytes, to_hwc
from ._outputs import owned_folder, record


@dataclass
class AtlasReport:
    """The numbers and pictures of an atlas report.

    ``importance``/``ci_low``/``ci_high`` are ``(n_classes, k)``; ``important`` the boolean
    matrix of concepts that matter to each class; ``exemplars[j]`` ``(m, 3, H, W)`` images in
    [0, 1] with ``exemplar_maps[j]`` ``(m, H, W)`` and ``exemplar_labels[j]`` ``(m,)``;
    ``confusions`` a list of dicts ``{"a", "b", "probability", "concepts": [{"concept",
    "contribution", "shared"}...], "n_images", "n_confused"}``; ``class_pages`` optional links
    from class ids to existing per-class report pages (relative to the report folder);
    ``exemplar_pixels`` False when the exemplars have no pixels (an atlas fitted on an
    activation store): the pages then show the concept's feature-map cells alone and say so.
    ``no_region`` (one list per class row, as ``atlas.importance.params["no_region"]``) names
    the concepts that have no region in any of that class's images: nothing was painted out, so
    their importance (0) is no measurement; the pages show them as "— (no region)", the heatmap
    hatches them and ``atlas.json`` records them. Empty when the importance method paints
    nothing out (every importance was measured).
    """

    title: str
    class_ids: list[int]
    class_names: list[str]
    importance: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    important: np.ndarray
    concept_names: list[str]
    exemplars: list[np.ndarray]
    exemplar_maps: list[np.ndarray]
    exemplar_labels: list[np.ndarray]
    confusions: list[dict]
    meta: dict = field(default_factory=dict)
    class_pages: dict = field(default_factory=dict)
    exemplar_pixels: bool = True
    no_region: list = field(default_factory=list)


def no_region_mask(report: AtlasReport) -> np.ndarray:
    """Boolean ``(n_classes, k)``: True where the concept has no region in the class's images
    (its importance was not measured), from ``report.no_region``."""
    shape = np.asarray(report.importance).shape
    mask = np.zeros(shape, dtype=bool)
    rows = report.no_region or []
    if isinstance(rows, np.ndarray) and rows.dtype == bool:
        if rows.shape != shape:
            raise ValueError(f"`no_region` as a boolean matrix must have the importance's shape "
                             f"{shape}; got {rows.shape}. Give one list of concept indices per "
                             f"class row (atlas.importance.params['no_region']).")
        return rows.copy()
    if len(rows) not in (0, shape[0]):
        raise ValueError(f"`no_region` has {len(rows)} rows but there are {shape[0]} classes; give "
                         f"one list of concept indices per class row "
                         f"(atlas.importance.params['no_region']), or leave it empty.")
    for r, concepts in enumerate(rows):
        for j in concepts:
            if not 0 <= int(j) < shape[1]:
                raise ValueError(f"`no_region[{r}]` names concept {j}, but there are {shape[1]} "
                                 f"concepts (0 to {shape[1] - 1}).")
            mask[r, int(j)] = True
    return mask


#: What a concept without a region in a class shows instead of its (unmeasured) importance.
NO_REGION = "— (no region)"
NO_REGION_NOTE = ('<p class="small">— (no region): the concept has no region in any of the '
                  "class's images (its map is nowhere positive and at or above its threshold), "
                  "so nothing was painted out: its importance was not measured. Read it as "
                  "'not found in this class's images'.</p>")


def _order(matrix: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage clustering of the rows (identity for < 3 rows)."""
    if matrix.shape[0] < 3 or not np.isfinite(matrix).all():
        return np.arange(matrix.shape[0])
    return leaves_list(linkage(matrix, method="average", metric="euclidean"))


def _normalized(values: np.ndarray) -> np.ndarray:
    """Each class's importances divided by its largest absolute one: in [-1, 1], signs kept."""
    top = np.abs(values).max(axis=1, keepdims=True)
    return np.divide(values, top, out=np.zeros_like(values, dtype=np.float64), where=top > 0)


#: The heatmap's colours: diverging and centred at 0, so that a concept that lowers a class's
#: score (negative importance) is blue, not the colour of "no effect".
HEATMAP_CMAP = "RdBu_r"


def heatmap_figure(report: AtlasReport, dpi: int = 100) -> tuple[bytes, list[int], list[int]]:
    """The class × concept heatmap (rows and columns clustered); returns PNG and the orders.

    Each row is divided by the class's largest absolute importance and drawn on a diverging
    scale from -1 (blue: the concept lowers the class's score) through 0 (white) to 1 (red)."""
    norm = _normalized(np.asarray(report.importance, dtype=np.float64))
    rows, cols = _order(norm), _order(norm.T)
    n_classes, k = norm.shape
    fig = Figure(figsize=(max(5.0, 0.45 * k + 3.0), max(3.0, 0.4 * n_classes + 1.6)))
    ax = fig.add_subplot()
    shown = norm[np.ix_(rows, cols)]
    image = ax.imshow(shown, cmap=HEATMAP_CMAP, vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(k), [plain(report.concept_names[j]) for j in cols], rotation=60,
                  ha="right", fontsize=8)
    ax.set_yticks(range(n_classes), [plain(report.class_names[i]) for i in rows], fontsize=8)
    missing = no_region_mask(report)[np.ix_(rows, cols)]
    for r, i in enumerate(rows):
        for c, j in enumerate(cols):
            if missing[r, c]:  # not measured: grey and hatched, never the white of "0 none"
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="0.78",
                                       edgecolor="0.45", hatch="////", linewidth=0))
            elif report.important[i, j]:  # readable on the dark ends and on the white middle
                ax.text(c, r, "●", ha="center", va="center", fontsize=7,
                        color="white" if abs(shown[r, c]) > 0.6 else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
    bar.set_ticks([-1, -0.5, 0, 0.5, 1],
                  labels=["-1 lowers", "-0.5", "0 none", "0.5", "1 raises"], fontsize=7)
    bar.set_label("importance / class's max |importance|", fontsize=8)
    ax.set_title("Concept importance per class (● = important)", fontsize=10,
                 pad=22 if missing.any() else 6)
    if missing.any():  # the legend of the hatched cells, between the title and the axes
        ax.legend(handles=[Patch(facecolor="0.78", edgecolor="0.45", hatch="////",
                                 label="no region in the class's images: not measured")],
                  loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=7, frameon=False,
                  handlelength=1.6, borderaxespad=0.2)
    fig.tight_layout()
    return figure_png(fig, dpi=dpi), [int(i) for i in rows], [int(j) for j in cols]


def graph_figure(report: AtlasReport, dpi: int = 100) -> bytes:
    """Classes on a circle, linked by the concepts important to both (width = how many)."""
    important = np.asarray(report.important, dtype=bool)
    n = important.shape[0]
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + np.pi / 2
    xy = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    # wide: the class names sit outside the circle, left and right of it
    fig = Figure(figsize=(8.0, 5.2))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.92)
    ax = fig.add_subplot()
    for i in range(n):
        for j in range(i + 1, n):
            shared = np.flatnonzero(important[i] & important[j])
            if shared.size:
                ax.plot(*xy[[i, j]].T, color="#0969da", linewidth=1.5 * shared.size, alpha=0.6,
                        zorder=1)
                mid = xy[[i, j]].mean(axis=0)
                ax.text(*mid, plain(", ".join(report.concept_names[s] for s in shared)), fontsize=7,
                        ha="center", va="center", color="#0a3069",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    ax.scatter(*xy.T, s=500, color="#f6f8fa", edgecolor="#1f2328", zorder=2)
    for i in range(n):
        # outside the circle, anchored by the side it points to: the text starts beyond the
        # node (no circle or edge runs through it; the edges are chords, inside the circle)
        cos, sin = xy[i]
        ax.annotate(plain(report.class_names[i]), xy=(cos, sin), xytext=(16 * cos, 16 * sin),
                    textcoords="offset points", fontsize=8, zorder=3,
                    ha="left" if cos > 0.2 else "right" if cos < -0.2 else "center",
                    va="bottom" if sin > 0.2 else "top" if sin < -0.2 else "center")
    ax.set_xlim(-2.6, 2.6)
    ax.set_ylim(-1.4, 1.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("Classes linked by shared important concepts", fontsize=10)
    return figure_png(fig, dpi=dpi)


#: Exemplar tiles smaller than this are enlarged (nearest neighbour) to be seen at all.
MIN_TILE = 64


def exemplar_figure(images: np.ndarray, maps: np.ndarray, *, columns: int = 6,
                    gap: int = 4, pixels: bool = True) -> bytes:
    """Exemplar images with the concept's map blended in (jet colours), tiled into one PNG;
    ``pixels=False``: the maps alone (there are no images to blend them with). Tiles smaller
    than :data:`MIN_TILE` pixels are enlarged by a whole factor.

    Drawn with numpy and encoded once (no matplotlib axes): a concept page costs milliseconds.
    """
    from matplotlib import colormaps

    images = display_rgb(np.asarray(images), "exemplars")  # grey or RGBA models: shown as RGB
    m, _, height, width = images.shape
    scale = max(1, -(-MIN_TILE // max(1, min(height, width))))
    height, width = height * scale, width * scale
    columns = max(1, min(columns, m))
    rows = max(1, int(np.ceil(m / columns)))
    canvas = np.ones((rows * (height + gap) + gap, columns * (width + gap) + gap, 3))
    jet = colormaps["jet"]
    for index in range(m):
        heat = np.asarray(maps[index], dtype=np.float64)
        span = float(heat.max() - heat.min()) or 1.0
        colour = jet((heat - heat.min()) / span)[..., :3]
        colour = colour.repeat(scale, 0).repeat(scale, 1)
        image = to_hwc(images[index]).repeat(scale, 0).repeat(scale, 1)
        tile = 0.55 * image + 0.45 * colour if pixels else colour
        r, c = divmod(index, columns)
        top, left = gap + r * (height + gap), gap + c * (width + gap)
        canvas[top:top + height, left:left + width] = tile
    return png_bytes(canvas)


def _concept_link(report: AtlasReport, j: int, prefix: str) -> str:
    return f'<a href="{prefix}concepts/concept-{j}.html">{esc(report.concept_names[j])}</a>'


def _class_link(report: AtlasReport, row: int, prefix: str) -> str:
    return (f'<a href="{prefix}classes/class-{report.class_ids[row]}.html">'
            f'{esc(report.class_names[row])}</a>')


def _picture(key: str, title: str, png: bytes, filename: str, caption: str) -> Picture:
    return Picture(key=key, title=title, png=png, filename=filename, caption=caption)


def _write_png(folder: Path, picture: Picture) -> None:
    (folder / picture.filename).write_bytes(picture.png)
    record(folder / picture.filename)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    record(path)


def _index_page(report: AtlasReport, heat: Picture, graph: Picture, out: Path) -> str:
    meta = "".join(f"<b>{esc(k)}</b>: {esc(v)} &nbsp; " for k, v in report.meta.items())
    confusion_rows = []
    for item in report.confusions:
        a, b = report.class_ids.index(item["a"]), report.class_ids.index(item["b"])
        concepts = ", ".join(
            f'{_concept_link(report, c["concept"], "")} ({format_number(c["contribution"])}'
            f'{", shared" if c["shared"] else ""})' for c in item["concepts"][:3])
        confusion_rows.append([(_class_link(report, a, ""), ""), (_class_link(report, b, ""), ""),
                               (format_number(item["probability"]), "num"),
                               (f'{item["n_confused"]}/{item["n_images"]}', "num"),
                               (concepts, "")])
    concept_rows = []
    for j in range(len(report.concept_names)):
        users = [_class_link(report, r, "") for r in np.flatnonzero(report.important[:, j])]
        concept_rows.append([(_concept_link(report, j, ""), ""),
                             (", ".join(users) or '<span class="small">none</span>', "")])
    class_rows = []
    for r in range(len(report.class_names)):
        own = report.class_pages.get(report.class_ids[r])
        link = f'<a href="{esc(own)}">class report</a>' if own else ""
        # the column only where some class has a page of its own (it was always empty from
        # the command line, which writes none)
        class_rows.append([(_class_link(report, r, ""), "")]
                          + ([(link, "")] if report.class_pages else []))
    class_header = ["class", "per-class report"] if report.class_pages else ["class"]
    body = (f"<h1>{esc(report.title)}</h1><p class=\"meta\">{meta}</p>"
            + section("heatmap", "Class × concept importance", figure_block(heat))
            + section("graph", "Classes that share concepts", figure_block(graph))
            + section("confusions", "Most confused class pairs",
                      table(["images of", "drift to", "mean P(to)", "misclassified",
                             "concepts pushing (contribution to logit margin)"], confusion_rows))
            + section("concepts", "Concepts", table(["concept", "important to"], concept_rows))
            + section("classes", "Classes", table(class_header, class_rows))
            + "<footer>conceptkit atlas report</footer>")
    return document(report.title, body)


def _measured(report: AtlasReport, missing: np.ndarray, r: int, j: int) -> list[tuple[str, str]]:
    """The importance and interval cells of class row ``r`` and concept ``j``."""
    if missing[r, j]:
        return [(NO_REGION, "num"), ("—", "num")]
    return [(format_number(report.importance[r, j]), "num"),
            (f"[{format_number(report.ci_low[r, j])}, {format_number(report.ci_high[r, j])}]",
             "num")]


def _ranked(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Positions by decreasing importance, the unmeasured ones (no region) last."""
    return np.lexsort((-np.asarray(values, dtype=np.float64), missing))


def _concept_page(report: AtlasReport, j: int, picture: Picture) -> str:
    missing = no_region_mask(report)
    rows = []
    for r in _ranked(report.importance[:, j], missing[:, j]):
        rows.append([(_class_link(report, r, "../"), ""), *_measured(report, missing, r, j),
                     ("yes" if report.important[r, j] else "", "")])
    name = report.concept_names[j]
    note = NO_REGION_NOTE if missing[:, j].any() else ""
    body = (f'<nav><a href="../index.html">atlas index</a></nav><h1>Concept {esc(name)}</h1>'
            + section("exemplars", "Where it is most present (all classes)", figure_block(picture))
            + section("classes", "Which classes use it",
                      table(["class", "importance", "95% CI", "important"], rows) + note))
    return document(f"{report.title}: {name}", body)


def _class_page(report: AtlasReport, r: int) -> str:
    missing = no_region_mask(report)
    order = _ranked(report.importance[r], missing[r])
    rows = []
    for j in order:
        others = [_class_link(report, o, "../") for o in np.flatnonzero(report.important[:, j])
                  if o != r]
        rows.append([(_concept_link(report, j, "../"), ""), *_measured(report, missing, r, j),
                     ("yes" if report.important[r, j] else "", ""),
                     (", ".join(others) if report.important[r, j] else "", "")])
    own = report.class_pages.get(report.class_ids[r])
    link = f' · <a href="../{esc(own)}">per-class report</a>' if own else ""
    body = (f'<nav><a href="../index.html">atlas index</a>{link}</nav>'
            f"<h1>{esc(report.class_names[r])}</h1>"
            + section("concepts", "Its concepts in the shared dictionary",
                      table(["concept", "importance", "95% CI", "important", "shared with"], rows)
                      + (NO_REGION_NOTE if missing[r].any() else "")))
    return document(f"{report.title}: {report.class_names[r]}", body)


def write_atlas_report(report: AtlasReport, out_dir: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write the atlas report to ``out_dir``; returns the path of ``index.html``.

    The folder is the report's own: pages of concepts or classes that an earlier run into it
    wrote and this one does not (fewer concepts now) are removed."""
    with owned_folder(out_dir, "atlas report"):
        return _write_atlas_report(report, Path(out_dir), dpi)


def _write_atlas_report(report: AtlasReport, out: Path, dpi: int) -> Path:
    for folder in (out, out / "concepts", out / "classes"):
        folder.mkdir(parents=True, exist_ok=True)
    png, rows, cols = heatmap_figure(report, dpi)
    heat = _picture("heatmap", "Class × concept importance", png, "heatmap.png",
                    "Importance of each concept for each class, divided by the class's largest "
                    "absolute importance: red raises the class's score, blue lowers it (a "
                    "negative importance), white is no effect; rows and columns ordered by "
                    "hierarchical clustering"
                    + ("; hatched grey: the concept has no region in any of the class's "
                       "images, so its importance was not measured"
                       if no_region_mask(report).any() else ""))
    graph = _picture("graph", "Shared concepts", graph_figure(report, dpi), "graph.png",
                     "An edge joins two classes that share an important concept")
    for picture in (heat, graph):
        _write_png(out, picture)
    _write_text(out / "index.html", _index_page(report, heat, graph, out))
    for j in range(len(report.concept_names)):
        labels = report.exemplar_labels[j]
        captions = [report.class_names[report.class_ids.index(int(c))]
                    if int(c) in report.class_ids else f"class {int(c)}" for c in labels]
        what = ("Top images across the dataset with the concept's map, left to right: "
                if report.exemplar_pixels else
                "The concept's map (feature-map cells; the atlas was fitted on stored "
                "activations, which hold no pixels to show) on the top images across the "
                "dataset, left to right: ")
        picture = _picture(f"concept-{j}", report.concept_names[j],
                           exemplar_figure(report.exemplars[j], report.exemplar_maps[j],
                                           pixels=report.exemplar_pixels),
                           f"concept-{j}.png", what + ", ".join(captions))
        _write_png(out / "concepts", picture)
        _write_text(out / "concepts" / f"concept-{j}.html", _concept_page(report, j, picture))
    for r in range(len(report.class_ids)):
        _write_text(out / "classes" / f"class-{report.class_ids[r]}.html", _class_page(report, r))
    unmeasured = no_region_mask(report)

    def measured(values: Any) -> list:
        # an importance (or bound) that was not measured is null, not the 0 it is held as;
        # a bound that does not exist (NaN) is null too
        values = np.array(values, dtype=float)
        values[unmeasured] = np.nan
        return values.tolist()  # _plain writes NaN as null

    payload = {"title": report.title, "classes": report.class_ids,
               "class_names": report.class_names, "concept_names": report.concept_names,
               "importance": measured(report.importance),
               "ci_low": measured(report.ci_low), "ci_high": measured(report.ci_high),
               "important": np.asarray(report.important).tolist(),
               # per class: the concepts with no region in its images, whose importance is
               # null above (not measured)
               "no_region": [np.flatnonzero(row).tolist() for row in unmeasured],
               "row_order": rows,
               "column_order": cols, "confusions": report.confusions, "meta": report.meta}
    _write_text(out / "atlas.json", json.dumps(_plain(payload), indent=1))
    return out / "index.html"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value
