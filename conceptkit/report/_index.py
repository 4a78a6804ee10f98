"""The index page linking every class page, and writing a whole multi-class report."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._deprecation import renamed_arguments
from .._validation import check_int, describe
from ..io import write_json
from ._colors import concept_hex_colors
from ._data import ClassReport, IndexEntry
from ._html import Picture, data_uri, document, esc, format_number, png_size, section, table
from ._images import concept_overlay, png_bytes, shrink
from ._outputs import owned_folder, record
from ._write import FORMAT_VERSION, class_slug, write_class_report

INDEX_KIND = "conceptkit.report_index"
THUMBNAIL_SIDE = 160


@renamed_arguments(n_top="n_top_concepts", thumbnail_concepts="n_thumbnail_concepts")
def index_entry(report: ClassReport, page: str | os.PathLike,
                out_dir: str | os.PathLike | None = None, *, n_top_concepts: int = 3,
                n_thumbnail_concepts: int = 3) -> IndexEntry:
    """The index row of ``report``, whose page was written to ``page``.

    ``page`` is stored relative to ``out_dir`` (the index's folder; default: the parent of the
    class folder). The row lists the ``n_top_concepts`` most important concepts; the thumbnail is
    the first shown image with its top ``n_thumbnail_concepts`` concepts painted on (CRAFT
    overlay), at most 160 pixels a side.
    """
    if not isinstance(report, ClassReport):
        raise TypeError(f"`report` must be a ClassReport; got {describe(report)}.")
    if not isinstance(page, (str, os.PathLike)):
        raise TypeError(f"`page` must be a path; got {describe(page)}.")
    n_top = check_int(n_top_concepts, "n_top_concepts", minimum=1)
    thumbnail_concepts = check_int(n_thumbnail_concepts, "n_thumbnail_concepts", minimum=1)
    page = Path(page)
    base = Path(out_dir) if out_dir is not None else page.parent.parent
    link = Path(os.path.relpath(page.resolve(), base.resolve())).as_posix()
    image = shrink(report.images[:1], THUMBNAIL_SIDE)
    painted = concept_overlay(image, report.maps[:1], n_top_concepts=thumbnail_concepts,
                              outline=True)[0]
    return IndexEntry(class_id=report.class_id, class_name=report.class_name,
                      method=report.method, n_images=int(report.per_image_importance.shape[0]),
                      top_concepts=[(c.label, c.importance) for c in report.concepts[:n_top]],
                      page=link, thumbnail=painted.transpose(2, 0, 1))


def _thumbnail(entry: IndexEntry, number: int) -> Picture | None:
    if entry.thumbnail is None:
        return None
    png = png_bytes(entry.thumbnail.transpose(1, 2, 0))
    name = f"thumbnails/{number:03d}-{class_slug(entry.class_id, entry.class_name)}.png"
    return Picture(f"thumb-{number}", f"class {entry.class_id}", png, name, "")


def _notes_cell(entry: IndexEntry, notes: list[str]) -> str:
    """How many notes the class page has, linked to them, with the notes themselves folded."""
    if not notes:
        return '<span class="small">none</span>'
    items = "".join(f"<li>{esc(line)}</li>" for line in notes)
    count = f"{len(notes)} note{'s' if len(notes) != 1 else ''}"
    return (f'<details><summary><a href="{esc(entry.page)}#notes">{count}</a></summary>'
            f'<ul class="notes">{items}</ul></details>')


def _check_notes(notes: Any, n: int) -> list[list[str]]:
    """``notes``: one list of str per entry (the class page's notes), or None for none."""
    if notes is None:
        return [[] for _ in range(n)]
    if isinstance(notes, (str, bytes)) or not isinstance(notes, Sequence) or len(notes) != n:
        raise TypeError(f"`notes` must be one list of str per entry ({n}); got "
                        f"{describe(notes)}.")
    out = []
    for i, lines in enumerate(notes):
        if isinstance(lines, (str, bytes)) or not isinstance(lines, Sequence) \
                or not all(isinstance(line, str) for line in lines):
            raise TypeError(f"`notes[{i}]` must be a list of str; got {describe(lines)}.")
        out.append(list(lines))
    return out


def _row(entry: IndexEntry, thumb: Picture | None, notes: list[str]) -> list[tuple[str, str]]:
    link = esc(entry.page)
    if thumb is not None:
        width, height = png_size(thumb.png)
        picture = (f'<a href="{link}"><img class="thumb" src="{data_uri(thumb.png)}" '
                   f'width="{width}" height="{height}" alt="{esc(entry.class_name)}" '
                   f'data-file="{esc(thumb.filename)}"></a>')
    else:
        picture = '<span class="small">—</span>'
    colors = concept_hex_colors(len(entry.top_concepts))
    tops = "".join(f'<li><span class="swatch" style="background:{colors[i]}"></span>'
                   f"{esc(label)}: {format_number(value)}</li>"
                   for i, (label, value) in enumerate(entry.top_concepts))
    return [(picture, ""), (str(entry.class_id), "num"),
            (f'<a href="{link}">{esc(entry.class_name)}</a>', ""), (esc(entry.method), ""),
            (str(entry.n_images), "num"), (f'<ul class="tops">{tops}</ul>', ""),
            (_notes_cell(entry, notes), "small")]


def write_index(entries: Sequence[IndexEntry], out_dir: str | os.PathLike, *,
                title: str = "conceptkit report",
                notes: Sequence[Sequence[str]] | None = None) -> Path:
    """Write ``out_dir/index.html`` (summary table linking every class page) and ``index.json``.

    Thumbnails are embedded as PNG data URIs and also written to ``out_dir/thumbnails/``.
    ``notes`` (one list per entry, e.g. each ``ClassReport.notes``) are shown in each class's
    row (their count, linked to the class page's notes, and the notes folded) and written to
    ``index.json``. Returns the path of ``index.html``.
    """
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence) or not entries:
        raise TypeError(f"`entries` must be a non-empty list of IndexEntry; got {describe(entries)}.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, IndexEntry):
            hint = " (make one with index_entry(report, page))" if isinstance(entry, ClassReport) else ""
            raise TypeError(f"`entries[{i}]` must be an IndexEntry{hint}; got {describe(entry)}.")
    if not isinstance(title, str):
        raise TypeError(f"`title` must be a str; got {describe(title)}.")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"`out_dir` must be a path; got {describe(out_dir)}.")
    notes = _check_notes(notes, len(entries))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbs = [_thumbnail(entry, i) for i, entry in enumerate(entries)]
    if any(thumbs):
        (out_dir / "thumbnails").mkdir(exist_ok=True)
    for thumb in thumbs:
        if thumb is not None:
            (out_dir / thumb.filename).write_bytes(thumb.png)
            record(out_dir / thumb.filename)
    rows = [_row(entry, thumb, lines) for entry, thumb, lines in zip(entries, thumbs, notes)]
    total = sum(entry.n_images for entry in entries)
    body = "\n".join([
        f"<header>\n<h1>{esc(title)}</h1>\n<p class=\"meta\"><b>{len(entries)}</b> classes · "
        f"<b>{total}</b> images · <a href=\"index.json\">index.json</a></p>\n</header>",
        section("classes", "Classes", table(["", "class id", "class", "method", "images",
                                             "top concepts (importance)", "notes"], rows,
                                            "index")),
        "<footer>Written by conceptkit. Each class page has its own report.json.</footer>",
    ])
    page = out_dir / "index.html"
    page.write_text(document(title, body), encoding="utf-8")
    record(page)
    record(out_dir / "index.json")
    write_json(out_dir / "index.json", {
        "kind": INDEX_KIND, "format_version": FORMAT_VERSION, "title": title,
        "n_classes": len(entries), "n_images": total,
        "classes": [{"class_id": e.class_id, "class_name": e.class_name, "method": e.method,
                     "n_images": e.n_images, "page": e.page,
                     "thumbnail": t.filename if t is not None else None,
                     "top_concepts": [{"label": label, "importance": value}
                                      for label, value in e.top_concepts],
                     "notes": lines}
                    for e, t, lines in zip(entries, thumbs, notes)],
    })
    return page


def write_reports(reports: Sequence[ClassReport], out_dir: str | os.PathLike, *,
                  title: str = "conceptkit report", progress: bool = False,
                  **options: Any) -> Path:
    """Write every class page (linked back to the index) and the index; return the index path.

    ``options`` go to :func:`write_class_report` (``dpi``, ``embedding``, ...).
    """
    if isinstance(reports, ClassReport) or not isinstance(reports, Sequence) or not reports:
        raise TypeError(f"`reports` must be a non-empty list of ClassReport; got {describe(reports)}.")
    for i, report in enumerate(reports):
        if not isinstance(report, ClassReport):
            raise TypeError(f"`reports[{i}]` must be a ClassReport; got {describe(report)}.")
    slugs = [class_slug(r.class_id, r.class_name) for r in reports]
    if len(set(slugs)) != len(slugs):
        twice = sorted({s for s in slugs if slugs.count(s) > 1})
        raise ValueError(f"`reports` holds several reports for the same class folder: {twice}.")
    entries = []
    # the index and its class folders are one run's: class folders of an earlier run into the
    # same folder that this one does not write are removed (the index would not list them)
    with owned_folder(out_dir, "class index"):
        for report in tqdm(reports, disable=not progress, desc="report"):
            page = write_class_report(report, out_dir, index_link="../index.html", **options)
            entries.append(index_entry(report, page, out_dir))
        return write_index(entries, out_dir, title=title,
                           notes=[report.notes for report in reports])
