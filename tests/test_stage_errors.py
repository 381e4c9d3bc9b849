"""The stage scripts answer user mistakes with one line on stderr, exit status 1, and no traceback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py")], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_param_stops_train_before_any_work(project: Path) -> None:
    text = (project / "params.yaml").read_text().replace("epochs: 10", "epochs: ten")
    (project / "params.yaml").write_text(text)
    assert_one_line_error(run_stage("train", project), "train: error:", "params.yaml", "epochs = 'ten'")
    assert not (project / "models").exists() and not (project / "mlflow.db").exists()


def test_missing_prepared_data_says_which_stage_to_run(project: Path) -> None:
    assert_one_line_error(run_stage("train", project), "data/prepared/train.pt", "dvc repro prepare")


def test_missing_data_source_lists_files(project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    assert_one_line_error(run_stage("prepare", project), "prepare: error:", "nowhere", "train-images-idx3-ubyte")


def test_missing_model_for_evaluate(project: Path) -> None:
    assert_one_line_error(run_stage("evaluate", project), "evaluate: error:", "vae_fashion_mnist.pth")
