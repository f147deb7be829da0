"""One self-contained HTML page: sections of prose, tables and figures, with inline CSS.

Nothing is fetched by the page: no script, no web font, no stylesheet link. Figures are PNG files
next to the page (relative links), so the folder can be copied or zipped whole. A cell can be marked
``muted`` (grey, e.g. an LDS inside the random range) by passing ``Cell(text, muted=True)``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
td.muted { color: #999; background: #f7f7f7; }
.note { color: #555; font-size: .88em; } figure { margin: 1em 0; } figcaption { color: #555; font-size: .85em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


@dataclass
class Cell:
    text: str
    muted: bool = False


@dataclass
class Table:
    columns: list[str]
    rows: list[list]  # str, float or Cell
    caption: str = ""
    text_columns: int = 1  # the first columns are left-aligned text


@dataclass
class Figure:
    file: str  # relative to the page
    caption: str
    alt: str = ""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    subtitle: str = ""


def _cell(value, text: bool) -> str:
    cls = ["text"] if text else []
    if isinstance(value, Cell):
        if value.muted:
            cls.append("muted")
        value = value.text
    elif isinstance(value, float):
        value = f"{value:.4g}"
    attr = f' class="{" ".join(cls)}"' if cls else ""
    return f"<td{attr}>{html.escape(str(value))}</td>"


def render_table(t: Table) -> str:
    head = "".join(f'<th class="text">{html.escape(c)}</th>' if k < t.text_columns else f"<th>{html.escape(c)}</th>"
                   for k, c in enumerate(t.columns))
    body = "".join("<tr>" + "".join(_cell(v, k < t.text_columns) for k, v in enumerate(r)) + "</tr>" for r in t.rows)
    cap = f"<caption class=\"note\">{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_page(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p class=\"note\">{html.escape(p)}</p>" for p in intro]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.subtitle:
            parts.append(f"<h3>{html.escape(s.subtitle)}</h3>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        parts += [render_table(t) for t in s.tables]
        for f in s.figures:
            parts.append(f"<figure><img src=\"{html.escape(f.file)}\" alt=\"{html.escape(f.alt or f.caption)}\">"
                         f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
