"""One class's page: figures, ``index.html`` (self-contained), PNG files and ``report.json``."""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._deprecation import renamed_arguments
from .._validation import check_choice, check_float, check_int, describe
from .._version import __version__
from ..io import json_ready, write_json
from ._colors import concept_colors, concept_hex_colors
from ._data import ClassReport
from ._figures import (
    DEFAULT_DPI,
    figure_png,
    plot_concept_overlays,
    plot_exemplar_grid,
    plot_importances,
)
from ._heatmaps import plot_concept_heatmaps
from ._html import (
    Picture,
    direction,
    document,
    esc,
    figure_block,
    format_number,
    section,
    swatch,
    table,
)
from ._images import OVERLAY_MODES
from ._outputs import owned_folder, record
from ._structure import (
    COOCCURRENCE_MEASURES,
    EMBEDDINGS,
    concept_cooccurrence,
    plot_cooccurrence,
    plot_strategic_clusters,
    strategic_embedding,
)

REPORT_KIND = "conceptkit.class_report"
FORMAT_VERSION = 1


def _named(class_id: int, class_name: str) -> bool:
    """Whether ``class_name`` says more than the id (``"class 2"`` for class 2 does not)."""
    return class_name.strip().lower() not in ("", f"class {class_id}")


def class_slug(class_id: int, class_name: str) -> str:
    """Folder name of a class page: ``class-<id>-<name in lowercase ASCII with dashes>``
    (``class-<id>`` when the class has no name of its own)."""
    if not _named(class_id, class_name):
        return f"class-{class_id}"
    name = re.sub(r"[^a-z0-9]+", "-", class_name.lower()).strip("-")[:40].strip("-")
    return f"class-{class_id}" + (f"-{name}" if name else "")


def class_title(class_id: int, class_name: str) -> str:
    """``Class 967 · espresso``, or ``Class 2`` for a class without a name of its own."""
    return f"Class {class_id} · {class_name}" if _named(class_id, class_name) else f"Class {class_id}"


#: What a class-level importance is, by importance method (one sentence each, from the methods'
#: docstrings: ``pipeline._pixel`` and ``importance.concept_importance``); ``{score}`` is the
#: class score read ("the class probability P(class)" or "the class logit").
IMPORTANCE_MEANINGS = {
    "pixel_ablation": ("the mean drop of {score} when the concept's region of an image (where its "
                       "map is high, grown to superpixels) is painted with the image's median "
                       "colour, averaged over a few region sizes"),
    "sobol": ("the total Sobol index: the share of the variance of {score}, interactions "
              "included, that the concept accounts for when the concepts are masked at random "
              "(0 to 1; estimated, so it can overshoot 1 a little)"),
    "sobol_first": ("the first-order Sobol index: the share of the variance of {score} that the "
                    "concept accounts for alone when the concepts are masked at random (0 to 1)"),
    "closed_form": ("the exact total Sobol index of a head that is affine in the activations: the "
                    "concept's squared effect on {score} over the sum of all concepts' (0 to 1)"),
    "gradient_input": ("the concept's code times the gradient of {score} with respect to it, "
                       "summed over positions"),
    "integrated_gradients": ("the integrated gradients of {score} from the all-zero code to the "
                             "concept's code (the concepts' values add up to the score's change)"),
    "occlusion": ("the drop of {score} when the concept's code is set to 0 at every position of "
                  "the reconstructed activations"),
    "ablation": ("the mean drop of {score} when the concept's contribution is removed from every "
                 "position of the real activations"),
    "rise": ("RISE: how much higher {score} is, on average, under random masks that keep the "
             "concept than under masks that drop it"),
}

#: The class score each method reads when its settings do not say.
_DEFAULT_SCORES = {"pixel_ablation": "probability", "ablation": "probability"}

#: One line on each metric the report computes (from ``concepts.metrics``,
#: ``importance.metrics`` and docs/evaluation.md).
METRIC_DEFINITIONS = {
    "relative_l2": "mean over the fitted rows of ||a − â|| / ||a||: the reconstruction error of "
                   "the activations by the concepts (0 is exact)",
    "sparsity_l0": "the fraction of the concept codes that are not zero",
    "hoyer": "mean Hoyer sparsity of the code rows, 0 (every concept equally active) to 1 (one "
             "concept per row)",
    "frechet_distance": "Fréchet distance between Gaussians fitted to the activations and to "
                        "their reconstructions (as in FID; 0 is identical)",
    "dead_codes": "the fraction of concepts whose code is 0 on every fitted row",
    "stability": "mean cosine between the concepts of refits on random subsets of the rows, "
                 "matched one to one (1 = the same concepts every time)",
    "seed_stability": "mean cosine between the concepts of refits with other seeds, matched one "
                      "to one (1 = the same concepts whatever the seed)",
    "c_deletion": "remove the concepts from most to least important: the mean class logit over "
                  "the removals (area under the curve); a faithful ranking makes it fall fast",
    "c_insertion": "insert the concepts from most to least important into an empty code: the "
                   "mean class logit over the insertions; a faithful ranking makes it rise fast",
    "c_mu_fidelity": "Spearman correlation between the summed importances of random concept "
                     "subsets and the class logit's drop when they are removed, mean over images",
}


def importance_meaning(method: str, params: dict | None = None) -> str:
    """What a class-level importance of ``method`` is, as a phrase ("the mean drop of ...";
    "" for a method the report does not know); ``params`` (the importance's settings) picks
    the class score read and the Sobol order."""
    params = params or {}
    key = "sobol_first" if method == "sobol" and params.get("order") == "first" else method
    if key not in IMPORTANCE_MEANINGS:
        return ""
    score = params.get("score") or _DEFAULT_SCORES.get(method, "logit")
    shown = ("the class probability P(class)" if score == "probability"
             else "the class logit")
    return IMPORTANCE_MEANINGS[key].format(score=shown)


def _sentence(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:] + "." if phrase else ""


def interval_words(report: ClassReport) -> str:
    """How the confidence intervals were made ("" when the report has none)."""
    if all(math.isnan(c.ci_low) and math.isnan(c.ci_high) for c in report.concepts):
        return ""
    level = report.importance_params.get("confidence")
    n = int(report.per_image_importance.shape[0])
    level_words = f"{format_number(100 * float(level))} % " if level is not None else ""
    return (f"the {level_words}confidence interval of the mean over the {n} images "
            f"(Student-t, from the per-image importances)")


def _options(dpi: Any, embedding: Any, cooccurrence: Any, quantile: Any, n_top_concepts: Any,
             percentile: Any, overlay_mode: Any, seed: Any) -> dict[str, Any]:
    percentile = check_float(percentile, "percentile", minimum=0.0)
    if percentile >= 100:
        raise ValueError(f"`percentile` must be below 100; got {percentile}.")
    return {
        "dpi": check_int(dpi, "dpi", minimum=10),
        "embedding": check_choice(embedding, "embedding", EMBEDDINGS),
        "cooccurrence": check_choice(cooccurrence, "cooccurrence", COOCCURRENCE_MEASURES),
        "quantile": check_float(quantile, "quantile", minimum=0.0, maximum=1.0),
        "n_top_concepts": check_int(n_top_concepts, "n_top_concepts", minimum=1),
        "percentile": percentile,
        "overlay_mode": check_choice(overlay_mode, "overlay_mode", OVERLAY_MODES),
        "seed": check_int(seed, "seed", minimum=0),
    }


def _render(report: ClassReport, opts: dict[str, Any]) -> tuple[list[Picture], dict[str, Any]]:
    labels, dpi = report.labels, opts["dpi"]
    k = report.n_concepts
    m = min(opts["n_top_concepts"], k)
    # The embedding (t-SNE: ~0.6 s for 500 images, mostly outside the GIL) runs in a worker
    # thread while the other figures are drawn; the result does not depend on it.
    with ThreadPoolExecutor(max_workers=1) as pool:
        embedding = pool.submit(strategic_embedding, report.per_image_importance,
                                opts["embedding"], opts["seed"])
        pictures, matrix = _render_figures(report, opts)
        coords, used = embedding.result()
    n_all = report.per_image_importance.shape[0]
    method = "t-SNE" if used == "tsne" else "PCA"
    pictures.insert(4, Picture(
        "clusters", "Strategic cluster graph", figure_png(plot_strategic_clusters(
            report.per_image_importance, labels, coords=coords, method=used), dpi),
        "clusters.png",
        f"Each of the {n_all} images placed by a {method} embedding of its per-concept "
        f"importances and coloured by its most important concept."))
    # The report's arrays are in importance order; report.json speaks of concepts by their
    # index (the `index` of `concepts`, which indexes result.importances), as the page does.
    winners = report.per_image_importance.argmax(axis=1)  # positions in importance order
    index = [c.index for c in report.concepts]
    axis = _index_axis(index)  # the concept of each row / column of counts and matrix
    position = {concept: rank for rank, concept in enumerate(index)}
    rows = [position[concept] for concept in axis] if len(position) == k else list(range(k))
    counts = np.bincount(winners, minlength=k)[rows]
    structure = {
        "strategic_clusters": {"method": used, "seed": opts["seed"], "coords": coords,
                               "top_concept": [index[int(w)] for w in winners],
                               "concepts": axis, "counts": counts},
        "cooccurrence": {"measure": opts["cooccurrence"], "quantile": opts["quantile"],
                         "concepts": axis, "matrix": np.asarray(matrix)[np.ix_(rows, rows)]},
        "overlays": {"n_top_concepts": m, "percentile": opts["percentile"],
                     "mode": opts["overlay_mode"]},
    }
    return pictures, structure


def _index_axis(index: list[int]) -> list[int]:
    """The concept indices in increasing order (each row / column of report.json's counts and
    matrices is one concept, ``concepts[j]`` says which); report order when two concepts share
    an index (a hand-made report), so that no row is lost."""
    return sorted(index) if len(set(index)) == len(index) else list(index)


def _render_figures(report: ClassReport, opts: dict[str, Any]) -> tuple[list[Picture], Any]:
    """Every figure but the strategic cluster graph, and the co-occurrence matrix."""
    labels, dpi = report.labels, opts["dpi"]
    m = min(opts["n_top_concepts"], report.n_concepts)
    matrix = concept_cooccurrence(report.codes, opts["cooccurrence"], opts["quantile"])
    # every exemplar the report holds (the count its labels and table give), not the grid's 8
    shown = max(1, max((len(c.exemplars) for c in report.concepts), default=0))
    presence = ("Pearson correlation between concept codes" if opts["cooccurrence"] == "correlation"
                else f"Jaccard index of top-{1 - opts['quantile']:.0%} presence")
    pictures = [
        Picture("importance", "Concept importance", figure_png(plot_importances(
            report.importances, labels, [c.ci_low for c in report.concepts],
            [c.ci_high for c in report.concepts]), dpi), "importance.png",
            _importance_caption(report)),
        Picture("exemplars", "Concept exemplars", figure_png(plot_exemplar_grid(
            [c.exemplars for c in report.concepts], labels, report.importances,
            n_exemplars=shown), dpi),
            "exemplars.png", f"Top {shown} exemplars of each concept (rows in importance order)."),
        Picture("overlays", "Concept attribution maps", figure_png(plot_concept_overlays(
            report.images, report.maps, labels, image_ids=report.image_ids, n_top_concepts=m,
            percentile=opts["percentile"], mode=opts["overlay_mode"]), dpi), "overlays.png",
            f"Where the top {m} concepts sit in {report.images.shape[0]} class images"
            f"{_kind_words(report.maps_kind, report.maps_read)}: each map is "
            f"zeroed below its {format_number(opts['percentile'])}th percentile and painted in its "
            f"concept's colour."),
        Picture("heatmaps", "Where each concept sits", figure_png(plot_concept_heatmaps(
            report.images, report.maps, labels, image_ids=report.image_ids, n_top_concepts=m,
            percentile=opts["percentile"]), dpi), "heatmaps.png",
            f"One row per concept (the top {m}), one column per image: the concept's map in its "
            f"colour, scaled by the concept's maximum over these {report.images.shape[0]} images, "
            f"with a contour around the values above its {format_number(opts['percentile'])}th "
            f"percentile."),
        Picture("cooccurrence", "Concept co-occurrence", figure_png(plot_cooccurrence(
            report.codes, labels, measure=opts["cooccurrence"], quantile=opts["quantile"]), dpi),
            "cooccurrence.png",
            f"{presence} over {report.codes.shape[0]} fitted rows; grey cells are undefined."),
    ]
    if any(c.visualization is not None for c in report.concepts):
        # only the visualised concepts, each in the colour it has in every other figure
        keep = [i for i, c in enumerate(report.concepts) if c.visualization is not None]
        palette = concept_colors(len(report.concepts))
        pictures.append(Picture(
            "visualizations", "Concept visualisations", figure_png(plot_exemplar_grid(
                [report.concepts[i].visualization for i in keep], [labels[i] for i in keep],
                np.asarray(report.importances)[keep], [palette[i] for i in keep],
                n_exemplars=2, max_side=192), dpi),
            "visualizations.png",
            "Feature visualisation (MACO) of each visualised concept: an image optimised to raise "
            "the concept's coefficient, then the same image faded where its transparency map (the "
            "accumulated gradient) is low."))
    return pictures, matrix


def _importance_caption(report: ClassReport) -> str:
    meaning = importance_meaning(report.importance_method, report.importance_params)
    interval = interval_words(report)
    return (f"Class-level {report.importance_method} importance of each concept"
            + (f": {meaning}" if meaning else "")
            + (f". Error bars span {interval}." if interval else "."))


def _ci_level(report: ClassReport) -> float | None:
    """The level of the report's intervals (None when it has none or does not know it)."""
    level = report.importance_params.get("confidence")
    return float(level) if level is not None and interval_words(report) else None


def _payload(report: ClassReport, pictures: list[Picture], structure: dict[str, Any],
             colors: list[str]) -> dict[str, Any]:
    concepts = [{"rank": rank + 1, "index": c.index, "label": c.label, "color": colors[rank],
                 "importance": c.importance, "ci_low": c.ci_low, "ci_high": c.ci_high,
                 "exemplar_sources": c.exemplar_sources, "extra": c.extra,
                 "visualized": c.visualization is not None}
                for rank, c in enumerate(report.concepts)]
    return {
        "kind": REPORT_KIND, "format_version": FORMAT_VERSION,
        "class_id": report.class_id, "class_name": report.class_name, "method": report.method,
        "importance_method": report.importance_method, "layer": report.layer,
        "model_name": report.model_name, "maps_kind": report.maps_kind or None,
        "maps_read": report.maps_read or None,
        "conceptkit_version": __version__, "seed": report.seed,
        "importance_meaning": _sentence(importance_meaning(report.importance_method,
                                                           report.importance_params)) or None,
        "ci_level": _ci_level(report), "ci_kind": "student_t_over_images" if _ci_level(report)
        is not None else None,
        "n_concepts": report.n_concepts,
        "n_images": int(report.per_image_importance.shape[0]),
        "n_code_rows": int(report.codes.shape[0]),
        "shown_image_ids": report.image_ids, "concepts": concepts, "metrics": report.metrics,
        "metric_definitions": {name: METRIC_DEFINITIONS[name] for entries in report.metrics.values()
                               for name in entries if name in METRIC_DEFINITIONS},
        "notes": report.notes, "timings": report.timings,
        "timings_total": float(sum(report.timings.values())),
        **structure,
        "figures": {p.key: p.filename for p in pictures},
    }


#: How each map kind is described in the maps' caption.
MAP_KIND_WORDS = {
    "pixel": "pixel maps: how much painting each pixel out lowers the concept",
    "coefficient": "coefficient maps: the concept's code at each position of the layer",
    "dominant": ("dominant-concept maps: the concept's code at each position of the layer "
                 "where, relative to each concept's scale, it is the strongest concept"),
    "gradient": "gradient maps: Grad-CAM of the concept's code",
    "provenance": "provenance maps: the codes of the fitted crops or segments painted back",
    "scale_matched": "scale-matched maps: codes of the image enlarged to the crops' scale",
}


#: How map kinds read when each position holds the CLS token of the window around it.
CLS_MAP_KIND_WORDS = {
    "coefficient": ("coefficient maps: the concept's code in the CLS token of the image shown "
                    "only in a window around each position"),
    "dominant": ("dominant-concept maps: the concept's code in the CLS token of the window "
                 "around each position where, relative to each concept's scale, it is the "
                 "strongest concept"),
}


def _kind_words(kind: str, read: str = "") -> str:
    if not kind:
        return ""
    words = CLS_MAP_KIND_WORDS.get(kind) if read == "cls" else None
    return f" ({words or MAP_KIND_WORDS.get(kind, f'{kind} maps')})"


def _extra_text(extra: dict) -> str:
    parts = []
    for key, value in extra.items():
        if isinstance(value, (int, float, np.integer, np.floating)) or value is None:
            shown = format_number(value)
        elif isinstance(value, str):
            shown = value
        else:
            import json

            shown = json.dumps(json_ready(value), ensure_ascii=False)
        parts.append(f"{esc(key)}: {esc(shown)}")
    return "<br>".join(parts)


def _page(report: ClassReport, pictures: list[Picture], colors: list[str],
          index_link: str | None) -> str:
    title = class_title(report.class_id, report.class_name)
    meta = (f'<p class="meta">model <b>{esc(report.model_name)}</b> · layer '
            f'<b><code>{esc(report.layer)}</code></b> · concepts <b>{esc(report.method)}</b> · '
            f'importance <b>{esc(report.importance_method)}</b> · '
            f'<b>{report.per_image_importance.shape[0]}</b> images · '
            f'<b>{report.n_concepts}</b> concepts</p>')
    links = [f'<a href="{esc(index_link)}">← all classes</a>'] if index_link else []
    links += [f'<a href="#{p.key}">{esc(p.title)}</a>' for p in pictures]
    links += ['<a href="#metrics">Metrics</a>', '<a href="report.json">report.json</a>']
    header = f"<header>\n<h1>{esc(title)}</h1>\n{meta}\n<nav>{''.join(links)}</nav>\n</header>"
    rows = [[(str(rank + 1), "num"), (swatch(colors[rank]) + esc(c.label), "label" if len(c.label) <= 24 else ""),
             (str(c.index), "num"), (format_number(c.importance), "num"),
             (format_number(c.ci_low), "num"), (format_number(c.ci_high), "num"),
             (esc(", ".join(str(s) for s in c.exemplar_sources)), "small"),
             (_extra_text(c.extra), "")]
            for rank, c in enumerate(report.concepts)]
    headers = ["rank", "concept", "bank index", "importance", "CI low", "CI high",
               "exemplar source images", "details"]
    if not any(c.extra for c in report.concepts):
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    if all(c.label == f"concept {c.index}" for c in report.concepts):
        # The label already is the bank index: one name per concept, not two numbers.
        headers = headers[:2] + headers[3:]
        rows = [row[:2] + row[3:] for row in rows]
    concepts = table(headers, rows, "concepts") + _reading(report)
    parts = [header, section("concepts", "Concepts", concepts)]
    parts += [section(p.key, p.title, figure_block(p)) for p in pictures]
    metric_rows = [[(esc(group), "label"), (esc(name), "label"), _metric_value(entry),
                    (direction(entry["higher_is_better"]), "dir"),
                    (esc(METRIC_DEFINITIONS.get(name, "")), "small")]
                   for group, entries in report.metrics.items() for name, entry in entries.items()]
    parts.append(section("metrics", "Metrics", table(["group", "metric", "value", "direction",
                                                      "what it measures"], metric_rows, "metrics")
                         if metric_rows else '<p class="small">No metrics were given.</p>'))
    if report.notes:
        items = "".join(f"<li>{esc(line)}</li>" for line in report.notes)
        parts.append(section("notes", "Notes", f'<ul class="notes">{items}</ul>'))
    if report.timings:
        timing_rows = [[(esc(stage), ""), (format_number(seconds), "num")]
                       for stage, seconds in report.timings.items()]
        timing_rows.append([("<b>total</b>", ""),
                            (format_number(float(sum(report.timings.values()))), "num")])
        parts.append(section("timings", "Timings", table(["stage", "seconds"], timing_rows,
                                                         "timings")))
    files = ", ".join(f'<a href="{esc(p.filename)}">{esc(p.filename)}</a>' for p in pictures)
    seed = "" if report.seed is None else f" Explanation seed {report.seed}."
    parts.append(f'<footer>Written by conceptkit {esc(__version__)}.{seed} Numbers: <a href="report.json">report.json</a>'
                 f'; figures: {files}.</footer>')
    return document(title, "\n".join(parts))


def _reading(report: ClassReport) -> str:
    """How to read the concepts table, under it: what the importance is, what the interval is,
    where the exemplars come from."""
    lines = []
    meaning = importance_meaning(report.importance_method, report.importance_params)
    if meaning:
        lines.append(f"<b>Importance</b> ({esc(report.importance_method)}): {esc(meaning)}.")
    interval = interval_words(report)
    if interval:
        lines.append(f"<b>CI low, CI high</b>: {esc(interval)}.")
    if any(c.exemplar_sources for c in report.concepts):
        lines.append("<b>Exemplar source images</b>: the image each exemplar of the concept was "
                     "cut from, in the exemplars' order; an image that gives several exemplars is "
                     "listed once for each.")
    return f'<p class="small">{"<br>".join(lines)}</p>' if lines else ""


def _metric_value(entry: dict) -> tuple[str, str]:
    """A metric's value cell; a metric without a value says why when its entry has a
    ``"reason"`` (e.g. "not applicable: ... needs at least 2 concepts")."""
    reason = entry.get("reason")
    if reason and (entry["value"] is None or math.isnan(entry["value"])):
        return f'— <span class="small">({esc(reason)})</span>', ""
    return format_number(entry["value"]), "num"


@renamed_arguments(n_overlay_concepts="n_top_concepts")
def write_class_report(report: ClassReport, out_dir: str | os.PathLike, *,
                       dpi: int = DEFAULT_DPI, embedding: str = "auto",
                       cooccurrence: str = "correlation", quantile: float = 0.9,
                       n_top_concepts: int = 5, percentile: float = 90.0,
                       overlay_mode: str = "alpha", seed: int = 0,
                       index_link: str | None = None) -> Path:
    """Write one class's report into ``out_dir/<slug>/`` and return the page path.

    The folder receives ``index.html`` (self-contained: figures embedded as PNG data URIs),
    the same figures as PNG files, and ``report.json`` with every number the page shows.

    Parameters
    ----------
    report : ClassReport
        What to show.
    out_dir : path
        Parent folder; the page goes to ``out_dir/class-<id>-<name>/index.html``.
    dpi : int
        Resolution of the figures.
    embedding : {"auto", "pca", "tsne"}
        Strategic cluster graph embedding (see :func:`strategic_embedding`).
    cooccurrence : {"correlation", "jaccard"}
        Co-occurrence measure; ``quantile`` sets the Jaccard presence threshold.
    n_top_concepts, percentile, overlay_mode
        Concept overlays and heatmaps: how many concepts to show (the most important first;
        ``n_overlay_concepts`` before, deprecated), per-concept threshold, ``"alpha"`` or
        ``"argmax"``.
    seed : int
        Seed of the t-SNE embedding.
    index_link : str, optional
        Link back to an index page, relative to the class page (e.g. ``"../index.html"``).
    """
    if not isinstance(report, ClassReport):
        raise TypeError(f"`report` must be a ClassReport; got {describe(report)}.")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"`out_dir` must be a path; got {describe(out_dir)}.")
    if index_link is not None and not isinstance(index_link, str):
        raise TypeError(f"`index_link` must be a str or None; got {describe(index_link)}.")
    opts = _options(dpi, embedding, cooccurrence, quantile, n_top_concepts, percentile,
                    overlay_mode, seed)
    folder = Path(out_dir) / class_slug(report.class_id, report.class_name)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"`out_dir` holds a file {str(folder)!r} where the class folder "
                                 f"should go.")
    pictures, structure = _render(report, opts)
    colors = concept_hex_colors(report.n_concepts)
    # the folder is this class page's own: a figure of an earlier run that this one does not
    # draw (visualizations.png from a run with MACO pictures) is removed, not left beside it
    with owned_folder(folder, "class page"):
        for picture in pictures:
            (folder / picture.filename).write_bytes(picture.png)
            record(folder / picture.filename)
        write_json(folder / "report.json", _payload(report, pictures, structure, colors))
        record(folder / "report.json")
        page = folder / "index.html"
        page.write_text(_page(report, pictures, colors, index_link), encoding="utf-8")
        record(page)
    return page
