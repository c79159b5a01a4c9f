"""The stability figures and table (Frankle et al. 2020, Figs. 2-5; the barrier against width of Entezari et al.
2022 and Ainsworth et al. 2023), as plain descriptions like `figures`' IMP figures."""

from __future__ import annotations

import pyarrow as pa

from orchestrator.report.analysis import Summary, clean, groups, settings
from orchestrator.report.figures import STABILITY_AXES, Figure, Options, Panel, Series, Table, _label, _long_label, \
    _mean_std, layout

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

