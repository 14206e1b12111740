"""Status pages as plain HTML: no JavaScript, no assets, refreshed by the browser itself.

The agent's and the gateway's ``GET /status`` are built from these few pieces
(both processes sit in the same layer and may not import each other, so the
pieces live here, below both). A page is a title, a ``<meta http-equiv="refresh">``
(so a dashboard left open stays current with no script at all) and sections of
``<table>``s whose cells carry ``data-field`` attributes naming the fact they
show: the browser test reads the rendered DOM by those names, and an operator
can scrape them too. Every value is escaped: volume names, paths and error
messages come from users.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence

REFRESH = 5  # seconds between the page's own reloads

_STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
          "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em}"
          "table{border-collapse:collapse;margin:.4em 0}"
          "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.92em}"
          "td{max-width:32em;overflow-wrap:anywhere}"
          "th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
          ".err{color:#b00020}.ok{color:#1b7f3b}.muted{color:#777}")


def cell(value: object, field: str = "", css: str = "") -> str:
    attrs = (f' data-field="{html.escape(field)}"' if field else "") + (f' class="{css}"' if css else "")
    return f"<td{attrs}>{html.escape('' if value is None else str(value))}</td>"


def table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "none") -> str:
    """A table of pre-rendered ``cell()`` rows; ``empty`` is shown when there are none."""
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{html.escape(empty)}</td></tr>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f'<table id="{html.escape(table_id)}"><tr>{head}</tr>{body}</table>'


def facts(table_id: str, pairs: Iterable[tuple[str, str, object]]) -> str:
    """A two-column table of ``(label, field, value)``."""
    body = "".join(f"<tr><th>{html.escape(label)}</th>{cell(value, field, 'num')}</tr>" for label, field, value in pairs)
    return f'<table id="{html.escape(table_id)}">{body}</table>'


def page(title: str, sections: Iterable[tuple[str, str]], refresh: int = REFRESH) -> str:
    """The whole document: ``sections`` are ``(heading, html)``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    parts = "".join(f"<h2>{html.escape(heading)}</h2>{body}" for heading, body in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{refresh}"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="muted">as of <span data-field="generated">{stamp}</span>, '
            f"refreshed every {refresh} s</p>{parts}</body></html>")


def size(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """``4 s``, ``3 min 2 s``, ``2 h 5 min``, ``3 d 4 h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    for unit, size_s, sub, sub_s in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if s >= size_s:
            return f"{s // size_s} {unit} {s % size_s // sub_s} {sub}"
    return f"{s} s"


def ago(when: float | None, now: float | None = None) -> str:
    """How long ago the wall-clock time ``when`` was, with the time itself."""
    if when is None:
        return "never"
    stamp = time.strftime("%H:%M:%S UTC", time.gmtime(when))
    return f"{stamp} ({duration((now or time.time()) - when)} ago)"


def ratio(part: float, whole: float) -> str:
    return "-" if whole <= 0 else f"{100.0 * part / whole:.1f}%"
