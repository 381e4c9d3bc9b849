"""Faults of the machine: a disk that fills up, a folder that cannot be written, memory that runs out.

A real small file system: a tmpfs mounted by the test (root may mount; CI runs as root), the
project copied into it and filled at a chosen moment with ``fallocate``, as a user's disk fills.
Each fault ends its stage or command in one line naming what and where (no traceback), leaves
every file whole (the resume state loads, SQLite's integrity check is ``ok``, no temporary or
truncated file left in place), and the rerun continues: training after its last saved epoch in
the same MLflow run, each epoch logged once; the other stages whole. Memory faults are raised,
with their real types, from the step that would run out (a CPU cannot run out of CUDA memory).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import fill
from PIL import Image
from project import mlflow_runs, new_project, readme_layout, run, set_params

from vae.pipeline.resume import STATE_FILE, saved_epoch

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4


def one_error_line(output: str, stage: str) -> str:
    """The stage's one error line in ``dvc repro``'s output (DVC adds its own ERROR line after it)."""
    lines = [line for line in output.splitlines() if line.startswith(f"{stage}: error:")]
    assert len(lines) == 1 and "Traceback" not in output, output[-4000:]
    return lines[0]


def assert_nothing_half_written(root: Path) -> None:
    """Every file the stages write is whole: no temporary file of an atomic write left, every picture opens,
    the resume state (when there is one) loads, and the MLflow store passes SQLite's integrity check."""
    for folder in ("data", "models", "metrics", "outputs", "checkpoints"):
        assert not list((root / folder).rglob(".*.tmp")), folder
        for picture in (root / folder).rglob("*.png"):
            Image.open(picture).load()
    if (root / STATE_FILE).exists():
        torch.load(root / STATE_FILE, weights_only=True)
    with sqlite3.connect(root / "mlflow.db") as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow
def test_a_disk_that_fills_up_stops_each_writer_in_one_line_and_the_rerun_goes_on(small_disk: Path) -> None:
    env = readme_layout(small_disk, n_train=1600, n_test=200)
    root = new_project(small_disk / "main", env, epochs=EPOCHS, train_limit=1500)
    set_params(root / "params.yaml", **{"train.batch_size": 32})  # an epoch lasts a second or two
    run(["git", "commit", "-qam", "epochs of a few seconds"], root, env)
    run(["dvc", "repro", "prepare"], root, env)

    # 1. the disk fills during training, after the first epoch was saved
    training = subprocess.Popen(
        ["dvc", "repro", "train"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while saved_epoch(root / STATE_FILE) < 1:
        assert training.poll() is None, training.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no epoch saved within 300 s"
        time.sleep(0.01)
    filler = fill(small_disk, leave=64 * 1024)
    output = training.communicate(timeout=300)[0]
    assert training.returncode != 0
    line = one_error_line(output, "train")
    saved = saved_epoch(root / STATE_FILE)
    assert 1 <= saved < EPOCHS and "no space left on the disk writing" in line and " free)" in line, line
    assert line.endswith(f"free space, then rerun `dvc repro`: it resumes after epoch {saved}"), line
    print(line)
    assert_nothing_half_written(root)
    assert not (root / "models" / "vae.pth").exists()
    filler.unlink()
    resumed = run(["dvc", "repro", "train"], root, env)
    assert f"resuming after epoch {saved}" in resumed
    runs, client = mlflow_runs(f"sqlite:///{root}/mlflow.db")
    [training_run] = [r for r in runs if r.data.tags.get("pipeline_stage") == "train"]  # the same run, resumed
    steps = [m.step for m in client.get_metric_history(training_run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # each epoch logged once

    # 2. the disk fills while evaluate writes its pictures (its metrics file fits, the first picture does not)
    run(["dvc", "repro", "classifier"], root, env)
    filler = fill(small_disk, leave=8 * 1024)
    failed = subprocess.run(["dvc", "repro", "evaluate"], cwd=root, env=env, capture_output=True, text=True)
    assert failed.returncode != 0
    line = one_error_line(failed.stdout + failed.stderr, "evaluate")
    assert "no space left on the disk writing" in line and "outputs/evaluate/vae_" in line, line
    print(line)
    assert_nothing_half_written(root)
    filler.unlink()
    run(["dvc", "repro"], root, env)
    assert "up to date" in run(["dvc", "status"], root, env)

    # 3. the disk is full when MLflow's SQLite store is written (promotion moves an alias, nothing else)
    filler = fill(small_disk, leave=0)
    promote = [sys.executable, "-m", "vae.tracking.promote"]
    failed = subprocess.run(promote, cwd=root, env=env, capture_output=True, text=True)
    assert failed.returncode == 1
    line = one_error_line(failed.stderr, "promote")
    assert "no space left on the disk writing" in line and "mlflow.db" in line, line
    print(line)
    assert_nothing_half_written(root)
    filler.unlink()
    assert "champion: version 1" in run(promote, root, env)

    # 4. a read-only outputs/ (a mount: root writes through any permission bits)
    outputs = root / "outputs"
    subprocess.run(["mount", "--bind", str(outputs), str(outputs)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(outputs)], check=True)
        generate = [sys.executable, "stages/generate.py"]
        failed = subprocess.run(generate, cwd=root, env=env, capture_output=True, text=True)
        assert failed.returncode == 1
        line = one_error_line(failed.stderr, "generate")
        assert "cannot write" in line and "Read-only file system" in line and "outputs/generate" in line, line
        print(line)
    finally:
        subprocess.run(["umount", str(outputs)], check=True)
    assert_nothing_half_written(root)
    run(["dvc", "repro", "-f", "-s", "generate"], root, env)
    assert "up to date" in run(["dvc", "status"], root, env)
