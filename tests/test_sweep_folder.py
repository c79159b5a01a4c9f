"""The sweep folder's Parquet table: atomic under a killed writer, readable by other tools, summarised by seed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import sweep_folder
from orchestrator.cli import main
from orchestrator.report import analysis
from trainables.layout import RESULTS
from trainables.results import LEVELS_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def trial_rows(lr: float, seed: int, levels: int = 2, controls=("reinit",)) -> pa.Table:
    """An IMP run's rows with accuracies that are a known function of (lr, seed, level, variant)."""
    rows = []
    for level in range(levels + 1):
        for variant in (["dense"] if level == 0 else ["ticket", *controls]):
            accuracy = 0.9 + lr + seed / 100 - level / 50 - (variant != "ticket" and level > 0) / 20
            rows.append({"run_name": f"r{lr}-{seed}", "config_hash": f"h{lr}-{seed}", "seed": seed, "lr": lr,
                         "level": level, "variant": variant, "weights_remaining": 0.8 ** level,
                         "test_accuracy": accuracy, "finished_at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
    return pa.Table.from_pylist(rows, schema=LEVELS_SCHEMA)


def sweep_table(directory: Path) -> sweep_folder.SweepTable:
    table = sweep_folder.SweepTable(str(directory), "study", "abc123", RESULTS)
    for i, (lr, seed) in enumerate((lr, seed) for lr in (0.01, 0.03) for seed in (0, 1, 2)):
        table.set(f"t{i}", {"train.lr": lr, "seed": seed}, trial_rows(lr, seed))
    table.save()
    return table


def test_summary_is_mean_and_std_over_seeds(tmp_path):
    sweep_table(tmp_path)
    keys, rows = analysis.summary(sweep_folder.read_table(str(tmp_path), RESULTS))
    assert keys == ["train.lr"]  # seeds are replicates, not settings
    assert [(r["train.lr"], r["level"]) for r in rows] == [(lr, lvl) for lr in (0.01, 0.03) for lvl in range(3)]
    for r in rows:
        base = 0.9 + r["train.lr"] - r["level"] / 50
        assert r["seeds"] == 3 and r["weights_remaining"] == pytest.approx(0.8 ** r["level"])
        assert r["ticket_mean"] == pytest.approx(base + 0.01)  # seeds add 0, 1 and 2 points
        assert r["ticket_std"] == pytest.approx(0.01)  # sample std of 0, 0.01, 0.02
        assert r["dense_mean"] == pytest.approx(0.9 + r["train.lr"] + 0.01)
        if r["level"] > 0:
            assert r["reinit_mean"] == pytest.approx(base + 0.01 - 0.05)
        else:
            assert "reinit_mean" not in r


def test_lth_results_prints_table_csv_and_json(tmp_path, capsys):
    sweep_table(tmp_path)
    assert main(["results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train\.lr=0\.03\s+2\s+64\.0%\s+3\s+94\.00% ± 1\.00%\s+90\.00% ± 1\.00%\s+85\.00% ± 1\.00%", out)
    assert main(["results", str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and rows[0]["ticket_std"] == pytest.approx(0.01)
    assert main(["results", str(tmp_path), "--format", "csv"]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.startswith("train.lr,level,weights_remaining,seeds,dense_mean") and len(lines) == 6
    assert main(["results", str(tmp_path / "nothing")]) == 2
    assert "no rows" in capsys.readouterr().err


def test_a_trial_only_ever_adds_rows(tmp_path):
    table = sweep_table(tmp_path)
    assert not table.set("t0", {"train.lr": 0.01, "seed": 0}, trial_rows(0.01, 0, levels=1))
    assert table.set("t0", {"train.lr": 0.01, "seed": 0}, trial_rows(0.01, 0, levels=3))
    table.save()
    reread = sweep_folder.SweepTable(str(tmp_path), "study", "abc123", RESULTS)  # a resumed driver starts from the files
    assert reread.rows["t0"] == 7 and reread.table().num_rows == 7 + 5 * 5


WRITER = textwrap.dedent("""
    import sys
    from orchestrator import sweep_folder
    from tests.test_sweep_folder import trial_rows
    table = sweep_folder.SweepTable(sys.argv[1], "study", "abc123", "results.parquet")
    rows = trial_rows(0.01, 0, levels=1000)  # built once: the loop's time goes to writing the files
    for i in range(10_000):
        table.set(f"t{i}", {"train.lr": 0.01, "seed": i}, rows)
        table.save()
        print(i + 1, flush=True)  # rows of i + 1 trials are committed
""")


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_every_committed_row_readable(tmp_path):
    """SIGKILL at several moments while the writer writes a trial's file, which is most of its time, so most
    kills land mid-write (and leave the writer's temporary file behind): the dataset reads, each row once."""
    interrupted = 0
    for attempt, commits in enumerate((5, 20, 40, 10, 30, 50)):
        directory = tmp_path / str(attempt)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], cwd=ROOT, stdout=subprocess.PIPE,
                                  text=True)
        committed = [int(writer.stdout.readline()) for _ in range(commits)]
        time.sleep(0.005 * attempt)
        writer.send_signal(signal.SIGKILL)
        committed += [int(line) for line in writer.communicate()[0].split()]
        interrupted += bool(list(directory.rglob(".*.tmp")))
        table = sweep_folder.read_table(str(directory), RESULTS)
        trials = set(table.column("trial_id").to_pylist())
        # Every printed commit is there; at most the one being written when killed is there too.
        assert {f"t{i}" for i in range(committed[-1])} <= trials
        assert len(trials) <= committed[-1] + 1
        assert table.num_rows == len(trials) * 2001 and table.schema.equals(sweep_folder.sweep_schema(RESULTS))
        if interrupted >= 2:
            break
    assert interrupted >= 1, "no kill landed mid-write"


READER = textwrap.dedent("""
    import sys
    import duckdb, pandas, polars, pyarrow.dataset
    folder, single = sys.argv[1:]  # the dataset (results/) as README reads it, or the compacted results.parquet
    files = f"{folder}/*.parquet"
    for path, glob in ((folder, files), (single, single)):
        n_arrow = pyarrow.dataset.dataset(path, format="parquet").count_rows()
        n_pandas = len(pandas.read_parquet(path))
        n_polars = polars.read_parquet(glob).filter(polars.col("variant") == "ticket").height
        n_duck = duckdb.sql(f"SELECT count(*) FROM '{glob}' WHERE level = 0").fetchall()[0][0]
        finished = str(polars.read_parquet(glob)["finished_at"].dtype)
        print(n_arrow, n_pandas, n_polars, n_duck, finished)
    assert not any(m.split(".")[0] in ("orchestrator", "trainables") for m in sys.modules)
""")


@pytest.mark.slow
def test_the_table_reads_with_pyarrow_pandas_duckdb_and_polars_alone(tmp_path):
    sweep_table(tmp_path)
    sweep_folder.compact(str(tmp_path), RESULTS)
    out = subprocess.run([sys.executable, "-I", "-c", READER, str(tmp_path / "results"), str(tmp_path / RESULTS)],
                         capture_output=True, text=True, cwd=tmp_path, check=True).stdout.splitlines()
    for line in out:
        assert line.split()[:4] == ["30", "30", "12", "6"] and line.split()[4].startswith("Datetime")


def test_every_column_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [f.name for f in sweep_folder.sweep_schema(RESULTS) if f"`{f.name}`" not in readme]
    assert not missing, f"README's results schema lacks {missing}"
