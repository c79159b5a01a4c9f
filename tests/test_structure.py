"""The shape of the house: a leaf config, light commands, small modules, no branching on a kind's name."""

from __future__ import annotations

import pytest

import ast
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator import sweep_folder, trial_folder
from orchestrator.workflows import KINDS

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "trainables").rglob("*.py"), *(ROOT / "orchestrator").rglob("*.py")])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_config_is_a_leaf():
    """The config package imports nothing else of the project (its schema builder is its own module)."""
    outside = {m for p in (ROOT / "trainables" / "config").glob("*.py") for m in _imports(p)
               if m.split(".")[0] in ("trainables", "orchestrator") and not m.startswith("trainables.config")}
    assert not outside
    assert not {m for p in (ROOT / "trainables").rglob("*.py") for m in _imports(p)
                if m.split(".")[0] in ("orchestrator", "ray", "mlflow")}  # trainables stands alone


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_nothing_outside_the_workflows_branches_on_a_kinds_name():
    kinds = set(KINDS.names())
    found = []
    for path in SOURCES:
        if "workflows" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value in kinds for o in operands):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found


LIGHT = """
import sys
heavy = lambda: sorted({m.split(".")[0] for m in sys.modules} & {"torch", "ray"})
from trainables.catalog import load_config
load_config(preset="resnet20", overrides=["train.lr=0.03", "model.arch=vgg16"])
print("config", heavy())
from orchestrator.cli import main
main(["sweep", "run", sys.argv[1], "--dry-run"])
print("dry run", heavy())
main(["results", sys.argv[2]])
print("results", heavy())
"""


@pytest.mark.slow
def test_checking_a_config_a_dry_run_and_results_load_neither_torch_nor_ray(tmp_path):
    from tests.test_sweep_folder import sweep_table

    sweep_table(tmp_path / "sweep")
    out = subprocess.run([sys.executable, "-c", LIGHT, str(ROOT / "sweeps" / "lr_sensitivity_resnet20.yaml"),
                          str(tmp_path / "sweep")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "config []" in out and "dry run []" in out and "results []" in out, out


def test_restoring_skips_a_checkpoint_whose_upload_was_cut_short(tmp_path):
    from trainables.layout import RESULTS, write_manifest
    from tests.test_sweep_folder import trial_rows
    import pyarrow.parquet as pq

    trial = tmp_path / "trial_x"
    for number, levels in ((1, 1), (2, 2)):
        checkpoint = trial / f"checkpoint_{number:06d}"
        checkpoint.mkdir(parents=True)
        pq.write_table(trial_rows(0.01, 0, levels=levels), checkpoint / RESULTS)
        (checkpoint / "weights.pt").write_bytes(b"w" * 100)
        write_manifest(checkpoint)
    fs = pafs.LocalFileSystem()
    assert trial_folder.latest_checkpoint(fs, str(trial), [RESULTS]) == (str(trial / "checkpoint_000002"), 5)
    newest = trial / "checkpoint_000002"
    (newest / "weights.pt").write_bytes(b"w" * 10)  # a file still being uploaded
    assert trial_folder.latest_checkpoint(fs, str(trial), [RESULTS]) == (str(trial / "checkpoint_000001"), 3)
    (newest / "weights.pt").unlink()  # ... or not uploaded yet
    assert trial_folder.latest_checkpoint(fs, str(trial), [RESULTS])[0] == str(trial / "checkpoint_000001")
    (newest / "manifest.json").unlink()  # the manifest itself not there yet
    assert trial_folder.latest_checkpoint(fs, str(trial), [RESULTS])[0] == str(trial / "checkpoint_000001")
    # Sweeps launched before checkpoints carried a manifest: taken by their row counts, as they were.
    assert trial_folder.latest_checkpoint(fs, str(trial), [RESULTS], manifests=False)[0] == str(newest)
    assert json.loads((trial / "checkpoint_000001" / "manifest.json").read_text())["weights.pt"] == 100
