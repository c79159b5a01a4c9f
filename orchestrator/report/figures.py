"""What a report shows, as plain descriptions: figures (panels of series with their values) and tables of
text, built from the seed summaries (`analysis`). Drawing them is `render`'s job, so tests check the data
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

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pyarrow as pa

from orchestrator.report.analysis import RULES, ReportError, Summary, clean, groups, matching, parse_tolerance, \
    settings
from trainables.catalog import CONTROLS
from trainables.results import DENSE, TICKET

DEFAULT_VARIANTS = (TICKET, *CONTROLS.names())  # the ticket and every control a sweep may have
MAX_LINES = 4  # settings per panel before the default layout splits them into panels
STABILITY_AXES = ("imp.rewind_iter", "stability.level")  # the x axis and the per-sparsity lines, not settings


@dataclass(frozen=True)
class Series:
    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    err: tuple[float, ...] | None = None  # std over seeds (or pairs); None where there is one sample
    color: int = 0  # a setting's ticket and controls share a colour
    variant: str = TICKET


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
    rule: str = ""  # the one line saying which rule decides what the table calls matching


@dataclass(frozen=True)
class Options:
    group_by: tuple[str, ...] | None = None  # swept keys whose values make the lines; None: the layout decides
    panel_by: tuple[str, ...] | None = None  # swept keys whose values make the panels; None: the layout decides
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # which of the ticket and its controls to draw
    accuracy: str = "test_accuracy"  # or early_stop_accuracy: the test accuracy at the early-stop iteration
    tolerance: str = "1std"  # matching: within N std of dense (over seeds) or within N accuracy points ("0.5pt")
    rule: str = "lmc"  # lmc: matching within the tolerance; lth: the LTH paper's winning-ticket criterion




@dataclass
class Report:
    title: str
    header: str  # the sweep files' opening comments: what they reproduce, and how
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line per figure skipped, and why



# ---------------------------------------------------------------------------------------------
# settings: which swept keys make lines and which make panels


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{_short(k)}={v}" for k, v in zip(keys, values))


def _long_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values))


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


# ---------------------------------------------------------------------------------------------
# IMP figures


def by_weights(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], options: Options, *, name: str, title: str,
               ylabel: str, caption: str, scale: float = 100.0) -> Figure:
    """A `analysis.summary` metric against weights remaining: a panel per value of the
    panel keys, a colour per setting, a line style per variant, a band for dense."""
    lines, panels = layout(keys, rows, options)
    colors = {setting: i for i, setting in enumerate(groups(rows, lines))}
    out = []
    for panel_values, panel_rows in groups(rows, panels).items():
        series, bands = [], []
        for setting, setting_rows in groups(panel_rows, lines).items():
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
    """From `analysis.summary` of `options.accuracy`."""
    keys, rows = summary
    what = "at the end of training" if options.accuracy == "test_accuracy" else "at the early-stop iteration"
    return by_weights(rows, keys, options, name="accuracy_vs_weights_remaining",
                      title=f"Test accuracy {what} vs. weights remaining", ylabel="test accuracy (%)",
                      caption=f"Mean ± std over {_seeds_note(rows)} per setting; solid: IMP ticket (100% is the "
                              "dense network), dashed: random reinitialisation, dotted: random mask of the same "
                              "layer-wise sparsity; the band is the dense network's mean ± std.")


def early_stop_figure(summary: Summary, options: Options) -> Figure:
    """From `analysis.summary` of `early_stop_iter`."""
    keys, rows = summary
    return by_weights(rows, keys, options, name="early_stop_vs_weights_remaining",
                      title="Early-stop iteration (minimum validation loss) vs. weights remaining",
                      ylabel="early-stop iteration", scale=1.0,
                      caption=f"Mean ± std over {_seeds_note(rows)}; the speed-of-learning measure of Frankle & "
                              "Carbin 2019: winning tickets stop earlier than the dense network, controls later.")



def matching_table(summary: Summary, options: Options, speed: Summary | None = None) -> Table:
    """From `analysis.summary` of `options.accuracy` (rule lmc), or of the early-stop accuracy with `speed`, the
    summary of the early-stop iteration (rule lth)."""
    keys, rows = summary
    variants = [v for v in options.variants if any(r.get(f"{v}_mean") is not None for r in rows if r["level"] > 0)]
    entries = matching(keys, rows, variants, options.tolerance, options.rule, speed[1] if speed else ())

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
    tolerance = f"{amount:g} std of dense over seeds" if unit == "std" else f"{amount:.2%} (accuracy points)"
    accuracy = "early stop accuracy" if options.rule == "lth" else options.accuracy.replace("_", " ")
    what = (f"its mean {accuracy} over seeds is at least dense's minus the tolerance ({tolerance})"
            if options.rule == "lmc" else f"its mean {accuracy} over seeds is at least dense's and its mean early-stop "
                                          "iteration at most dense's")
    return Table("matching", "Matching subnetworks" if options.rule == "lmc" else "Winning tickets",
                 ("setting", "dense", "tolerance", *(f"{v} matching down to" for v in variants), "best ticket"),
                 tuple(out), f"A level is matching when {what}. 'Down to' is the pruned level with the fewest "
                 "weights remaining that is matching; 'not at' lists denser levels that are not; 'the last level' "
                 "means the sweep stopped pruning before the ticket stopped matching.",
                 rule=f"Rule: {RULES[options.rule]}.")


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2%}" if std is None else f"{mean:.2%} ± {std:.2%}"


def summary_table(summary: Summary, options: Options, long_names: bool = False) -> Table:
    """From `analysis.summary` of `options.accuracy`: per setting and level, the dense network's and each
    variant's mean ± std over seeds. `long_names`: settings by their full dotted keys (`lth results`)."""
    keys, rows = summary
    label = _long_label if long_names else _label
    variants = [v for v in options.variants if any(r.get(f"{v}_mean") is not None for r in rows)]
    return Table("summary", f"{options.accuracy.replace('_', ' ').capitalize()} per level",
                 ("setting", "level", "remaining", "seeds", DENSE, *variants),
                 tuple((label(keys, [r[k] for k in keys]) or "all trials", str(r["level"]),
                        f"{r['weights_remaining']:.1%}", str(r["seeds"]), _mean_std(r["dense_mean"], r["dense_std"]),
                        *(_mean_std(r.get(f"{v}_mean"), r.get(f"{v}_std")) for v in variants)) for r in rows),
                 f"Mean ± std of {options.accuracy.replace('_', ' ')} over seeds; level 0's ticket is the dense "
                 "network.")


# ---------------------------------------------------------------------------------------------
# stability figures


def _sparsity(level: int, remaining: float) -> str:
    return "dense" if level == 0 else f"level {level} ({remaining:.1%} remaining)"


def instability_figure(summary: Summary, options: Options) -> Figure:
    """From `analysis.stability_summary`."""
    keys, rows = summary
    others = [k for k in keys if k not in STABILITY_AXES]
    lines, panels = layout(others, rows, options)
    ks = sorted({r["rewind_iter"] for r in rows})
    positive = [k for k in ks if k > 0]
    threshold = rows[0]["threshold"] * 100
    colors: dict[tuple, int] = {}
    out = []
    for (split, *panel_values), panel_rows in groups(rows, ["split", *panels]).items():
        series = []
        for (level, *setting), line_rows in groups(panel_rows, ["level", *lines]).items():
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
    keys = [k for k in settings(df) if k not in STABILITY_AXES]
    lines, panels = layout(keys, df[keys].to_dict("records") if keys else [{}], options)
    grouped = df.groupby([*keys, "level", "split", "rewind_iter", "alpha_index"], dropna=False, sort=True).agg(
        alpha=("alpha", "first"), error=("error", "mean"), remaining=("weights_remaining", "mean")).reset_index()
    records = clean(grouped.to_dict("records"))
    ks = sorted({r["rewind_iter"] for r in records})
    out = []
    for (level, split, *panel_values), panel_rows in groups(records, ["level", "split", *panels]).items():
        series = []
        for (*setting, k), line_rows in groups(panel_rows, [*lines, "rewind_iter"]).items():
            points = sorted((r["alpha"], r["error"] * 100) for r in line_rows)
            series.append(Series(", ".join(filter(None, [f"k={k}", _label(lines, setting)])),
                                 tuple(p[0] for p in points), tuple(p[1] for p in points), color=ks.index(k)))
        title = ", ".join(filter(None, [_sparsity(level, panel_rows[0]["remaining"]), f"{split} error",
                                        _label(panels, panel_values)]))
        out.append(Panel(title, tuple(series)))
    return Figure("error_along_path", "Error along the linear path between the two copies",
                  "Error of (1 - α)·W1 + α·W2, mean over pairs of copies and seeds, one line per rewind iteration k.",
                  "interpolation α", "error (%)", tuple(out))


ALIGNMENT_KEYS = ("model.width", "stability.align", "stability.pair")  # a sweep of any: the barrier against width


def alignment_figure(summary: Summary, options: Options) -> Figure:
    """From `analysis.stability_summary`: the barrier against the width multiplier, one line per other setting
    (which pair, how aligned, BatchNorm mode): before alignment (align none) and after, side by side."""
    keys, rows = summary
    lines, panels = layout([k for k in keys if k not in (*STABILITY_AXES, "model.width")], rows, options)
    out = []
    for (split, *panel_values), panel_rows in groups(rows, ["split", *panels]).items():
        series = []
        for setting, line_rows in groups(panel_rows, lines).items():
            points = sorted((float(r.get("model.width") or 1.0), r["instability_mean"] * 100,
                             (r["instability_std"] or 0.0) * 100) for r in line_rows)
            errors = tuple(p[2] for p in points)
            series.append(Series(_label(lines, setting) or "all trials", tuple(p[0] for p in points),
                                 tuple(p[1] for p in points), errors if any(errors) else None, len(series)))
        out.append(Panel(", ".join(filter(None, [f"{split} error", _label(panels, panel_values)])), tuple(series)))
    return Figure("barrier_vs_width", "Barrier vs. width, before and after alignment",
                  "The barrier (instability) between the two networks against the width multiplier (model.width), mean "
                  "± std over pairs and seeds; align=none is before alignment (Entezari et al. 2022; Ainsworth et al. "
                  "2023: barriers fall with width and vanish after permutation).",
                  "width multiplier", "barrier (%)", tuple(out), xscale="log")


def stability_table(summary: Summary, long_names: bool = False) -> Table:
    """From `analysis.stability_summary`. `long_names`: settings by their full dotted keys (`lth results`)."""
    keys, rows = summary
    label = _long_label if long_names else _label
    return Table("stability", "Instability per setting", ("setting", "split", "k", "remaining", "pairs",
                                                          "instability", "endpoint error", "stable pairs"),
                 tuple((label(keys, [r[k] for k in keys]) or "all trials", r["split"], str(r["rewind_iter"]),
                        f"{r['weights_remaining']:.1%}", str(r["pairs"]),
                        _mean_std(r["instability_mean"], r["instability_std"]), f"{r['endpoint_error']:.2%}",
                        f"{r['stable_fraction']:.0%}") for r in rows),
                 f"Mean ± std over pairs of copies; stable: instability below {rows[0]['threshold']:.0%}.")

