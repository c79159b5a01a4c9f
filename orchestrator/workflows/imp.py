"""`kind: imp`: one trial is one IMP run (`trainables.imp.ImpRun`), committed and reported after every level."""

from __future__ import annotations

import re
from typing import Any, Mapping

from orchestrator.workflows import MlflowMetrics, Rows, Workflow, csv_bytes, stamp
from trainables.catalog import CONTROLS, METHODS, control_spec, from_zero
from trainables.config import Config, ConfigError
from trainables.layout import HISTORY, RESULTS
from trainables.results import DENSE, HISTORY_SCHEMA, LEVELS_SCHEMA, TICKET, as_ticket

# Tune: every variant's numbers at the level just finished as `{variant}_{column}` (the dense network's from
# level 0), each column with the split it is computed on. The test split reports (what the papers show); the
# validation split selects (the early-stop iteration is chosen by validation loss).
COLUMN_SPLITS = {"test_accuracy": "test", "test_loss": "test", "early_stop_accuracy": "test", "val_accuracy": "val",
                 "val_loss": "val", "early_stop_val_loss": "val", "early_stop_iter": "val"}
VALIDATION_TWIN = {"test_accuracy": "val_accuracy", "test_loss": "val_loss", "early_stop_accuracy": "val_accuracy"}
# MLflow: `{variant}/{column}` for each of these columns, step = level.
MLFLOW_COLUMNS = (*COLUMN_SPLITS, "start_accuracy", "train_seconds", "effective_weights_remaining",
                  "flops_remaining")
# What `lth imp` prints per row: (header, width, format, column).
_TABLE = [("level", 5, "{:>5}", "level"), ("variant", 24, "{:<24}", "variant"),
          ("remaining", 9, "{:>8.1%} ", "weights_remaining"), ("test acc", 8, "{:>8.2%}", "test_accuracy"),
          ("test loss", 9, "{:>9.4f}", "test_loss"), ("es iter", 7, "{:>7}", "early_stop_iter"),
          ("es acc", 7, "{:>7.2%}", "early_stop_accuracy"), ("seconds", 7, "{:>7.1f}", "train_seconds")]


def variants() -> tuple[str, ...]:
    """The variants with default parameters; a control with others is named by `catalog.control_variant`."""
    return (TICKET, DENSE, *CONTROLS.names())


def mlflow_name(variant: str) -> str:
    """A variant as MLflow allows in a metric name: random_mask(start=end) -> random_mask.start-end."""
    return re.sub(r"[^\w./ -]", "", variant.replace("(", ".").replace("=", "-").replace(", ", "."))


def level_summary(rows: list[dict[str, Any]], level: int) -> dict[str, Any]:
    """The Tune metrics of one level (and the dense network's, from level 0)."""
    out: dict[str, Any] = {}
    for r in rows:
        for variant in ([as_ticket(r["variant"])] if r["level"] == level else []) + (
                [DENSE] if r["variant"] == DENSE else []):
            out |= {f"{variant}_{column}": r[column] for column in COLUMN_SPLITS}
        if r["level"] == level:
            out["weights_remaining"] = r["weights_remaining"]
    return out


def level_metrics(rows: list[dict[str, Any]], search: Any) -> dict[str, Any]:
    """What an IMP trial reports after a level: that level's results and, for optuna, the objective so
    far (the metric at the last level, or at the level nearest `search.at_weights_remaining`)."""
    last = max(r["level"] for r in rows)
    out = {"level": last, **level_summary(rows, last)}
    if search.algorithm == "optuna":
        chosen = out
        if (target := search.at_weights_remaining) is not None:
            levels = [level_summary(rows, level) for level in sorted({r["level"] for r in rows})]
            chosen = min(levels, key=lambda m: abs(m["weights_remaining"] - target))
        if search.metric in chosen:
            out["objective"] = chosen[search.metric]
    return out


def level_line(result: Mapping[str, Any]) -> list[str]:
    parts = [f"level {result['level']}"]
    if "weights_remaining" in result:
        parts.append(f"{result['weights_remaining']:.1%} remaining")
    for key, value in result.items():
        if key.endswith("_test_accuracy") and key != f"{DENSE}_test_accuracy" and value is not None:
            parts.append(f"{key[:-len('_test_accuracy')]} {value:.2%}")
    return parts


def level_metrics_mlflow(rows: list[dict[str, Any]]) -> MlflowMetrics:
    """`{variant}/{column}` and `weights_remaining` with step = level; level 0's dense network is also the
    ticket at 100% of weights, so ticket curves start where the papers' figures do."""
    out: MlflowMetrics = {}
    for row in rows:
        for variant in {row["variant"], as_ticket(row["variant"])}:
            for column in MLFLOW_COLUMNS:
                if row.get(column) is not None:  # tables made before a column existed lack it
                    out[(f"{mlflow_name(variant)}/{column}", row["level"])] = (float(row[column]), stamp(row))
        out[("weights_remaining", row["level"])] = (float(row["weights_remaining"]), stamp(row))
    return out


def accuracy_plot(rows: list[dict[str, Any]], title: str) -> bytes:
    """Test accuracy against weights remaining (log axis, 100% on the left), one line per variant."""
    from orchestrator.report.figures import Figure, Panel, Series
    from orchestrator.report.render import png

    lines = []
    for variant in dict.fromkeys([TICKET, *(r["variant"] for r in rows if r["variant"] != DENSE)]):
        points = sorted(((r["weights_remaining"] * 100, r["test_accuracy"] * 100) for r in rows
                         if as_ticket(r["variant"]) == variant), reverse=True)
        if points:
            lines.append(Series(variant, *map(tuple, zip(*points)), color=len(lines), variant=variant))
    return png(Figure("accuracy_vs_weights_remaining", title, "", "weights remaining (%)", "test accuracy (%)",
                      (Panel("", tuple(lines)),), xscale="log", invert_x=True))


def header() -> str:
    return "  ".join(f"{name:<{width}}" if name == "variant" else f"{name:>{width}}" for name, width, _, _ in _TABLE)


def row_lines(rows: list[dict[str, Any]]) -> list[str]:
    return ["  ".join(fmt.format(row[column]) for _, _, fmt, column in _TABLE) for row in rows]


class ImpWorkflow(Workflow):
    name = "imp"
    description = "IMP runs"
    unit = "level"
    run_tables = {RESULTS: LEVELS_SCHEMA, HISTORY: HISTORY_SCHEMA}
    sweep_tables = (RESULTS,)
    commit_tables = (RESULTS,)
    masks_dir = ""

    def metrics(self) -> list[str]:
        return ["weights_remaining", *(f"{v}_{c}" for v in variants() for c in COLUMN_SPLITS)]

    def split_of(self, metric: str) -> str | None:
        return next((split for column, split in COLUMN_SPLITS.items() if metric.endswith(f"_{column}")), None)

    def validation_twin(self, metric: str) -> str:
        column = next(c for c in VALIDATION_TWIN if metric.endswith(f"_{c}"))
        return metric[:-len(column)] + VALIDATION_TWIN[column]

    def renamed(self) -> dict[str, str]:
        return {f"{v}_accuracy": f"{v}_test_accuracy" for v in variants()}  # before metric names said their split

    def make_run(self, cfg, workdir, reporter, dense_dir, masks_from):
        from trainables.imp import ImpRun

        if METHODS.meta(cfg.prune.method).get("at_init"):
            raise ConfigError("prune.method", [f"{cfg.prune.method!r} chooses masks at initialisation: use `kind: "
                                               "pruning_at_init`, which runs IMP and those methods side by side"])
        return ImpRun(cfg, workdir, reporter, dense_dir=dense_dir)

    def trial_metrics(self, tables: Rows, cfg: Config, search: Any) -> dict[str, Any]:
        return level_metrics(tables[RESULTS], search)

    def progress_line(self, result: Mapping[str, Any]) -> str:
        return ", ".join(level_line(result))

    def trainings(self, cfg: Config, end: int, after_k: int) -> tuple[int, int]:
        whole = sum(from_zero(cfg.imp.retrain, control_spec(c)[1].get("start", "rewind")) for c in cfg.imp.controls)
        trainings = cfg.imp.levels * (1 + len(cfg.imp.controls))
        return trainings, (trainings - cfg.imp.levels * whole) * after_k + cfg.imp.levels * whole * end

    def mask_levels(self, cfg: Config) -> range:
        return range(cfg.imp.levels + 1)

    def finished(self, cfg: Config, tables: Rows) -> bool:
        return len({r["level"] for r in tables.get(RESULTS, [])}) == cfg.imp.levels + 1

    def mlflow_metrics(self, tables: Rows) -> MlflowMetrics:
        return level_metrics_mlflow(tables.get(RESULTS, []))

    def mlflow_files(self, tables: Rows, title: str) -> dict[str, bytes]:
        rows = tables.get(RESULTS, [])
        return {"results.csv": csv_bytes(rows, LEVELS_SCHEMA),
                "accuracy_vs_weights_remaining.png": accuracy_plot(rows, title)}

    def lines(self, rows: Rows) -> list[str]:
        return row_lines(rows.get(RESULTS, []))


IMP = ImpWorkflow()
