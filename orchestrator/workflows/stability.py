"""`kind: stability`: one trial is one linear-mode-connectivity analysis (`trainables.stability.StabilityRun`),
committed and reported after every replicate (pair of copies), and after every level of the IMP run that
finds its mask."""

from __future__ import annotations

import io
from typing import Any, Mapping

import yaml

from orchestrator.workflows import MlflowMetrics, Rows, Workflow, csv_bytes, stamp
from orchestrator.workflows.imp import level_line, level_metrics, row_lines
from trainables.config import Config, ConfigError, as_made, from_dict, mask_key
from trainables.layout import CONFIG, IMP_DIR, RESULTS, STABILITY_PATH, STABILITY_SUMMARY, RunLayout
from trainables.results import LEVELS_SCHEMA, STABILITY_PATH_SCHEMA, STABILITY_SUMMARY_SCHEMA, endpoint_error

SPLITS = ("train", "val", "test")
IMP_RESULTS = f"{IMP_DIR}/{RESULTS}"  # the analysis's own IMP run, while it finds level L's mask
# Per split, what a pair of copies measures: Tune reports `{name}_{split}` (the mean over the pairs so far),
# MLflow logs `{split}/{name}` with step = replicate.
QUANTITIES = {"instability": lambda r: r["instability"], "endpoint_error": endpoint_error,
              "stable": lambda r: float(r["stable"])}


def summary_metrics(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in sorted({r["split"] for r in rows}, key=SPLITS.index):
        mine = [r for r in rows if r["split"] == split]
        for name, value in QUANTITIES.items():
            out[f"{name}_{split}"] = sum(value(r) for r in mine) / len(mine)
        out[f"stable_{split}"] = out[f"instability_{split}"] < threshold  # the mean pair, not the fraction
    return out


def find_mask(directory: str, cfg: Config, level: int) -> tuple[str, Any] | None:
    """(trial id, mask) of level `level` from a trial of the IMP sweep in `directory` whose config computes the
    same masks as `cfg` (`trainables.config.mask_key`; a config stored before a protocol key existed is read
    as it was made), or None if no trial there has it."""
    import torch

    from orchestrator.sweep_folder import stored_trials
    from trainables.masks import Mask

    wanted = mask_key(cfg)
    for trial in stored_trials(directory, (RESULTS,)).values():
        if trial.checkpoint is None:
            continue
        try:
            with trial.fs.open_input_stream(f"{trial.checkpoint}/{CONFIG}") as f:
                stored = from_dict(as_made(yaml.safe_load(f.read()))[0], f"{trial.checkpoint}/{CONFIG}")
            if mask_key(stored) != wanted:
                continue
            with trial.fs.open_input_file(f"{trial.checkpoint}/{RunLayout.mask_name(level)}") as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        except (OSError, ValueError, ConfigError, yaml.YAMLError):
            continue  # not this trial: another config, or it has not reached `level`
        return trial.trial_id, Mask.from_state(state)
    return None


def error_plot(path_rows: list[dict[str, Any]], title: str) -> bytes:
    """Error along the line between the two copies, one line per split and replicate."""
    from orchestrator.report.figures import Figure, Panel, Series
    from orchestrator.report.render import png

    lines = []
    for split in sorted({r["split"] for r in path_rows}):
        for replicate in sorted({r["replicate"] for r in path_rows}):
            points = sorted((r["alpha"], r["error"] * 100) for r in path_rows
                            if r["split"] == split and r["replicate"] == replicate)
            lines.append(Series(f"{split}, pair {replicate}", *map(tuple, zip(*points)), color=len(lines)))
    return png(Figure("error_vs_alpha", title, "", "interpolation alpha", "error (%)", (Panel("", tuple(lines)),)))


class StabilityWorkflow(Workflow):
    name = "stability"
    description = "stability analyses (linear mode connectivity)"
    unit = "replicate"
    run_tables = {STABILITY_PATH: STABILITY_PATH_SCHEMA, STABILITY_SUMMARY: STABILITY_SUMMARY_SCHEMA,
                  IMP_RESULTS: LEVELS_SCHEMA}
    sweep_tables = (STABILITY_PATH, STABILITY_SUMMARY)
    commit_tables = (IMP_RESULTS, STABILITY_SUMMARY)
    masks_dir = IMP_DIR
    takes_masks_from = True

    def metrics(self) -> list[str]:
        return [f"{name}_{split}" for name in QUANTITIES for split in SPLITS]

    def split_of(self, metric: str) -> str | None:
        return metric.rsplit("_", 1)[-1] if metric.rsplit("_", 1)[-1] in SPLITS else None

    def validation_twin(self, metric: str) -> str:
        return f"{metric.rsplit('_', 1)[0]}_val"

    def make_run(self, cfg, workdir, reporter, dense_dir, masks_from):
        from trainables.stability import StabilityRun

        mask = None
        if masks_from and cfg.stability.level:
            found = find_mask(masks_from, cfg, cfg.stability.level)
            mask = found[1] if found else None
            source = f"{masks_from}/trial_{found[0]}" if found else "computed (no matching trial in masks_from)"
            reporter.note_mask(source, cfg.stability.level, mask)
        return StabilityRun(cfg, workdir, reporter, dense_dir=dense_dir, mask=mask)

    def trial_metrics(self, tables: Rows, cfg: Config, search: Any) -> dict[str, Any]:
        """The IMP level reached while finding the mask, then per split the means over the replicates so far."""
        summary, imp = tables[STABILITY_SUMMARY], tables[IMP_RESULTS]
        out: dict[str, Any] = {"level": 0, "replicates": 0}
        if imp:
            out |= level_metrics(imp, search)
        if summary:
            out |= {"level": cfg.stability.level, "weights_remaining": summary[0]["weights_remaining"],
                    "replicates": len({r["replicate"] for r in summary})}
            out |= summary_metrics(summary, cfg.stability.threshold)
            if search.algorithm == "optuna" and search.metric in out:
                out["objective"] = out[search.metric]
        return out

    def progress_line(self, result: Mapping[str, Any]) -> str:
        parts = level_line(result)
        if result.get("replicates"):
            parts.append(f"{result['replicates']} pair(s) of copies")
        parts += [f"{split} instability {result[f'instability_{split}']:.2%}" for split in SPLITS
                  if f"instability_{split}" in result]
        return ", ".join(parts)

    def trainings(self, cfg: Config, end: int, after_k: int) -> tuple[int, int]:
        trainings = cfg.stability.level + 2 * cfg.stability.replicates  # IMP up to L (no controls), then pairs
        if cfg.stability.pair == "independent":  # the second network's own dense run (never shared) and IMP run
            return trainings + 1 + cfg.stability.level, (trainings + cfg.stability.level) * after_k + end
        return trainings, trainings * after_k

    def mask_levels(self, cfg: Config) -> range:
        return range(cfg.stability.level + 1)

    def finished(self, cfg: Config, tables: Rows) -> bool:
        return len({r["replicate"] for r in tables.get(STABILITY_SUMMARY, [])}) == cfg.stability.replicates

    def mlflow_metrics(self, tables: Rows) -> MlflowMetrics:
        """`path/{split}_error_r{replicate}` (and `_loss`) with step = alpha index; per split `{split}/{name}` of
        each quantity with step = replicate."""
        out: MlflowMetrics = {}
        for row in tables.get(STABILITY_PATH, []):
            for column in ("error", "loss"):
                key = f"path/{row['split']}_{column}_r{row['replicate']}"
                out[(key, row["alpha_index"])] = (row[column], stamp(row))
        for row in tables.get(STABILITY_SUMMARY, []):
            for name, value in QUANTITIES.items():
                out[(f"{row['split']}/{name}", row["replicate"])] = (value(row), stamp(row))
            out[("weights_remaining", 0)] = (row["weights_remaining"], stamp(row))
            if row.get("union_remaining") is not None:  # along the path: both ends' masks (pair independent)
                out[("union_weights_remaining", 0)] = (row["union_remaining"], stamp(row))
        return out

    def mlflow_files(self, tables: Rows, title: str) -> dict[str, bytes]:
        path = tables.get(STABILITY_PATH, [])
        return {"stability.csv": csv_bytes(path, STABILITY_PATH_SCHEMA),
                "stability_summary.csv": csv_bytes(tables.get(STABILITY_SUMMARY, []), STABILITY_SUMMARY_SCHEMA),
                "error_vs_alpha.png": error_plot(path, title)}

    def lines(self, rows: Rows) -> list[str]:
        out = row_lines(rows.get(RESULTS, []))  # a level of the IMP run that finds the mask
        for r in rows.get(STABILITY_SUMMARY, []):
            out.append(f"pair {r['replicate']} {r['split']:<5}  {r.get('pair') or 'sgd_noise'}, align "
                       f"{r.get('align') or 'none'}, bn {r['bn']}: ends {r['error_1']:.2%} / {r['error_2']:.2%} error, "
                       f"max along the path {r['max_error']:.2%}: instability {r['instability']:.2%} "
                       f"({'stable' if r['stable'] else 'unstable'} at {r['threshold']:.0%})")
        return out


STABILITY = StabilityWorkflow()
