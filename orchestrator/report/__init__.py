"""Reports: the papers' figures and a self-contained HTML page, drawn from sweeps' Parquet tables.

Nothing is recomputed: every number comes from the sweep folders' tables, averaged over seeds by
`analysis`; `figures` describes what is shown, `render` draws it. `build` makes every figure and table
the tables have data for, with a one-line note for each one skipped.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import pyarrow as pa

from orchestrator import sweep_folder
from orchestrator.report import analysis
from orchestrator.report.analysis import ReportError
from orchestrator.report.figures import (Options, Report, accuracy_figure, early_stop_figure, found_variants,
                                         matching_table, start_accuracy_figure, summary_table)
from orchestrator.report.stability_figures import (ALIGNMENT_KEYS, alignment_figure, instability_figure, path_figure,
                                                   stability_table)
from trainables.layout import RESULTS, STABILITY_PATH, STABILITY_SUMMARY

__all__ = ["Options", "Report", "ReportError", "build", "load"]


def build(tables: Mapping[str, pa.Table], options: Options, title: str, header: str = "") -> Report:
    """Every figure and table the tables (file name -> a sweep table, possibly empty) have data for; a
    note for each one skipped."""
    if options.x not in analysis.X_COLUMNS:
        raise ReportError(f"--x {options.x!r}: expected one of {', '.join(analysis.X_COLUMNS)}")
    report = Report(title, header)
    results, path, summary = (tables.get(n) for n in (RESULTS, STABILITY_PATH, STABILITY_SUMMARY))
    if results is not None and results.num_rows:
        accuracy = analysis.summary(results, options.accuracy)  # once: the figures and tables share them
        unknown = [v for v in options.variants or () if v not in found_variants(accuracy[1])]
        if unknown:
            raise ReportError(f"--variants: unknown {', '.join(unknown)} (not in these sweeps); choose from "
                              f"{', '.join(found_variants(accuracy[1]))}")
        speed = analysis.summary(results, "early_stop_iter")
        matched = analysis.summary(results, "early_stop_accuracy") if options.rule == "lth" else accuracy
        report.figures += [accuracy_figure(accuracy, options), early_stop_figure(speed, options)]
        report.tables += [matching_table(matched, options, speed), summary_table(accuracy, options)]
        if "start_accuracy" in results.column_names and results.column("start_accuracy").null_count < results.num_rows:
            report.figures.append(start_accuracy_figure(analysis.summary(results, "start_accuracy"), options))
    else:
        report.notes.append(f"skipped accuracy and early-stop vs. weights remaining and the matching table: no IMP "
                            f"results ({RESULTS}); they come from IMP sweeps (`kind: imp`)")
    if summary is not None and summary.num_rows:
        stability = analysis.stability_summary(summary)
        report.figures.append(instability_figure(stability, options))
        if set(ALIGNMENT_KEYS) & set(stability[0]):
            report.figures.append(alignment_figure(stability, options))
        report.tables.append(stability_table(stability))
    else:
        report.notes.append(f"skipped instability vs. rewind iteration: no stability results ({STABILITY_SUMMARY}); "
                            "they come from stability sweeps (`kind: stability`, e.g. sweeps/stability_lenet.yaml)")
    if path is not None and path.num_rows:
        report.figures.append(path_figure(path, options))
    else:
        report.notes.append(f"skipped error along the interpolation path: no stability path ({STABILITY_PATH})")
    return report


def load(directories: Sequence[str]) -> tuple[dict[str, pa.Table], str]:
    """The sweeps' tables (file name -> all their rows; with several sweeps, the sweep's name becomes a
    setting of its own) and their files' opening comments."""
    tables: dict[str, list[pa.Table]] = {}
    headers = []
    for directory in directories:
        found = sweep_folder.read_tables(directory)
        if not any(t.num_rows for t in found.values()):
            raise ReportError(f"{directory}: no rows in {', '.join(found)}: not a sweep folder "
                              "(<storage>/<sweep name>), or no trial has finished a level yet")
        for name, table in found.items():
            if len(directories) > 1 and table.num_rows:
                overrides = [json.dumps({**json.loads(o), "sweep": s}, sort_keys=True)
                             for o, s in zip(table.column("overrides").to_pylist(), table.column("sweep").to_pylist())]
                table = table.set_column(table.schema.get_field_index("overrides"), "overrides", pa.array(overrides))
            tables.setdefault(name, []).append(table)
        headers.append(sweep_folder.header(directory))
    return {name: pa.concat_tables(parts) for name, parts in tables.items()}, "\n\n".join(filter(None, headers))
