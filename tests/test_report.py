"""Reports from small synthetic sweep tables: each figure's series and axes, the matching table, the HTML page."""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from orchestrator import fs, report, sweep_folder
from orchestrator.report import analysis, figures, render, stability_figures
from orchestrator.tracking import client as tracking
from trainables.layout import RESULTS, STABILITY_PATH, STABILITY_SUMMARY
from orchestrator.cli import main

WHEN = datetime(2026, 1, 1, tzinfo=timezone.utc)
SEEDS = (0, 1, 2)
OFFSET = {0: -0.01, 1: 0.0, 2: 0.01}  # per seed: every mean below is exactly the listed value, std 0.01
# Mean test accuracy per (lr, variant) and level; level 0 is the dense network.
ACCURACY = {
    (0.01, "dense"): [0.91],
    (0.01, "ticket"): [None, 0.915, 0.905, 0.899],  # matching (>= 0.91 - 0.01) down to level 2
    (0.01, "reinit"): [None, 0.895, 0.89, 0.88],  # never matching
    (0.01, "random_mask"): [None, 0.902, 0.85, 0.84],  # matching at level 1 only
    (0.1, "dense"): [0.89],
    (0.1, "ticket"): [None, 0.87, 0.89, 0.89],  # matching at levels 2 and 3 but not at level 1
    (0.1, "reinit"): [None, 0.86, 0.85, 0.84],
}


def imp_table() -> pa.Table:
    rows = []
    for (lr, variant), values in ACCURACY.items():
        for level, mean in enumerate(values):
            if mean is None:
                continue
            for seed in SEEDS:
                rows.append({"sweep": "study", "sweep_id": "abc123", "trial_id": f"{lr}-{seed}",
                             "overrides": json.dumps({"train.lr": lr, "seed": seed}), "seed": seed, "lr": lr,
                             "level": level, "variant": variant, "weights_remaining": 0.8 ** level,
                             "test_accuracy": mean + OFFSET[seed], "early_stop_iter": 1000 - 100 * level + 10 * seed,
                             "finished_at": WHEN})
    return pa.Table.from_pylist(rows, schema=sweep_folder.sweep_schema(RESULTS))


def stability_tables() -> tuple[pa.Table, pa.Table]:
    """A stability sweep over k in {0, 100, 1000} and levels {0, 2}: instability falls with k."""
    summary, path = [], []
    for k in (0, 100, 1000):
        for level in (0, 2):
            for replicate in (0, 1):
                for split in ("test", "train"):
                    common = {"sweep": "lmc", "sweep_id": "def456", "trial_id": f"{k}-{level}",
                              "overrides": json.dumps({"imp.rewind_iter": f"{k}it", "stability.level": level}),
                              "seed": 0, "level": level, "rewind_iter": k, "weights_remaining": 0.64 ** (level / 2),
                              "replicate": replicate, "split": split, "finished_at": WHEN}
                    instability = instability_of(k, level, replicate)
                    summary.append({**common, "error_1": 0.1, "error_2": 0.1, "instability": instability,
                                    "threshold": 0.02, "stable": instability < 0.02})
                    for i, alpha in enumerate(np.linspace(0, 1, 5)):
                        path.append({**common, "alpha_index": i, "alpha": float(alpha),
                                     "error": 0.1 + instability * float(np.sin(np.pi * alpha))})
    return (pa.Table.from_pylist(summary, schema=sweep_folder.sweep_schema(STABILITY_SUMMARY)),
            pa.Table.from_pylist(path, schema=sweep_folder.sweep_schema(STABILITY_PATH)))


def instability_of(k: int, level: int, replicate: int) -> float:
    return 0.3 / (1 + k / 50) + 0.05 * level / 2 + 0.01 * replicate


def values_of(variant: str, lr: float, column: str = "test_accuracy") -> tuple[list, list]:
    """Mean and std over seeds straight from the table, per level, in the order a figure draws them."""
    df = imp_table().to_pandas()
    df = df[(df["lr"] == lr) & (df["variant"].isin([variant] if variant != "ticket" else ["dense", "ticket"]))]
    stats = df.groupby("level")[column].agg(["mean", "std"])
    return list(stats["mean"]), list(stats["std"])


def test_accuracy_figure_has_a_line_per_setting_and_variant_with_seed_statistics():
    figure = figures.accuracy_figure(analysis.summary(imp_table()), report.Options())
    (panel,) = figure.panels  # two settings fit one panel
    series = {s.label: s for s in panel.series}
    assert set(series) == {"lr=0.01: ticket", "lr=0.01: reinit", "lr=0.01: random_mask", "lr=0.1: ticket",
                           "lr=0.1: reinit"}
    for (lr, variant) in [(0.01, "ticket"), (0.01, "reinit"), (0.1, "ticket"), (0.01, "random_mask")]:
        means, stds = values_of(variant, lr)
        s = series[f"lr={lr}: {variant}"]
        assert s.y == pytest.approx([m * 100 for m in means]) and s.err == pytest.approx([e * 100 for e in stds])
        assert s.x == pytest.approx([100 * 0.8 ** level for level in range(4 - len(means), 4)])
    assert series["lr=0.01: ticket"].color == series["lr=0.01: reinit"].color != series["lr=0.1: ticket"].color
    assert [(b.label, b.mean, b.std) for b in panel.bands] == [
        ("lr=0.01: dense", pytest.approx(91.0), pytest.approx(1.0)), ("lr=0.1: dense", pytest.approx(89.0),
                                                                        pytest.approx(1.0))]

    drawn = render.draw(figure)
    ax = drawn.axes[0]
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    assert left > 100 > 51 > right  # 100% remaining on the left
    labels = ax.get_legend_handles_labels()[1]
    assert set(series) | {"lr=0.01: dense", "lr=0.1: dense"} <= set(labels)
    container = next(c for c in ax.containers if c.get_label() == "lr=0.1: reinit")
    assert list(container.lines[0].get_ydata()) == pytest.approx([86.0, 85.0, 84.0])


def test_variants_option_and_early_stop_figure():
    options = report.Options(variants=("ticket",))
    figure = figures.early_stop_figure(analysis.summary(imp_table(), "early_stop_iter"), options)
    series = {s.label: s for s in figure.panels[0].series}
    assert set(series) == {"lr=0.01: ticket", "lr=0.1: ticket"}
    means, stds = values_of("ticket", 0.1, "early_stop_iter")
    assert series["lr=0.1: ticket"].y == pytest.approx(means) and series["lr=0.1: ticket"].err == pytest.approx(stds)
    assert figure.xscale == "log" and figure.invert_x and figure.ylabel == "early-stop iteration"


def test_matching_table_from_the_data_and_its_tolerance_flag():
    summary = analysis.summary(imp_table())
    table = figures.matching_table(summary, report.Options())
    assert table.columns == ("setting", "dense", "tolerance", "ticket matching down to", "reinit matching down to",
                             "random_mask matching down to", "best ticket")
    rows = {row[0]: row for row in table.rows}
    assert rows["lr=0.01"][1:] == ("91.00% ± 1.00%", "1.00%", "64.0% (level 2)", "none", "80.0% (level 1)",
                                   "91.50% at 80.0%")
    assert rows["lr=0.1"][3:5] == ("51.2% (level 3), the last level; not at 80.0%", "none")
    wide = {row[0]: row for row in figures.matching_table(summary, report.Options(tolerance="2std")).rows}
    assert wide["lr=0.01"][2:4] == ("2.00%", "51.2% (level 3), the last level")
    points = {row[0]: row for row in figures.matching_table(summary, report.Options(tolerance="0.55pt")).rows}
    assert points["lr=0.01"][2:4] == ("0.55%", "64.0% (level 2)")  # 0.905 >= 0.91 - 0.0055 > 0.899
    with pytest.raises(report.ReportError, match="1std"):
        analysis.parse_tolerance("one std")


def test_one_seed_has_no_std_so_matching_means_at_least_dense():
    table = imp_table().filter(pa.compute.equal(imp_table().column("seed"), 1))
    (entry, _) = analysis.matching(*analysis.summary(table), ["ticket"], "1std")
    assert entry["dense_std"] is None and entry["tolerance"] == 0 and "one seed" in entry["tolerance_note"]
    assert entry["ticket"] == {"level": 1, "weights_remaining": pytest.approx(0.8), "all_levels": False,
                               "gaps": []}  # 0.905 < 0.91 from level 2 on


def test_layout_splits_many_settings_into_panels_and_checks_the_keys():
    rows = [{"a": a, "b": b, "c": c} for a in (1, 2) for b in ("x", "y", "z") for c in (0.1, 0.2)]
    assert figures.layout(["a", "b", "c"], rows, report.Options()) == (["b"], ["a", "c"])
    assert figures.layout(["a", "b", "c"], rows, report.Options(group_by=("a",))) == (["a"], ["b", "c"])
    assert figures.layout(["a", "b", "c"], rows, report.Options(panel_by=("b",))) == (["a", "c"], ["b"])
    with pytest.raises(report.ReportError, match="not swept in this sweep: d"):
        figures.layout(["a", "b", "c"], rows, report.Options(group_by=("d",)))
    with pytest.raises(report.ReportError, match="neither grouped nor panelled: c"):
        figures.layout(["a", "b", "c"], rows, report.Options(group_by=("a",), panel_by=("b",)))


def test_instability_figure_per_sparsity_on_a_log_k_axis_with_the_threshold():
    summary, _ = stability_tables()
    figure = stability_figures.instability_figure(analysis.stability_summary(summary), report.Options())
    assert [p.title for p in figure.panels] == ["test error", "train error"]
    assert figure.xscale == "symlog" and figure.linthresh == 100  # k = 0 has a place on the log axis
    series = {s.label: s for s in figure.panels[0].series}
    assert set(series) == {"dense", "level 2 (64.0% remaining)"}
    for level, label in [(0, "dense"), (2, "level 2 (64.0% remaining)")]:
        assert series[label].x == (0, 100, 1000)
        expected = [np.mean([instability_of(k, level, r) for r in (0, 1)]) * 100 for k in (0, 100, 1000)]
        assert series[label].y == pytest.approx(expected)
        assert series[label].err == pytest.approx([np.std([0, 1], ddof=1)] * 3)  # replicates differ by 1 point
    assert figure.panels[0].hlines == (("stable below 2%", 2.0),)
    ax = render.draw(figure).axes[0]
    assert ax.get_xscale() == "symlog"
    assert any(list(line.get_ydata()) == [2.0, 2.0] for line in ax.lines)  # the threshold


def test_error_along_the_path_has_a_line_per_k():
    _, path = stability_tables()
    figure = stability_figures.path_figure(path, report.Options())
    assert [p.title for p in figure.panels] == ["dense, test error", "dense, train error",
                                               "level 2 (64.0% remaining), test error",
                                               "level 2 (64.0% remaining), train error"]
    series = {s.label: s for s in figure.panels[2].series}
    assert set(series) == {"k=0", "k=100", "k=1000"}
    bump = np.mean([instability_of(100, 2, r) for r in (0, 1)])
    assert series["k=100"].x == pytest.approx(np.linspace(0, 1, 5))
    assert series["k=100"].y == pytest.approx([(0.1 + bump * np.sin(np.pi * a)) * 100 for a in np.linspace(0, 1, 5)])
    assert render.draw(figure).axes[0].get_xscale() == "linear"


@pytest.mark.slow
def test_the_html_page_embeds_every_figure_and_table(tmp_path):
    summary, path = stability_tables()
    built = report.build({RESULTS: imp_table(), STABILITY_SUMMARY: summary, STABILITY_PATH: path},
                         report.Options(), "LTH report: study", "Reproduces: a test")
    assert built.notes == []
    files = render.write(built, tmp_path, ["sweeps/study"])
    assert sorted(f.name for f in files) == sorted([
        "accuracy_vs_weights_remaining.png", "early_stop_vs_weights_remaining.png",
        "instability_vs_rewind_iteration.png", "error_along_path.png", "matching.csv", "summary.csv",
        "stability.csv", "report.html"])
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert images[0] == base64.b64encode((tmp_path / "accuracy_vs_weights_remaining.png").read_bytes()).decode()
    assert "<td>64.0% (level 2)</td>" in page and "Reproduces: a test" in page
    assert "<td>lr=0.01</td><td>0</td><td>100.0%</td><td>3</td><td>91.00% ± 1.00%</td>" in page  # summary table
    assert (tmp_path / "matching.csv").read_text().splitlines()[1].startswith("lr=0.01,91.00% ± 1.00%,1.00%")


def write_sweep_folder(directory, tracking_uri=None):
    fs.write_table(imp_table(), str(directory), RESULTS)
    (directory / sweep_folder.SWEEP_YAML).write_text("# resolved copy of sweeps/study.yaml\n# Reproduces: nothing\n"
                                              "name: study\n")
    if tracking_uri:
        (directory / sweep_folder.SWEEP_JSON).write_text(json.dumps(
            {"sweep_id": "abc123", "tracking_uri": tracking_uri, "experiment": "study"}))


@pytest.mark.slow
def test_lth_report_skips_what_it_has_no_data_for_and_logs_to_the_sweep_run(tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_sweep_folder(folder, uri)
    target = tracking.open_sweep(uri, "study", "study", "abc123", "name: study\n", {})

    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(notes) == 2 and "instability" in notes[0] and "interpolation path" in notes[1]
    assert f"logged under report/ in the sweep's run {target.parent_run_id}" in out
    written = {p.name for p in (folder / "report").iterdir()}
    assert written == {"accuracy_vs_weights_remaining.png", "early_stop_vs_weights_remaining.png", "matching.csv",
                       "summary.csv", "report.html"}
    logged = {a.path for a in tracking.client(uri).list_artifacts(target.parent_run_id, "report")}
    assert logged == {f"report/{name}" for name in written}
    assert "Reproduces: nothing" in (folder / "report" / "report.html").read_text()


def test_lth_report_names_the_problem(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no rows in results.parquet" in capsys.readouterr().err
    folder = tmp_path / "study"
    folder.mkdir()
    write_sweep_folder(folder)
    assert main(["report", str(folder), "--group-by", "train.rate", "--no-mlflow"]) == 2
    assert "not swept in this sweep: train.rate; the swept keys are train.lr" in capsys.readouterr().err
    assert main(["report", str(folder), "--variants", "ticket,winner"]) == 2
    assert "unknown winner" in capsys.readouterr().err
    assert main(["report", str(folder), "--out", str(tmp_path / "out")]) == 0
    assert "is not tracked" in capsys.readouterr().out and (tmp_path / "out" / "report.html").exists()


def test_the_lmc_and_lth_matching_rules_on_a_three_seed_table():
    # Early-stop accuracy and iteration per level (mean over seeds 0, 1, 2, std 0.01 and 10 iterations).
    levels = {0: (0.90, 1000), 1: (0.905, 800), 2: (0.895, 700), 3: (0.92, 1200), 4: (0.91, 900)}
    rows = [{"sweep": "s", "sweep_id": "x", "trial_id": f"t{seed}", "overrides": json.dumps({"seed": seed}),
             "seed": seed, "level": level, "variant": "dense" if level == 0 else "ticket",
             "weights_remaining": 0.8 ** level, "test_accuracy": acc, "early_stop_accuracy": acc + OFFSET[seed],
             "early_stop_iter": it + 10 * (seed - 1), "finished_at": WHEN}
            for level, (acc, it) in levels.items() for seed in SEEDS]
    table = pa.Table.from_pylist(rows, schema=sweep_folder.sweep_schema(RESULTS))
    accuracy, speed = analysis.summary(table, "early_stop_accuracy"), analysis.summary(table, "early_stop_iter")
    lmc = figures.matching_table(accuracy, report.Options(variants=("ticket",), accuracy="early_stop_accuracy"))
    lth = figures.matching_table(accuracy, report.Options(variants=("ticket",), rule="lth"), speed)
    # Within one std (0.89 and up): every level, level 2's 0.895 too and level 3 although it is slower.
    assert lmc.rows[0][2:4] == ("1.00%", "41.0% (level 4), the last level") and lmc.title == "Matching subnetworks"
    # No lower accuracy in no more iterations: level 2 is less accurate, level 3 slower.
    assert lth.rows[0][2:4] == ("0.00%", "41.0% (level 4), the last level; not at 64.0%, 51.2%")
    assert lth.title == "Winning tickets" and "Frankle & Carbin 2019" in lth.rule and "Frankle et al. 2020" in lmc.rule
    page = render.html_page(report.Report("t", "", tables=[lth]), {}, ["s"])
    assert f"<p class='rule'>{html.escape(lth.rule)}</p>" in page
    with pytest.raises(report.ReportError, match="--rule 'lmcc'"):
        analysis.matching([], accuracy[1], ["ticket"], "1std", "lmcc")


def test_the_barrier_against_width_per_alignment_before_and_after():
    rows = []
    for width in (1, 2, 4):
        for align, barrier in (("none", 0.3), ("weights", 0.1 / width)):
            for seed in SEEDS:
                rows += [{"sweep": "align", "sweep_id": "g1", "trial_id": f"{width}-{align}-{seed}", "seed": seed,
                          "overrides": json.dumps({"model.width": width, "stability.align": align, "seed": seed}),
                          "level": 0, "rewind_iter": 0, "weights_remaining": 1.0, "replicate": 0, "split": "test",
                          "error_1": 0.1, "error_2": 0.1, "instability": barrier + OFFSET[seed], "threshold": 0.02,
                          "stable": False, "pair": "independent", "align": align, "width": float(width),
                          "finished_at": WHEN}]
    summary = analysis.stability_summary(summary_table(rows))
    figure = stability_figures.alignment_figure(summary, report.Options())
    (panel,) = figure.panels
    assert figure.xlabel == "width multiplier" and panel.title == "test error"
    assert [s.label for s in panel.series] == ["align=none", "align=weights"]
    assert panel.series[0].x == (1.0, 2.0, 4.0) and panel.series[0].y == pytest.approx((30, 30, 30))
    assert panel.series[1].y == pytest.approx((10, 5, 2.5)) and panel.series[1].err == pytest.approx((1, 1, 1))
    names = [f.name for f in report.build({STABILITY_SUMMARY: summary_table(rows)}, report.Options(), "t").figures]
    assert "barrier_vs_width" in names


def summary_table(rows):
    return pa.Table.from_pylist(rows, schema=sweep_folder.sweep_schema(STABILITY_SUMMARY))
