"""The report's building blocks — figures, tables, sections, the page — rendered as one
self-contained HTML page and its Markdown twin; and the formats of its cells."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field

import pandas as pd

from escapestat.report._figures import (
    fmt3,
)

KM_PER_FIGURE = 6  # more curves than this in one KM plot cannot be told apart
MIN_IMPORTANCE_TRIALS = 5  # fANOVA on fewer complete trials is noise



@dataclass
class Figure:
    name: str  # file stem in the Markdown twin's folder
    png: bytes
    caption: str


@dataclass
class Table:
    frame: pd.DataFrame  # cells already formatted as text
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph) | Figure | Table


@dataclass
class Report:
    title: str
    source: str
    sections: list[Section]

    @property
    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def html(self) -> str:
        """The page: CSS inline, every figure a ``data:image/png;base64`` URI."""
        parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                 f"<title>{_h(self.title)}</title><style>{CSS}</style></head><body>",
                 f"<h1>{_h(self.title)}</h1><p class='src'>{_h(self.source)}</p>"]
        for s in self.sections:
            parts.append(f"<h2>{_h(s.title)}</h2>")
            for b in s.blocks:
                if isinstance(b, Figure):
                    data = base64.b64encode(b.png).decode("ascii")
                    parts.append(f"<figure><img src='data:image/png;base64,{data}' "
                                 f"alt='{_h(b.caption)}'><figcaption>{_h(b.caption)}"
                                 f"</figcaption></figure>")
                elif isinstance(b, Table):
                    parts.append(_html_table(b))
                else:
                    parts.append(f"<p>{_h(b)}</p>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def markdown(self, files: str) -> str:
        """The Markdown twin; figures are ``files/NAME.png`` (relative to the .md file)."""
        lines = [f"# {self.title}", "", f"`{self.source}`", ""]
        for s in self.sections:
            lines += [f"## {s.title}", ""]
            for b in s.blocks:
                if isinstance(b, Figure):
                    lines += [f"![{b.caption}]({files}/{b.name}.png)", "", f"*{b.caption}*", ""]
                elif isinstance(b, Table):
                    caption = [f"*{b.caption}*", ""] if b.caption else []
                    lines += [*caption, _md_table(b.frame), ""]
                else:
                    lines += [b, ""]
        return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;margin-top:1.8em}
.src{color:#666;font-family:monospace;margin-top:0}
.tw{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.85em}
caption{text-align:left;color:#555;padding-bottom:.3em;font-style:italic}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top;
white-space:nowrap}
th{background:#f3f3f3}.n{text-align:right}td.w{white-space:normal;min-width:16em}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1.2em 0}img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.9em}
"""


def _h(text) -> str:
    return html.escape(str(text), quote=True)


#: A cell that reads as a number, a CI or a count (right-aligned); other text is left-aligned.
_NUMERIC = re.compile(r"^[-−+0-9.e∞—\[\], /%]*$")


def _html_table(table: Table) -> str:
    frame = table.frame.astype(str)
    classes = []
    for col in frame.columns:
        cells = frame[col]
        numeric = cells.map(lambda v: bool(_NUMERIC.match(v))).all()
        wide = cells.map(len).max() > 40 if len(cells) else False
        classes.append("n" if numeric else "w" if wide else "")
    caption = f"<caption>{_h(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th class='{c}'>{_h(name)}</th>"
                   for name, c in zip(frame.columns, classes, strict=True))
    rows = "".join("<tr>" + "".join(f"<td class='{c}'>{_h(v)}</td>"
                                    for v, c in zip(row, classes, strict=True)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return (f"<div class='tw'><table>{caption}<thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def _md_table(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    rows = [[cell(c) for c in frame.columns], ["---"] * len(frame.columns)]
    rows += [[cell(v) for v in row] for row in frame.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _ci(ci) -> str:
    """``[lo, hi]``; an upper limit that is not reached is ∞; no interval at all is —."""
    if ci is None or all(_missing(v) for v in ci):
        return "—"
    lo, hi = ci
    return f"[{fmt3(lo)}, {'∞' if _missing(hi) else fmt3(hi)}]"


def _with_time(arm: dict, key: str) -> str:
    """The ratio of medians against ``key`` with its CI, then the time ratio's."""
    text = _est(arm.get(f"ratio_vs_{key}"), arm.get(f"ratio_vs_{key}_ci"))
    t = arm.get(f"time_ratio_vs_{key}")
    return text if _missing(t) else f"{text}; time {_est(t, arm.get(f'time_ratio_vs_{key}_ci'))}"


def _filled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the columns that are empty (—, "") in every row."""
    return frame.loc[:, [c for c in frame.columns
                         if not frame[c].astype(str).isin(["—", "", "None"]).all()]]


def _est(value, ci) -> str:
    """An estimate with its CI, or — when there is no estimate."""
    return "—" if _missing(value) else f"{fmt3(value)} {_ci(ci)}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


