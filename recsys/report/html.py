"""HTML pieces of the report: escaping, number formats, tables and the self-contained page.

Everything is inline (CSS, a small script, images as data: URIs) and the page's
Content-Security-Policy forbids any other source, so it renders offline exactly as written.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

# Digits per kind of number: the table cells and the plot labels agree on these.
DIGITS = {"auc": 4, "logloss": 4, "ne": 4, "calibration": 3, "positive_rate": 4, "bayes_auc": 4,
          "average_precision": 4, "bayes_gap": 4}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number as people read it: ints with thousands separators, floats with ``digits`` decimals."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return esc(value)


def fmt_metric(name: str, value: Any) -> str:
    """``fmt`` with the digits of the metric's kind (``test.auc`` → 4)."""
    return fmt(value, DIGITS.get(name.rsplit(".", 1)[-1], 3))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric_from: int = 1,
          caption: str | None = None) -> str:
    """A table from already-escaped cell HTML; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f'<th class="{"num" if i >= numeric_from else ""}">{h}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{c}</td>'
                                     for i, c in enumerate(row)) + "</tr>" for row in rows)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def definitions(items: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 10px;padding-top:12px;border-top:1px solid #dde1e6}
h3{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;margin:8px 0 14px;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e6e8eb;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num,th.num{text-align:right}
td b{color:#0b5cad}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.note{color:#57606a;font-style:italic}.meta{color:#57606a;margin:0 0 16px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{font-weight:600}dd{margin:0}
pre{background:#f6f8fa;padding:8px 12px;overflow-x:auto;font-size:12.5px}
nav ol{columns:2;margin:8px 0 0}
"""

# Runs on load: fills the table of contents and marks the page rendered. A script error leaves the
# marker unset, which is how the browser test sees it.
_SCRIPT = """
(function(){
  var toc=document.getElementById("toc"), sections=document.querySelectorAll("section[id]");
  sections.forEach(function(s){var li=document.createElement("li"), a=document.createElement("a");
    a.href="#"+s.id; a.textContent=s.querySelector("h2").textContent; li.appendChild(a); toc.appendChild(li);});
  var status=document.getElementById("report-status");
  status.textContent=sections.length+" sections, "+document.images.length+" figures";
  document.body.setAttribute("data-rendered","ok");
})();
"""

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are (id, title, body HTML)."""
    body = "".join(f'<section id="{esc(sid)}"><h2>{esc(stitle)}</h2>{content}</section>'
                   for sid, stitle, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f'<body data-rendered="no"><main><h1>{esc(title)}</h1><p class="meta">{subtitle} · '
        '<span id="report-status">script not run</span></p>'
        '<nav><strong>Contents</strong><ol id="toc"></ol></nav>'
        f"{body}</main><script>{_SCRIPT}</script></body></html>\n"
    )
