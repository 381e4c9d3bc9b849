"""Interrupted training resumes exactly; an unreachable MLflow server fails fast; NaN keeps the last good state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_fashion_mnist
from project import empty_mlflow_store

from vae.data import read_split
from vae.pipeline.resume import STATE_FILE, saved_epoch
from vae.storage import save_prepared

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "stages" / "train.py")]
EPOCHS = 5  # of the kill-and-resume runs: the kill lands after epoch 1 and well before the last


def make_project(root: Path, source: Path, **train: object) -> Path:
    """A folder with params.yaml, dvc.yaml and prepared data, ready for `python stages/train.py`."""
    root.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["epochs"] = train.pop("epochs", 3)
    params["train"].update(train)
    params["mlflow"]["log_models"] = False  # no test here loads a model: the export is seconds of every run
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")  # the train stage reads its params keys from it
    save_prepared(read_split(source, "train"), root / "data/prepared/train.pt")
    held_out = read_split(source, "test")  # the train stage validates on val.pt; which images, no matter here
    save_prepared(held_out, root / "data/prepared/val.pt")
    save_prepared(held_out, root / "data/prepared/test.pt")
    empty_mlflow_store(root)  # where the stage's default store is: sqlite:///mlflow.db
    return root


def env_for(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # enough images for an epoch to last a few seconds, so a kill lands mid-epoch
    return write_fashion_mnist(tmp_path_factory.mktemp("idx"), n_train=1536, n_test=256)


def start_and_stop_mid_epoch(root: Path, sig: signal.Signals) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        TRAIN, cwd=root, env=env_for(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while saved_epoch(root / STATE_FILE) < 1:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no epoch finished within 180 s"
        time.sleep(0.01)
    # at once: somewhere in epoch 2 (or, on a fast machine, a later one), never after the last
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(TRAIN, process.returncode, out, err)


def final_metrics(root: Path) -> dict[str, float]:
    return json.loads((root / "metrics/train.json").read_text())


@pytest.mark.slow
def test_killed_training_resumes_and_matches_an_uninterrupted_run(tmp_path: Path, source: Path) -> None:
    reference = make_project(tmp_path / "reference", source, batch_size=32, epochs=EPOCHS)
    subprocess.run(TRAIN, cwd=reference, env=env_for(reference), check=True, capture_output=True)

    killed = make_project(tmp_path / "killed", source, batch_size=32, epochs=EPOCHS)
    result = start_and_stop_mid_epoch(killed, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    finished = saved_epoch(killed / STATE_FILE)
    assert 1 <= finished < EPOCHS and not (killed / "models/vae.pth").exists()

    resumed = subprocess.run(TRAIN, cwd=killed, env=env_for(killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {finished}" in resumed.stdout
    assert not (killed / STATE_FILE).exists()
    assert not list((killed / STATE_FILE.parent).glob(".*.tmp"))  # a write the kill cut short is cleaned up
    for key, value in final_metrics(reference).items():
        assert final_metrics(killed)[key] == pytest.approx(value, rel=1e-4), key

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fashion-mnist-vae").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same run, continued
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_ctrl_c_stops_with_a_resume_hint(tmp_path: Path, source: Path) -> None:
    root = make_project(tmp_path / "p", source, batch_size=32)
    result = start_and_stop_mid_epoch(root, signal.SIGINT)
    assert result.returncode == 130, result.stderr
    assert "interrupted" in result.stderr and "to resume" in result.stderr and "Traceback" not in result.stderr
    assert saved_epoch(root / STATE_FILE) >= 1


@pytest.mark.slow
def test_changed_params_start_afresh(tmp_path: Path, source: Path) -> None:
    root = make_project(tmp_path / "p", source, batch_size=32)
    start_and_stop_mid_epoch(root, signal.SIGKILL)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 0.002
    params["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")  # the train stage reads its params keys from it
    result = subprocess.run(TRAIN, cwd=root, env=env_for(root), capture_output=True, text=True)
    assert result.returncode == 0 and "other params or data; starting from epoch 1" in result.stdout


@pytest.mark.slow
def test_unreachable_tracking_server_fails_fast(tmp_path: Path, source: Path) -> None:
    root = make_project(tmp_path / "p", source, epochs=1)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = env_for(root) | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    started = time.monotonic()
    result = subprocess.run(TRAIN, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"cannot reach MLflow tracking server http://127.0.0.1:{port}" in result.stderr
    assert "MLFLOW_TRACKING_URI" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60
    assert not (root / "models").exists()


def test_non_finite_loss_keeps_the_last_good_state(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vae.trainer
    from vae.config import load_params
    from vae.pipeline.train import train_pipeline
    from vae.storage import load_prepared
    from vae.trainer import NonFiniteLossError

    root = make_project(tmp_path / "p", source, epochs=3, batch_size=256)  # 6 steps an epoch
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    real_loss, calls = vae.trainer.vae_loss_from_logits, []

    def loss_that_breaks_in_epoch_2(logits, x, mu, logvar, beta):
        calls.append(1)
        terms = real_loss(logits, x, mu, logvar, beta)
        return terms._replace(total=terms.total * float("nan")) if len(calls) == 8 else terms

    monkeypatch.setattr(vae.trainer, "vae_loss_from_logits", loss_that_breaks_in_epoch_2)
    files = [Path("data/prepared/train.pt"), Path("data/prepared/val.pt")]
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2"):
        train_pipeline(load_params(), *(load_prepared(f) for f in files), torch.device("cpu"), files)
    assert saved_epoch(root / STATE_FILE) == 1  # the last good epoch's checkpoint is kept
    assert not (root / "models/vae.pth").exists()
