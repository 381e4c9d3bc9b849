"""The stage scripts answer user mistakes with one line on stderr, exit status 1, and no traceback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae.data import ImageSplit
from vae.model import VAE
from vae.storage import save_model, save_prepared

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test runs a stage script as its own process


def run_command(name: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py")], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
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
    assert_one_line_error(run_command("train", project), "train: error:", "params.yaml", "epochs = 'ten'")
    assert not (project / "models").exists() and not (project / "mlflow.db").exists()


def test_missing_prepared_data_says_which_stage_to_run(project: Path) -> None:
    assert_one_line_error(run_command("train", project), "data/prepared/train.pt", "dvc repro prepare")


def test_missing_data_source_lists_files(project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    assert_one_line_error(run_command("prepare", project), "prepare: error:", "nowhere", "train-images-idx3-ubyte")


def test_missing_model_for_evaluate(project: Path) -> None:
    for split in ("train", "val", "test"):  # prepared: what is missing is the model alone
        images = ImageSplit(torch.zeros(4, 1, 32, 32, dtype=torch.uint8), torch.arange(4))
        save_prepared(images, project / "data" / "prepared" / f"{split}.pt")
    assert_one_line_error(run_command("evaluate", project), "evaluate: error:", "models/vae.pth", "not found")


@pytest.mark.parametrize("content", ["", "not a run id!\n"])
def test_bad_training_run_id_file_is_one_line_and_names_it(project: Path, content: str) -> None:
    save_model(VAE(latent_dim=2), project / "models" / "vae.pth")
    save_prepared(
        ImageSplit(torch.zeros(4, 1, 32, 32, dtype=torch.uint8), torch.arange(4)),
        project / "data/prepared/test.pt",
    )
    (project / "outputs").mkdir()
    (project / "outputs" / "train_run_id.txt").write_text(content)
    for stage in ("generate",):
        assert_one_line_error(
            run_command(stage, project), f"{stage}: error:", "outputs/train_run_id.txt", "dvc repro train"
        )
    (project / "outputs" / "train_run_id.txt").unlink()
    assert_one_line_error(run_command("generate", project), "outputs/train_run_id.txt: no MLflow run id")
    assert not (project / "outputs" / "generate").exists() and not (project / "mlflow.db").exists()


def test_missing_dvc_yaml_is_one_line(project: Path) -> None:
    (project / "dvc.yaml").unlink()
    assert_one_line_error(run_command("evaluate", project), "evaluate: error:", "dvc.yaml", "project root")
