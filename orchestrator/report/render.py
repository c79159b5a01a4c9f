"""Drawing a report: matplotlib figures (no pyplot state: safe in any thread), PNGs, CSV tables and one
self-contained HTML page."""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

from orchestrator.report.figures import Figure, Report
from trainables.results import TICKET


def style(variant: str, variants: Sequence[str]) -> tuple[str, str]:
    """(line style, marker): the ticket (and the dense network) solid, each control its own dashes."""
    controls = [v for v in dict.fromkeys(variants) if v != TICKET]
    if variant not in controls:
        return "-", "o"
    return [("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 3)), "P")][
        controls.index(variant) % 5]


def draw(figure: Figure):
    """The matplotlib figure (no pyplot state: safe in any thread): one axes per panel, on a grid."""
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    n = len(figure.panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = MplFigure(figsize=(8.0 * cols, 4.4 * rows), layout="constrained")
    palette = [f"C{i}" for i in range(10)]
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, figure.panels):
        for band in panel.bands:
            color = palette[band.color % 10]
            if band.std:
                ax.axhspan(band.mean - band.std, band.mean + band.std, color=color, alpha=0.12, label=band.label)
            else:
                ax.axhline(band.mean, color=color, alpha=0.5, lw=1, label=band.label)
        for s in panel.series:
            dashes, marker = style(s.variant, [t.variant for t in panel.series])
            ax.errorbar(s.x, s.y, yerr=s.err, label=s.label, color=palette[s.color % 10], ls=dashes, marker=marker,
                        ms=3.5, capsize=2.5, lw=1.3)
        for label, y in panel.hlines:
            ax.axhline(y, color="black", ls="--", lw=1, label=label)
        if figure.xscale == "symlog":
            ax.set_xscale("symlog", linthresh=figure.linthresh, linscale=0.5)
        else:
            ax.set_xscale(figure.xscale)
        if figure.xscale == "log":
            ticks = sorted({round(x, 1) for s in panel.series for x in s.x}, reverse=True)
            ax.set_xticks(ticks[::max(1, math.ceil(len(ticks) / 8))])
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if figure.invert_x:
            ax.invert_xaxis()
        ax.set_xlabel(figure.xlabel)
        ax.set_ylabel(figure.ylabel)
        if panel.title:
            ax.set_title(panel.title, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: lines stay visible
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(figure.title, fontsize=11)
    return fig


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    draw(figure).savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


_CSS = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}
td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
pre{background:#f7f7f7;padding:.8em;white-space:pre-wrap}.note{color:#a15c00}figcaption,.caption{color:#555;
font-size:13px;max-width:900px}.rule{font-weight:600;font-size:13px}"""


def html_page(report: Report, images: Mapping[str, bytes], sources: Sequence[str]) -> str:
    """One self-contained page: the figures as embedded PNGs, the tables, the notes."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(report.title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(report.title)}</h1>",
             f"<p class='caption'>Drawn from {', '.join(e(s) for s in sources)} on "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; nothing recomputed.</p>"]
    if report.header:
        parts.append(f"<pre>{e(report.header)}</pre>")
    parts += [f"<p class='note'>{e(note)}</p>" for note in report.notes]
    for figure in report.figures:
        data = base64.b64encode(images[figure.name]).decode()
        parts.append(f"<figure id='{figure.name}'><h2>{e(figure.title)}</h2><img alt='{e(figure.title)}' "
                     f"src='data:image/png;base64,{data}'><figcaption>{e(figure.caption)}</figcaption></figure>")
    for table in report.tables:
        head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
        body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in table.rows)
        rule = f"<p class='rule'>{e(table.rule)}</p>" if table.rule else ""
        parts.append(f"<h2 id='{table.name}'>{e(table.title)}</h2>{rule}<p class='caption'>{e(table.caption)}</p>"
                     f"<table><tr>{head}</tr>{body}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: Report, out: Path, sources: Sequence[str]) -> list[Path]:
    """`<name>.png` per figure, `<name>.csv` per table and `report.html` in `out`; returns the files."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    images = {figure.name: png(figure) for figure in report.figures}
    files = []
    for name, data in images.items():
        files.append(out / f"{name}.png")
        files[-1].write_bytes(data)
    for table in report.tables:
        files.append(out / f"{table.name}.csv")
        with open(files[-1], "w", newline="") as f:
            csv.writer(f).writerows([table.columns, *table.rows])
    files.append(out / "report.html")
    files[-1].write_text(html_page(report, images, sources))
    return files


