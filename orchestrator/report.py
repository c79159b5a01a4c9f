"""Reports: the papers' figures and a self-contained HTML page, drawn from a sweep's Parquet tables.

Nothing is recomputed: every number comes from `results.parquet` (IMP sweeps) or the stability
tables, averaged over seeds by `store.summary`. A figure is first a plain description (`Figure`:
panels of series with their values) and only then a matplotlib drawing, so tests check the data
a figure shows as well as the drawing. The figures follow the papers:
- test accuracy against percent of weights remaining, log axis with 100% on the left, ticket and
  controls per setting, mean ± std over seeds, the dense network as a band (Frankle & Carbin 2019,
  Figs. 3-8);
- the early-stop iteration against weights remaining (their speed-of-learning plots);
- instability against the rewind iteration k per sparsity, the stable threshold drawn, and the error
  along the linear path between the two copies (Frankle et al. 2020, Figs. 2-5);
- the matching table: per setting, the fewest weights at which the ticket (and each control) is still
  within the tolerance of dense (one std of dense over seeds, the LMC paper's definition).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa

from orchestrator import store

STYLES = {"ticket": ("-", "o"), "dense": ("-", "o"), "reinit": ("--", "s"), "random_mask": (":", "^")}
DEFAULT_VARIANTS = ("ticket", "reinit", "random_mask")
MAX_LINES = 4  # settings per panel before the default layout splits them into panels
STABILITY_AXES = ("imp.rewind_iter", "stability.level")  # the x axis and the per-sparsity lines, not settings
Summary = tuple[list[str], list[dict[str, Any]]]  # (setting keys, rows): `store.summary`, `store.stability_summary`


@dataclass(frozen=True)
class Series:
    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    err: tuple[float, ...] | None = None  # std over seeds (or pairs); None where there is one sample
    color: int = 0  # a setting's ticket and controls share a colour
    variant: str = "ticket"


@dataclass(frozen=True)
class Band:
    """A reference value (the dense network's mean) with its spread (± std)."""

    label: str
    mean: float
    std: float | None
    color: int = 0


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]
    bands: tuple[Band, ...] = ()
    hlines: tuple[tuple[str, float], ...] = ()  # (label, y), e.g. the stable threshold


@dataclass(frozen=True)
class Figure:
    name: str  # the PNG's file stem
    title: str
    caption: str
    xlabel: str
    ylabel: str
    panels: tuple[Panel, ...]
    xscale: str = "linear"  # linear, log or symlog (log with 0 on it: rewind iteration k = 0)
    linthresh: float | None = None  # symlog: the linear range around 0
    invert_x: bool = False  # weights remaining: 100% on the left, as in the LTH paper


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Options:
    group_by: tuple[str, ...] | None = None  # swept keys whose values make the lines; None: the layout decides
    panel_by: tuple[str, ...] | None = None  # swept keys whose values make the panels; None: the layout decides
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # which of the ticket and its controls to draw
    accuracy: str = "test_accuracy"  # or early_stop_accuracy: the test accuracy at the early-stop iteration
    tolerance: str = "1std"  # matching: within N std of dense (over seeds) or within N accuracy points ("0.5pt")


@dataclass
class Report:
    title: str
    header: str  # the sweep files' opening comments: what they reproduce, and how
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line per figure skipped, and why


class ReportError(ValueError):
    """Options that do not fit the sweep's data; the message names the fix."""


# ---------------------------------------------------------------------------------------------
# settings: which swept keys make lines and which make panels


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{_short(k)}={v}" for k, v in zip(keys, values))


def layout(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], options: Options) -> tuple[list[str], list[str]]:
    """(line keys, panel keys) from the swept keys. The default puts every swept key on the lines,
    moving the key with the fewest values to the panels while a panel would hold more than
    MAX_LINES settings."""
    keys = list(keys)
    unknown = [k for k in (*(options.group_by or ()), *(options.panel_by or ())) if k not in keys]
    if unknown:
        raise ReportError(f"not swept in this sweep: {', '.join(unknown)}; the swept keys are "
                          f"{', '.join(keys) or 'none'}")
    if options.group_by is not None and options.panel_by is not None:
        left = [k for k in keys if k not in options.group_by and k not in options.panel_by]
        if left:
            raise ReportError(f"swept but neither grouped nor panelled: {', '.join(left)}; add them to --group-by "
                              "or --panel-by")
        return list(options.group_by), list(options.panel_by)
    if options.group_by is not None:
        return list(options.group_by), [k for k in keys if k not in options.group_by]
    panels = list(options.panel_by or ())
    lines = [k for k in keys if k not in panels]
    if options.panel_by is None:
        distinct = {k: len({json.dumps(r.get(k), default=str) for r in rows}) for k in lines}
        while len(lines) > 1 and len({tuple(str(r.get(k)) for k in lines) for r in rows}) > MAX_LINES:
            fewest = min(lines, key=lambda k: (distinct[k], lines.index(k)))
            lines.remove(fewest)
            panels.append(fewest)
    return lines, panels


def _groups(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list[Mapping[str, Any]]]:
    out: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return dict(sorted(out.items(), key=lambda item: tuple(map(_sort_key, item[0]))))


def _sort_key(value: Any) -> tuple:
    """Numbers by value, durations ('300it') by count, the rest as text; None first."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    match = re.fullmatch(r"(\d+)(it|ep)", str(value))
    return (1, float(match.group(1)), match.group(2)) if match else (2, 0.0, str(value))


# ---------------------------------------------------------------------------------------------
# IMP figures


def by_weights(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], options: Options, *, name: str, title: str,
               ylabel: str, caption: str, scale: float = 100.0) -> Figure:
    """A `store.summary` metric against weights remaining: a panel per value of the
    panel keys, a colour per setting, a line style per variant, a band for dense."""
    lines, panels = layout(keys, rows, options)
    colors = {setting: i for i, setting in enumerate(_groups(rows, lines))}
    out = []
    for panel_values, panel_rows in _groups(rows, panels).items():
        series, bands = [], []
        for setting, setting_rows in _groups(panel_rows, lines).items():
            base = _label(lines, setting) or "all trials"
            first = setting_rows[0]
            bands.append(Band(f"{base}: dense", first["dense_mean"] * scale,
                              None if first["dense_std"] is None else first["dense_std"] * scale, colors[setting]))
            for variant in options.variants:
                points = sorted(((r["weights_remaining"] * 100, r[f"{variant}_mean"] * scale,
                                  r.get(f"{variant}_std")) for r in setting_rows
                                 if r.get(f"{variant}_mean") is not None), reverse=True)
                if not points:
                    continue
                errors = [None if e is None else e * scale for _, _, e in points]
                series.append(Series(f"{base}: {variant}" if lines else variant, tuple(p[0] for p in points),
                                     tuple(p[1] for p in points),
                                     None if all(e is None for e in errors) else tuple(e or 0.0 for e in errors),
                                     colors[setting], variant))
        out.append(Panel(_label(panels, panel_values), tuple(series), tuple(bands)))
    return Figure(name, title, caption, "weights remaining (%)", ylabel, tuple(out), xscale="log", invert_x=True)


def _seeds_note(rows: Sequence[Mapping[str, Any]]) -> str:
    seeds = sorted({r["seeds"] for r in rows})
    return f"{seeds[0]} seed(s)" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"


def accuracy_figure(summary: Summary, options: Options) -> Figure:
    """From `store.summary` of `options.accuracy`."""
    keys, rows = summary
    what = "at the end of training" if options.accuracy == "test_accuracy" else "at the early-stop iteration"
    return by_weights(rows, keys, options, name="accuracy_vs_weights_remaining",
                      title=f"Test accuracy {what} vs. weights remaining", ylabel="test accuracy (%)",
                      caption=f"Mean ± std over {_seeds_note(rows)} per setting; solid: IMP ticket (100% is the "
                              "dense network), dashed: random reinitialisation, dotted: random mask of the same "
                              "layer-wise sparsity; the band is the dense network's mean ± std.")


def early_stop_figure(summary: Summary, options: Options) -> Figure:
    """From `store.summary` of `early_stop_iter`."""
    keys, rows = summary
    return by_weights(rows, keys, options, name="early_stop_vs_weights_remaining",
                      title="Early-stop iteration (minimum validation loss) vs. weights remaining",
                      ylabel="early-stop iteration", scale=1.0,
                      caption=f"Mean ± std over {_seeds_note(rows)}; the speed-of-learning measure of Frankle & "
                              "Carbin 2019: winning tickets stop earlier than the dense network, controls later.")


# ---------------------------------------------------------------------------------------------
# the matching table


def parse_tolerance(text: str) -> tuple[str, float]:
    """'1std' -> ('std', 1.0): within one std of dense; '0.5pt' -> ('pt', 0.005): within 0.5 accuracy points."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(std|pt)\s*", text)
    if not match:
        raise ReportError(f"--tolerance {text!r}: expected a multiple of dense's std over seeds such as 1std "
                          "(the LMC paper's definition of matching) or accuracy points such as 0.5pt")
    value, unit = float(match.group(1)), match.group(2)
    return unit, value if unit == "std" else value / 100


def matching(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], variants: Sequence[str], tolerance: str
             ) -> list[dict[str, Any]]:
    """Per setting (`store.summary` rows): the dense mean and std, the tolerance used, and per variant the
    pruned level with the fewest weights remaining that is matching (mean accuracy >= dense mean -
    tolerance; None: no level is), with the denser levels that are not (`gaps`: noise or a real dip,
    the reader decides), and the ticket's best pruned level."""
    unit, amount = parse_tolerance(tolerance)
    out = []
    for setting, setting_rows in _groups(rows, keys).items():
        first = setting_rows[0]
        std = first["dense_std"]
        entry = {"setting": dict(zip(keys, setting)), "dense_mean": first["dense_mean"], "dense_std": std,
                 "tolerance": amount * (std or 0.0) if unit == "std" else amount,
                 "tolerance_note": "one seed: no std, so at least dense" if unit == "std" and std is None else ""}
        pruned = sorted((r for r in setting_rows if r["level"] > 0), key=lambda r: r["level"])
        for variant in variants:
            levels = [r for r in pruned if r.get(f"{variant}_mean") is not None]
            matches = [r[f"{variant}_mean"] >= first["dense_mean"] - entry["tolerance"] - 1e-12 for r in levels]
            last = max((i for i, m in enumerate(matches) if m), default=None)
            entry[variant] = None if last is None else {
                "level": levels[last]["level"], "weights_remaining": levels[last]["weights_remaining"],
                "all_levels": last == len(levels) - 1,
                "gaps": [r["weights_remaining"] for r, m in zip(levels[:last], matches) if not m]}
        best = max((r for r in pruned if r.get("ticket_mean") is not None), key=lambda r: r["ticket_mean"],
                   default=None)
        entry["best_ticket"] = None if best is None else {
            "level": best["level"], "weights_remaining": best["weights_remaining"], "mean": best["ticket_mean"]}
        out.append(entry)
    return out


def matching_table(summary: Summary, options: Options) -> Table:
    """From `store.summary` of `options.accuracy`."""
    keys, rows = summary
    variants = [v for v in options.variants if any(r.get(f"{v}_mean") is not None for r in rows if r["level"] > 0)]
    entries = matching(keys, rows, variants, options.tolerance)

    def cell(found: Mapping[str, Any] | None) -> str:
        if found is None:
            return "none"
        text = f"{found['weights_remaining']:.1%} (level {found['level']})"
        text += ", the last level" if found["all_levels"] else ""
        return text + (f"; not at {', '.join(f'{g:.1%}' for g in found['gaps'])}" if found["gaps"] else "")

    out = []
    for entry in entries:
        best = entry["best_ticket"]
        tol = f"{entry['tolerance']:.2%}" + (f" ({entry['tolerance_note']})" if entry["tolerance_note"] else "")
        out.append((_label(keys, [entry["setting"].get(k) for k in keys]) or "all trials",
                    _mean_std(entry["dense_mean"], entry["dense_std"]), tol,
                    *(cell(entry[v]) for v in variants),
                    "-" if best is None else f"{best['mean']:.2%} at {best['weights_remaining']:.1%}"))
    unit, amount = parse_tolerance(options.tolerance)
    rule = f"{amount:g} std of dense over seeds" if unit == "std" else f"{amount:.2%} (accuracy points)"
    return Table("matching", "Matching subnetworks", ("setting", "dense", "tolerance",
                 *(f"{v} matching down to" for v in variants), "best ticket"), tuple(out),
                 f"A level is matching when its mean {options.accuracy.replace('_', ' ')} over seeds is at least "
                 f"dense's minus the tolerance ({rule}). 'Down to' is the pruned level with the fewest weights "
                 "remaining that is matching; 'not at' lists denser levels that are not; 'the last level' means "
                 "the sweep stopped pruning before the ticket stopped matching.")


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2%}" if std is None else f"{mean:.2%} ± {std:.2%}"


def summary_table(summary: Summary, options: Options) -> Table:
    """From `store.summary` of `options.accuracy`."""
    keys, rows = summary
    variants = [v for v in options.variants if any(r.get(f"{v}_mean") is not None for r in rows)]
    return Table("summary", f"{options.accuracy.replace('_', ' ').capitalize()} per level",
                 ("setting", "level", "remaining", "seeds", *variants),
                 tuple((_label(keys, [r[k] for k in keys]) or "all trials", str(r["level"]),
                        f"{r['weights_remaining']:.1%}", str(r["seeds"]),
                        *(_mean_std(r.get(f"{v}_mean"), r.get(f"{v}_std")) for v in variants)) for r in rows),
                 "Mean ± std over seeds; level 0's ticket is the dense network.")


# ---------------------------------------------------------------------------------------------
# stability figures


def _sparsity(level: int, remaining: float) -> str:
    return "dense" if level == 0 else f"level {level} ({remaining:.1%} remaining)"


def instability_figure(summary: Summary, options: Options) -> Figure:
    """From `store.stability_summary`."""
    keys, rows = summary
    others = [k for k in keys if k not in STABILITY_AXES]
    lines, panels = layout(others, rows, options)
    ks = sorted({r["rewind_iter"] for r in rows})
    positive = [k for k in ks if k > 0]
    threshold = rows[0]["threshold"] * 100
    colors: dict[tuple, int] = {}
    out = []
    for (split, *panel_values), panel_rows in _groups(rows, ["split", *panels]).items():
        series = []
        for (level, *setting), line_rows in _groups(panel_rows, ["level", *lines]).items():
            color = colors.setdefault((level, *setting), len(colors))
            points = sorted((r["rewind_iter"], r["instability_mean"] * 100, r["instability_std"]) for r in line_rows)
            errors = tuple((e or 0.0) * 100 for _, _, e in points)
            remaining = sum(r["weights_remaining"] for r in line_rows) / len(line_rows)
            label = ", ".join(filter(None, [_sparsity(level, remaining), _label(lines, setting)]))
            series.append(Series(label, tuple(p[0] for p in points), tuple(p[1] for p in points),
                                 errors if any(errors) else None, color))
        title = ", ".join(filter(None, [f"{split} error", _label(panels, panel_values)]))
        out.append(Panel(title, tuple(series), hlines=((f"stable below {threshold:g}%", threshold),)))
    pairs = sorted({r["pairs"] for r in rows})
    return Figure("instability_vs_rewind_iteration", "Instability vs. rewind iteration k",
                  f"Instability: the largest error along the linear path between two copies trained from the same "
                  f"weights at iteration k with different SGD noise, minus the mean of their errors; mean ± std "
                  f"over {pairs[0]}{'' if len(pairs) == 1 else f'-{pairs[-1]}'} pairs of copies; one line per "
                  "sparsity. The dashed line is the stable threshold (Frankle et al. 2020).",
                  "rewind iteration k", "instability (%)", tuple(out),
                  xscale="symlog" if positive else "linear", linthresh=positive[0] if positive else None)


def path_figure(table: pa.Table, options: Options) -> Figure:
    df = table.to_pandas()
    keys = [k for k in store.settings(df) if k not in STABILITY_AXES]
    lines, panels = layout(keys, df[keys].to_dict("records") if keys else [{}], options)
    grouped = df.groupby([*keys, "level", "split", "rewind_iter", "alpha_index"], dropna=False, sort=True).agg(
        alpha=("alpha", "first"), error=("error", "mean"), remaining=("weights_remaining", "mean")).reset_index()
    records = store.clean(grouped.to_dict("records"))
    ks = sorted({r["rewind_iter"] for r in records})
    out = []
    for (level, split, *panel_values), panel_rows in _groups(records, ["level", "split", *panels]).items():
        series = []
        for (*setting, k), line_rows in _groups(panel_rows, [*lines, "rewind_iter"]).items():
            points = sorted((r["alpha"], r["error"] * 100) for r in line_rows)
            series.append(Series(", ".join(filter(None, [f"k={k}", _label(lines, setting)])),
                                 tuple(p[0] for p in points), tuple(p[1] for p in points), color=ks.index(k)))
        title = ", ".join(filter(None, [_sparsity(level, panel_rows[0]["remaining"]), f"{split} error",
                                        _label(panels, panel_values)]))
        out.append(Panel(title, tuple(series)))
    return Figure("error_along_path", "Error along the linear path between the two copies",
                  "Error of (1 - α)·W1 + α·W2, mean over pairs of copies and seeds, one line per rewind iteration k.",
                  "interpolation α", "error (%)", tuple(out))


def stability_table(summary: Summary) -> Table:
    """From `store.stability_summary`."""
    keys, rows = summary
    return Table("stability", "Instability per setting", ("setting", "split", "k", "remaining", "pairs",
                                                          "instability", "endpoint error", "stable pairs"),
                 tuple((_label(keys, [r[k] for k in keys]), r["split"], str(r["rewind_iter"]),
                        f"{r['weights_remaining']:.1%}", str(r["pairs"]),
                        _mean_std(r["instability_mean"], r["instability_std"]), f"{r['endpoint_error']:.2%}",
                        f"{r['stable_fraction']:.0%}") for r in rows),
                 f"Mean ± std over pairs of copies; stable: instability below {rows[0]['threshold']:.0%}.")


# ---------------------------------------------------------------------------------------------
# the whole report


def build(tables: Mapping[str, pa.Table], options: Options, title: str, header: str = "") -> Report:
    """Every figure and table the tables (file name -> a sweep table, possibly empty) have data for; a
    note for each one skipped."""
    unknown = [v for v in options.variants if v not in DEFAULT_VARIANTS]
    if unknown:
        raise ReportError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(DEFAULT_VARIANTS)}")
    report = Report(title, header)
    results, path, summary = (tables.get(n) for n in (store.RESULTS_FILE, store.PATH_FILE, store.SUMMARY_FILE))
    if results is not None and results.num_rows:
        accuracy = store.summary(results, options.accuracy)  # once: the figure and both tables share it
        report.figures += [accuracy_figure(accuracy, options),
                           early_stop_figure(store.summary(results, "early_stop_iter"), options)]
        report.tables += [matching_table(accuracy, options), summary_table(accuracy, options)]
    else:
        report.notes.append(f"skipped accuracy and early-stop vs. weights remaining and the matching table: no IMP "
                            f"results ({store.RESULTS_FILE}); they come from IMP sweeps (`kind: imp`)")
    if summary is not None and summary.num_rows:
        stability = store.stability_summary(summary)
        report.figures.append(instability_figure(stability, options))
        report.tables.append(stability_table(stability))
    else:
        report.notes.append(f"skipped instability vs. rewind iteration: no stability results ({store.SUMMARY_FILE}); "
                            "they come from stability sweeps (`kind: stability`, e.g. sweeps/stability_lenet.yaml)")
    if path is not None and path.num_rows:
        report.figures.append(path_figure(path, options))
    else:
        report.notes.append(f"skipped error along the interpolation path: no stability path ({store.PATH_FILE})")
    return report


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
            style, marker = STYLES.get(s.variant, ("-", "o"))
            ax.errorbar(s.x, s.y, yerr=s.err, label=s.label, color=palette[s.color % 10], ls=style, marker=marker,
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
font-size:13px;max-width:900px}"""


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
        parts.append(f"<h2 id='{table.name}'>{e(table.title)}</h2><p class='caption'>{e(table.caption)}</p>"
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


def load(directories: Sequence[str]) -> tuple[dict[str, pa.Table], str]:
    """The sweeps' tables (file name -> all their rows; with several sweeps, the sweep's name becomes a
    setting of its own) and their files' opening comments."""
    from orchestrator.dense_cache import filesystem
    from orchestrator.spec import header_comment

    tables: dict[str, list[pa.Table]] = {}
    headers = []
    for directory in directories:
        found = {name: store.read_results(directory, name) for name in store.RUN_TABLES}
        if not any(t.num_rows for t in found.values()):
            raise ReportError(f"{directory}: no rows in {', '.join(store.RUN_TABLES)}: not a sweep folder "
                              "(<storage>/<sweep name>), or no trial has finished a level yet")
        for name, table in found.items():
            if len(directories) > 1 and table.num_rows:
                overrides = [json.dumps({**json.loads(o), "sweep": s}, sort_keys=True)
                             for o, s in zip(table.column("overrides").to_pylist(), table.column("sweep").to_pylist())]
                table = table.set_column(table.schema.get_field_index("overrides"), "overrides", pa.array(overrides))
            tables.setdefault(name, []).append(table)
        fs, root = filesystem(directory)
        try:
            with fs.open_input_stream(f"{root}/{store.SWEEP_FILE}") as f:
                headers.append(header_comment(f.read().decode()))
        except (FileNotFoundError, OSError):
            pass
    return {name: pa.concat_tables(parts) for name, parts in tables.items()}, "\n\n".join(filter(None, headers))
