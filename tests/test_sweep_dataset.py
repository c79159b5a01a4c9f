"""The sweep's tables as Parquet datasets: the same rows as the single table they replace, a compacted copy read
only while it holds everything, and sweep folders from before the datasets still read, resume and report."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import fs, sweep_folder
from orchestrator.cli import main
from tests.test_sweep_folder import trial_rows
from trainables.layout import RESULTS
from trainables.results import LEVELS_SCHEMA

# The quickstart's trials: 2 learning rates x 2 rewind points x 2 pruning rates, 4 levels, the reinit control.
QUICKSTART = [{"train.lr": lr, "imp.rewind_iter": k, "prune.rate": rate}
              for lr in (1.2e-3, 3e-3) for k in ("0it", "100it") for rate in (0.2, 0.5)]
LEVELS = 4


def single_table(trials: dict[str, tuple[dict, pa.Table]]) -> pa.Table:
    """The sweep table as drivers wrote it before the datasets: every trial's rows, in trial id order."""
    return pa.concat_tables([sweep_folder.sweep_rows(rows, RESULTS, "quickstart", "abc123", t, overrides)
                             for t, (overrides, rows) in sorted(trials.items())])


def quickstart_trials() -> dict[str, tuple[dict, pa.Table]]:
    """Trial id -> (overrides, its rows), with the early-stop columns the report draws."""
    out = {}
    for i, overrides in enumerate(QUICKSTART):
        rows = trial_rows(overrides["train.lr"], i, LEVELS).to_pylist()
        rows = [r | {"early_stop_iter": 100 * r["level"], "early_stop_accuracy": r["test_accuracy"]} for r in rows]
        out[f"a64cd_{i:05d}"] = (overrides, pa.Table.from_pylist(rows, schema=LEVELS_SCHEMA))
    return out


def record_as_a_sweep_does(directory, trials) -> sweep_folder.SweepTable:
    """Commits arrive level by level, the trials interleaved, each recorded as its checkpoint holds it."""
    table = sweep_folder.SweepTable(str(directory), "quickstart", "abc123", RESULTS)
    for level in range(LEVELS + 1):
        for t, (overrides, rows) in reversed(trials.items()):
            assert sweep_folder.record({RESULTS: table}, t, overrides, lambda name: rows.slice(0, 1 + 2 * level)) \
                == {RESULTS}
    return table


def test_the_dataset_of_the_quickstart_sweep_equals_the_single_table_row_for_row(tmp_path, monkeypatch):
    read = fs.read_table
    trials = quickstart_trials()
    record_as_a_sweep_does(tmp_path, trials)
    files = sweep_folder.dataset_files(str(tmp_path), RESULTS)
    assert len(files) == 8 and all(len(found) == LEVELS + 1 for found in files.values())  # a file per commit
    assert not (tmp_path / RESULTS).exists()
    old = single_table(trials)
    assert sweep_folder.read_table(str(tmp_path), RESULTS).equals(old)
    compacted = sweep_folder.compact(str(tmp_path), RESULTS)
    assert compacted.equals(old) and pq.read_table(tmp_path / RESULTS).replace_schema_metadata(None).equals(old)
    reads = []
    monkeypatch.setattr(fs, "read_table", lambda *args: reads.append(args[1]) or read(*args))
    assert sweep_folder.read_table(str(tmp_path), RESULTS).equals(old)
    assert reads == [f"{tmp_path}/{RESULTS}"]  # the compacted file alone


def test_a_compacted_table_is_read_with_the_files_written_after_it(tmp_path):
    trials = quickstart_trials()
    table = record_as_a_sweep_does(tmp_path, trials)
    sweep_folder.compact(str(tmp_path), RESULTS)
    more = trial_rows(0.01, 99, LEVELS)
    assert table.set("b0000_00000", {"train.lr": 0.01}, more)
    table.save()  # a resumed sweep's new trial
    assert sweep_folder.read_table(str(tmp_path), RESULTS).num_rows == 9 * more.num_rows
    assert pq.read_table(tmp_path / RESULTS).num_rows == 8 * more.num_rows
    sweep_folder.compact(str(tmp_path), RESULTS)
    assert json.loads(pq.read_metadata(tmp_path / RESULTS).metadata[sweep_folder.COMPACTED_FROM.encode()]) == \
        {t: more.num_rows for t in [*trials, "b0000_00000"]}


def test_the_driver_compacts_mid_sweep_and_readers_add_the_files_after(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_folder.SweepTable, "compact_every", 3)  # at least one per trial: every 8 files
    trials = quickstart_trials()
    table = record_as_a_sweep_does(tmp_path, trials)
    extent = json.loads(pq.read_metadata(tmp_path / RESULTS).metadata[sweep_folder.COMPACTED_FROM.encode()])
    after = [rows for t, found in sweep_folder.dataset_files(str(tmp_path), RESULTS).items() for rows, _ in found
             if rows > extent.get(t, 0)]
    assert len(after) < len(trials)  # readers scan fewer files than there are trials beside the compacted table
    assert pq.read_table(tmp_path / RESULTS).num_rows == sum(extent.values())
    overrides, rows = trials["a64cd_00003"]
    trials["a64cd_00003"] = overrides, pa.concat_tables([rows, trial_rows(0.01, 3, LEVELS + 1).slice(rows.num_rows)])
    assert table.set("a64cd_00003", overrides, trials["a64cd_00003"][1])
    table.save()  # one more file
    assert sweep_folder.read_table(str(tmp_path), RESULTS).equals(single_table(trials))


def test_a_failed_write_is_written_by_the_next_save(tmp_path, monkeypatch):
    table = sweep_folder.SweepTable(str(tmp_path), "quickstart", "abc123", RESULTS)
    table.set("t0", {}, trial_rows(0.01, 0, 1))
    monkeypatch.setattr(fs, "write_table", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    try:
        table.save()
    except OSError:
        pass
    monkeypatch.undo()
    table.set("t0", {}, trial_rows(0.01, 0, 2))
    table.save()
    assert [rows for rows, _ in sweep_folder.dataset_files(str(tmp_path), RESULTS)["t0"]] == [5]
    assert sweep_folder.read_table(str(tmp_path), RESULTS).num_rows == 5


def test_an_old_single_file_sweep_folder_reads_resumes_and_reports(tmp_path, capsys):
    trials = quickstart_trials()
    old = single_table({t: (o, rows.slice(0, 5)) for t, (o, rows) in trials.items()})  # stopped at level 2
    fs.write_table(old, str(tmp_path), RESULTS)
    assert sweep_folder.read_table(str(tmp_path), RESULTS).equals(old)
    assert main(["results", str(tmp_path)]) == 0 and "40 rows from" in capsys.readouterr().out
    assert main(["results", str(tmp_path), "--compact"]) == 0  # nothing to compact: the file is the table
    assert pq.read_metadata(tmp_path / RESULTS).metadata is None or \
        sweep_folder.COMPACTED_FROM.encode() not in pq.read_metadata(tmp_path / RESULTS).metadata
    # A resumed driver starts the dataset from the single file; trials then add their next levels.
    table = sweep_folder.SweepTable(str(tmp_path), "quickstart", "abc123", RESULTS)
    assert table.rows == {t: 5 for t in trials}
    for t, (overrides, rows) in trials.items():
        table.set(t, overrides, rows)
    table.save()
    assert sweep_folder.read_table(str(tmp_path), RESULTS).equals(single_table(trials))
    assert main(["results", str(tmp_path), "--compact"]) == 0
    assert pq.read_table(tmp_path / RESULTS).replace_schema_metadata(None).equals(single_table(trials))
    assert main(["report", str(tmp_path), "--no-mlflow"]) == 0
    assert (tmp_path / "report" / "report.html").exists()
