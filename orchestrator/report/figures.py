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

from orchestrator.report.analysis import RULES, X_COLUMNS, ReportError, Summary, clean, groups, matching, \
    parse_tolerance, settings
from trainables.catalog import CONTROLS
from trainables.results import DENSE, TICKET

MAX_LINES = 4  # settings per panel before the default layout splits them into panels
STABILITY_AXES = ("imp.rewind_iter", "stability.level")  # the x axis and the per-sparsity lines, not settings
PANEL_FIRST = ("imp.retrain",)  # by default a panel each (Renda et al. 2020 draw each mode apart), not lines


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
    variants: tuple[str, ...] | None = None  # which of the ticket and its controls to draw; None: all there are
    accuracy: str = "test_accuracy"  # or early_stop_accuracy: the test accuracy at the early-stop iteration
    tolerance: str = "1std"  # matching: within N std of dense (over seeds) or within N accuracy points ("0.5pt")
    rule: str = "lmc"  # lmc: matching within the tolerance; lth: the LTH paper's winning-ticket criterion
    x: str = "weights_remaining"  # or effective_weights_remaining, flops_remaining (analysis.X_COLUMNS)




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
    panels = list(options.panel_by if options.panel_by is not None else [k for k in keys if k in PANEL_FIRST])
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
    variants = options.variants or found_variants(rows)
    out = []
    for panel_values, panel_rows in groups(rows, panels).items():
        series, bands = [], []
        for setting, setting_rows in groups(panel_rows, lines).items():
            base = _label(lines, setting) or "all trials"
            first = setting_rows[0]
            bands.append(Band(f"{base}: dense", first["dense_mean"] * scale,
                              None if first["dense_std"] is None else first["dense_std"] * scale, colors[setting]))
            for variant in variants:
                points = sorted(((_x(r, variant, options.x) * 100, r[f"{variant}_mean"] * scale,
                                  r.get(f"{variant}_std")) for r in setting_rows
                                 if r.get(f"{variant}_mean") is not None and _x(r, variant, options.x) is not None),
                                reverse=True)
                if not points:
                    continue
                errors = [None if e is None else e * scale for _, _, e in points]
                series.append(Series(f"{base}: {variant}" if lines else variant, tuple(p[0] for p in points),
                                     tuple(p[1] for p in points),
                                     None if all(e is None for e in errors) else tuple(e or 0.0 for e in errors),
                                     colors[setting] if len(colors) > 1 else variants.index(variant), variant))
        out.append(Panel(_label(panels, panel_values), tuple(series), tuple(bands)))
    return Figure(name, title, caption, X_LABELS[options.x], ylabel, tuple(out), xscale="log", invert_x=True)


X_LABELS = {"weights_remaining": "weights remaining (%)",
            "effective_weights_remaining": "effective weights remaining (%, on an input-output path)",
            "flops_remaining": "FLOPs remaining (%, multiply-accumulates of conv and linear layers)"}


def _x(row: Mapping[str, Any], variant: str, x: str) -> float | None:
    """A summary row's position on the x axis for `variant` (effective and FLOPs remaining differ per mask)."""
    return row["weights_remaining"] if x == "weights_remaining" else row.get(f"{variant}_{x}")


def found_variants(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The ticket and every control that `analysis.summary` rows hold: the ticket first, then the controls in
    registry order (`lth list controls`), each name's parameter variants after it."""
    names = {k[:-5] for r in rows for k, v in r.items() if k.endswith("_mean") and v is not None} - {DENSE}
    order = CONTROLS.names()
    base = lambda v: v.split("(")[0]  # noqa: E731
    return tuple(sorted(names, key=lambda v: (v != TICKET, order.index(base(v)) if base(v) in order else len(order),
                                              v)))


def start_accuracy_figure(summary: Summary, options: Options) -> Figure:
    """From `analysis.summary` of `start_accuracy`."""
    keys, rows = summary
    return by_weights(rows, keys, options, name="start_accuracy_vs_weights_remaining",
                      title="Test accuracy at the start, before training, vs. weights remaining",
                      ylabel="test accuracy before training (%)",
                      caption=f"Mean ± std over {_seeds_note(rows)}: each masked network where its training starts "
                              "(Zhou et al. 2019's supermask measure); 100% is the dense network at k.")


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
                              "dense network); each control its own dashes (`lth list controls` says what "
                              "each is); the band is the dense network's mean ± std.")


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
    variants = [v for v in options.variants or found_variants(rows)
                if any(r.get(f"{v}_mean") is not None for r in rows if r["level"] > 0)]
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
    variants = [v for v in options.variants or found_variants(rows)
                if any(r.get(f"{v}_mean") is not None for r in rows)]
    measured = [x for x in X_COLUMNS[1:] if any(r.get(f"{TICKET}_{x}") is not None for r in rows)]  # newer tables
    return Table("summary", f"{options.accuracy.replace('_', ' ').capitalize()} per level",
                 ("setting", "level", "remaining", *(_X_HEADERS[x] for x in measured), "seeds", DENSE, *variants),
                 tuple((label(keys, [r[k] for k in keys]) or "all trials", str(r["level"]),
                        f"{r['weights_remaining']:.1%}", *(_percent(r.get(f"{TICKET}_{x}")) for x in measured),
                        str(r["seeds"]), _mean_std(r["dense_mean"], r["dense_std"]),
                        *(_mean_std(r.get(f"{v}_mean"), r.get(f"{v}_std")) for v in variants)) for r in rows),
                 f"Mean ± std of {options.accuracy.replace('_', ' ')} over seeds; level 0's ticket is the dense "
                 "network. Effective: the ticket's weights on a path from input to output (biases ignored); FLOPs: "
                 "its multiply-accumulates with pruned weights skipped, of the dense network's.")


_X_HEADERS = {"effective_weights_remaining": "effective", "flops_remaining": "FLOPs"}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
