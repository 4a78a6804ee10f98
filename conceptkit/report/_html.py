"""The one HTML writer: self-contained pages with inline CSS and figures embedded as PNG.

The class pages, the index and :func:`write_page` (any other page: the CBM report) are built from
these parts. Every text that comes from data is escaped; every number goes through
:func:`format_number`, so that what a page shows can be checked against its JSON file.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.meta { color: var(--muted); margin: 0 0 8px; }
.meta b { color: var(--ink); font-weight: 600; }
nav { font-size: 14px; margin: 8px 0 0; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.dir { text-align: center; white-space: nowrap; }
td.label { white-space: nowrap; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
          border: 1px solid rgba(0,0,0,.35); margin-right: 6px; vertical-align: -1px; }
.small { font-size: 12px; color: var(--muted); }
figure { margin: 8px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
ul.notes li { margin: 3px 0; }
ul.tops { margin: 0; padding-left: 0; list-style: none; }
img.thumb { width: 128px; height: auto; border: 1px solid var(--line); border-radius: 3px; }
footer { margin-top: 36px; font-size: 12px; color: var(--muted); }
h1, h2, .meta, nav, td, figcaption, li, p { overflow-wrap: anywhere; }
"""


def format_number(value: Any) -> str:
    """How every number is shown: 4 significant digits; missing values as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "—"
    return f"{value:.4g}"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` read from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG stream")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Picture:
    """A rendered figure: its PNG bytes, the file it is also written to, and its caption."""

    key: str
    title: str
    png: bytes
    filename: str
    caption: str


def figure_block(picture: Picture, css_class: str = "") -> str:
    width, height = png_size(picture.png)
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<figure><img{cls} src="{data_uri(picture.png)}" width="{width}" height="{height}" '
            f'alt="{esc(picture.title)}" data-file="{esc(picture.filename)}">'
            f'<figcaption>{esc(picture.caption)} '
            f'(<a href="{esc(picture.filename)}">{esc(picture.filename)}</a>)</figcaption></figure>')


def table(headers: list[str], rows: list[list[tuple[str, str]]], css_class: str = "") -> str:
    """A table; each cell is ``(html, kind)`` with kind ``"num"``, ``"dir"`` or ``""``."""
    cls = f' class="{css_class}"' if css_class else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="{kind}">{content}</td>' if kind else f"<td>{content}</td>"
                        for content, kind in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def swatch(color_hex: str) -> str:
    return f'<span class="swatch" style="background:{esc(color_hex)}"></span>'


def direction(higher_is_better: bool | None) -> str:
    if higher_is_better is None:
        return ""
    if higher_is_better:
        return '<span title="higher is better">↑ higher is better</span>'
    return '<span title="lower is better">↓ lower is better</span>'


def document(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"{body}\n</main>\n</body>\n</html>\n")


def section(anchor: str, heading: str, content: str) -> str:
    return f'<section id="{esc(anchor)}">\n<h2>{esc(heading)}</h2>\n{content}\n</section>'


@dataclass(frozen=True)
class PageTable:
    """A table of :func:`write_page`: column ``headers`` and ``rows`` of cells.

    Numbers are shown as :func:`format_number` shows them (right-aligned), anything else as
    escaped text.
    """

    headers: list[str]
    rows: list[list[Any]]


def _cell(value: Any) -> tuple[str, str]:
    if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return format_number(value), "num"
    return esc(value), ""


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"


def write_page(out_dir: str | os.PathLike, title: str,
               sections: Sequence[tuple[str, Sequence[Picture | PageTable | str]]], *,
               footer: str = "Written by conceptkit.", filename: str = "index.html") -> Path:
    """Write one self-contained page into ``out_dir`` and return its path.

    ``sections`` are ``(heading, blocks)``; a block is a :class:`Picture` (embedded as a PNG
    data URI and also written next to the page as ``picture.filename``), a :class:`PageTable`
    or a paragraph of text. The page uses the class pages' style and needs no network.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<header>\n<h1>{esc(title)}</h1>\n</header>"]
    for heading, blocks in sections:
        content = []
        for block in blocks:
            if isinstance(block, Picture):
                (out / block.filename).write_bytes(block.png)
                content.append(figure_block(block))
            elif isinstance(block, PageTable):
                content.append(table(block.headers, [[_cell(v) for v in row] for row in block.rows]))
            elif isinstance(block, str):
                content.append(f"<p>{esc(block)}</p>")
            else:
                raise TypeError(f"a block of section {heading!r} must be a Picture, a PageTable or "
                                f"a str; got {type(block).__name__}.")
        parts.append(section(_anchor(heading), heading, "\n".join(content)))
    parts.append(f"<footer>{esc(footer)}</footer>")
    page = out / filename
    page.write_text(document(title, "\n".join(parts)), encoding="utf-8")
    return page
