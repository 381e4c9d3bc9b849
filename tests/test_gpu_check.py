"""benchmarks/gpu_check.py, the one-shot GPU check, runs its small version here so that it cannot rot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from project import clean_env, run

REPO = Path(__file__).resolve().parents[1]
ROWS = [
    "dvc repro -s prepare",
    "dvc repro -s train",
    "dvc repro -s classifier",
    "dvc repro -s evaluate",
    "dvc repro -s generate",
    "train: 1 epochs (MLflow run)",
    "train images/s, fp32, batch 128",
    "train images/s, fp32, batch 512",
    "train images/s, bf16, batch 128",
    "train images/s, bf16, batch 512",
    "host-data tensors (GPU copies) in one epoch of",
    "log decoder + encoder to MLflow",
    "mlflow models serve: first answer",
    "sweep of 2 configs, gpu 0 each",
    "  trials per hour",
    "same-seed spread (train.json, relative)",
]


@pytest.mark.slow
def test_the_gpu_check_prints_every_step_on_a_cpu(tmp_path: Path) -> None:
    from conftest import write_fashion_mnist

    env = clean_env(write_fashion_mnist(tmp_path / "idx", 800, 300))  # 256 for validation, 512 to train
    out = run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--small"], tmp_path, env, timeout=900)
    print(out)
    lines = out.splitlines()
    assert lines[0].startswith("gpu_check: cpu (CPU figures, not a GPU's), torch ") and "small sizes" in lines[0]
    table = lines[2:]
    assert [row for row in ROWS if not any(line.startswith(row) for line in table)] == []
    columns = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in table)}
    [(syncs_step, (syncs, target))] = [(k, v) for k, v in columns.items() if k.startswith("host-data tensors")]
    assert syncs_step.endswith("one epoch of 4 steps") and syncs == "0"  # 512 images, batches of 128: no copies
    assert columns["train: 1 epochs (MLflow run)"][1] == "< 15 s"  # the GPU targets stand beside CPU figures
    # one seed, one machine, one thread count: the same numbers
    assert float(columns["same-seed spread (train.json, relative)"][0]) == 0.0
