"""Rendering the report: each part is a ``Section``, its lines of report.md and its
fragments of report.html, and ``page`` joins them into the two documents.

The HTML is self-contained: figures embedded as base64 PNG, styles inline (``CSS``),
no script. Every part is rendered in isolation (``guarded``, ``item_sections``): one
that raises keeps its heading and says what went wrong.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import pandas as pd

from ablations.where import safe_name
from analysis import formatting
from analysis.failures import ERRORS_LOG, Guard, ItemFailure
from analysis.report_runner import MadeItem
from analysis.tables import to_markdown

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border-bottom:1px solid #e3e3e3;padding:.25em .6em;text-align:left}
th{border-bottom:2px solid #999}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}code{background:#f4f4f4;padding:0 .2em}
.files{font-size:.8em;color:#777}.failed{color:#a40000}
"""


@dataclass
class Section:
    """One part of the report, rendered to both targets."""
    md: list[str]
    html: list[str]


def empty() -> Section:
    """A part with nothing to show."""
    return Section([], [])


def html_table(df: pd.DataFrame, floatfmt="auto") -> str:
    """``df`` as an HTML table, its cells formatted as in the Markdown and LaTeX files."""
    specs = formatting.specs(df, floatfmt)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False, name=None):
        cells = []
        for c, v in zip(df.columns, row):
            cls = ' class="num"' if formatting.numeric(df[c]) else ""
            cells.append(f"<td{cls}>{html.escape(formatting.cell(v, specs.get(c), 'html'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def failed_section(title: str | None, failure: ItemFailure) -> Section:
    head_md = [f"## {title}", ""] if title else []
    head_html = [f"<h2>{html.escape(title)}</h2>"] if title else []
    return Section(head_md + [f"- **{failure.entry}**", ""],
                   head_html + [f'<p class="failed">{html.escape(failure.entry)}</p>'])


def guarded(guard: Guard, name: str, title: str | None, render) -> Section:
    """``render()`` -> ``Section`` in isolation; on failure the section keeps its
    heading (``title``; None: none) and says what went wrong."""
    state = {}
    out = guard.run("section", name, render, on_failure=lambda f: state.setdefault("f", f))
    return failed_section(title, state["f"]) if "f" in state else out


def pairs_section(title: str, pairs: list[tuple[str, str]]) -> Section:
    esc = html.escape
    return Section([f"## {title}", ""] + [f"- **{k}**: {v}" for k, v in pairs] + [""],
                   [f"<h2>{esc(title)}</h2><dl>"
                    + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs)
                    + "</dl>"])


def list_section(title: str, lines: list[str]) -> Section:
    esc = html.escape
    return Section([f"## {title}", ""] + [f"- {w}" for w in lines] + [""],
                   [f"<h2>{esc(title)}</h2><ul>"
                    + "".join(f"<li>{esc(w)}</li>" for w in lines) + "</ul>"])


def problems_section(failures: list[ItemFailure]) -> Section:
    """Near the top: what is missing from this report and where the tracebacks are."""
    if not failures:
        return empty()
    lead = (f"{len(failures)} item(s) could not be built; the rest of the report is complete. "
            f"Tracebacks: {ERRORS_LOG}.")
    esc = html.escape
    return Section(["## Problems", "", lead, ""] + [f"- {f.entry}" for f in failures] + [""],
                   [f"<h2>Problems</h2><p>{esc(lead)}</p><ul>"
                    + "".join(f'<li class="failed">{esc(f.entry)}</li>' for f in failures)
                    + "</ul>"])


def table_section(t: MadeItem, rel) -> Section:
    """A table's heading, caption, cells and files; ``rel(path)``: the path as shown."""
    esc = html.escape
    if t.failure is not None:
        return Section([f"### {t.name}", "", f"- **{t.failure.entry}**", ""],
                       [f'<h3 id="{esc(safe_name(t.name))}">{esc(t.name)}</h3>'
                        f'<p class="failed">{esc(t.failure.entry)}</p>'])
    files = [rel(p) for p in t.paths]
    return Section([f"### {t.name}", "", t.caption, "", to_markdown(t.frame, t.floatfmt),
                    "Files: " + ", ".join(f"`{p}`" for p in files), ""],
                   [f'<h3 id="{esc(safe_name(t.name))}">{esc(t.name)}</h3><p>{esc(t.caption)}</p>'
                    + html_table(t.frame, t.floatfmt)
                    + f'<p class="files">{esc(", ".join(files))}</p>'])


def figure_section(f: MadeItem, rel) -> Section:
    """A figure's heading, image (embedded in the HTML), caption and files."""
    esc = html.escape
    if f.failure is not None:
        return Section([f"### {f.name}", "", f"- **{f.failure.entry}**", ""],
                       [f'<figure id="{esc(safe_name(f.name))}" class="failed">'
                        f"<figcaption><strong>{esc(f.name)}.</strong> "
                        f"{esc(f.failure.entry)}</figcaption></figure>"])
    files = [rel(p) for p in f.paths]
    shown = next((p for p in files if p.endswith(".png")), None) or \
        next((p for p in files if p.endswith(".svg")), files[0])
    data_uri = "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")
    return Section([f"### {f.name}", "", f"![{f.name}]({shown})", "", f.caption, "",
                    "Files: " + ", ".join(f"`{p}`" for p in files), ""],
                   [f'<figure id="{esc(safe_name(f.name))}"><img alt="{esc(f.name)}" '
                    f'src="{data_uri}"><figcaption><strong>{esc(f.name)}.</strong> '
                    f'{esc(f.caption)}</figcaption>'
                    f'<p class="files">{esc(", ".join(files))}</p></figure>'])


def item_section(item: MadeItem, rel) -> Section:
    return (figure_section if item.kind == "figure" else table_section)(item, rel)


def item_sections(guard: Guard, title: str, items: list[MadeItem], rel,
                  intro: list[str] = ()) -> Section:
    """A heading, the ``intro`` lines as a list, and one isolated sub-section per item;
    an item that cannot be rendered (a table's frame) becomes that item's failure (its
    files may already be fine)."""
    esc = html.escape
    out = Section([f"## {title}", ""] + ([f"- {w}" for w in intro] + [""] if intro else []),
                  [f"<h2>{esc(title)}</h2>"]
                  + (["<ul>" + "".join(f"<li>{esc(w)}</li>" for w in intro) + "</ul>"]
                     if intro else []))
    for item in items:
        state = {}
        part = guard.run(item.kind, item.name, lambda: item_section(item, rel),
                         on_failure=lambda f: state.setdefault("f", f))
        if "f" in state:
            part = item_section(MadeItem(item.kind, item.name, item.caption,
                                         failure=state["f"]), rel)
        out.md += part.md
        out.html += part.html
    return out


def page(title: str, sections: list[Section]) -> tuple[str, str]:
    """``(report.md, report.html)`` of the sections, in order."""
    md = [line for s in sections for line in s.md]
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style></head><body>"]
    h += [part for s in sections for part in s.html] + ["</body></html>"]
    return "\n".join(md), "\n".join(h) + "\n"
