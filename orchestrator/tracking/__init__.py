"""MLflow: a view of a sweep's Parquet record, for browsing and comparing runs in the MLflow UI.

One MLflow run per sweep (the parent: the sweep file, its tables, report figures) and one child run
per trial, nested under it: the trial's resolved config as params, tags, the metrics and files its
workflow names (`orchestrator.workflows`). Three modules:
- `client`: where a sweep is tracked (URIs, experiments, the parent run) and batched requests;
- `sync`: bringing a child run level with a trial's rows, logging only what it lacks; `lth mlflow sync`;
- `live`: a trial's background thread that calls `sync` after every commit, so a slow or dead server
  never holds up training.
Every write goes through `sync.sync_trial`: a retried trial, a resumed sweep and `lth mlflow sync` take
the same path, so no run and no metric step is ever logged twice.
"""
