"""IMP and methods at initialisation on one figure, against any of the three sparsity measures."""

import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from orchestrator import report, sweep_folder
from orchestrator.report import analysis, figures
from trainables.layout import RESULTS

# (method, level) -> (weights, effective, flops remaining); accuracy falls with the effective count
POINTS = {("imp", 0): (1.0, 1.0, 1.0), ("imp", 1): (0.4, 0.4, 0.5), ("imp", 2): (0.16, 0.15, 0.2),
          ("snip", 0): (1.0, 1.0, 1.0), ("snip", 1): (0.4, 0.35, 0.45), ("snip", 2): (0.16, 0.1, 0.18)}


def table() -> pa.Table:
    rows = []
    for (method, level), (nominal, effective, flops) in POINTS.items():
        for seed in (0, 1):
            rows.append({"sweep": "s", "sweep_id": "x", "trial_id": f"{method}-{seed}", "seed": seed, "level": level,
                         "overrides": json.dumps({"prune.method": method, "seed": seed}), "method": method,
                         "variant": "dense" if level == 0 else "ticket", "weights_remaining": nominal,
                         "effective_weights_remaining": effective, "flops_remaining": flops,
                         "test_accuracy": 0.9 * effective ** 0.05 + seed / 100, "early_stop_iter": 100,
                         "finished_at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
    return pa.Table.from_pylist(rows, schema=sweep_folder.sweep_schema(RESULTS))


@pytest.mark.parametrize("x", analysis.X_COLUMNS)
def test_imp_and_each_method_are_lines_of_one_figure_against_any_sparsity(x):
    figure = figures.accuracy_figure(analysis.summary(table()), report.Options(x=x))
    (panel,) = figure.panels
    series = {s.label: s for s in panel.series}
    assert set(series) == {"method=imp: ticket", "method=snip: ticket"}
    column = analysis.X_COLUMNS.index(x)
    for method in ("imp", "snip"):
        expected = [100 * POINTS[(method, level)][column] for level in range(3)]
        assert series[f"method={method}: ticket"].x == pytest.approx(expected)
    assert figure.xlabel == figures.X_LABELS[x]


def test_the_summary_table_shows_effective_and_flops_remaining_and_a_bad_x_is_refused():
    summary = analysis.summary(table())
    text = figures.summary_table(summary, report.Options(), True)
    assert text.columns[:5] == ("setting", "level", "remaining", "effective", "FLOPs")
    assert ("prune.method=snip", "2", "16.0%", "10.0%", "18.0%") == text.rows[-1][:5]
    with pytest.raises(analysis.ReportError, match="--x 'flops'"):
        report.build({RESULTS: table()}, report.Options(x="flops"), "t")
