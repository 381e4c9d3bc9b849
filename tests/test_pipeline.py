"""End to end: the DVC pipeline in a temporary copy of the repository, a few hundred images, one epoch.

Uses the real data when FASHION_MNIST_DIR is set, else tiny IDX files written here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_fashion_mnist

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
IMAGES = [
    "evaluate/vae_reconstructions.png",
    "generate/vae_generated_samples.png",
    "generate/vae_latent_grid.png",
    "generate/vae_interpolation.png",
]
OUTPUTS = [
    "data/prepared/train.pt",
    "data/prepared/test.pt",
    "models/vae_fashion_mnist.pth",
    "outputs/mlflow_run_id.txt",
    "metrics/train.json",
    "metrics/train_history.csv",
    "metrics/evaluate.json",
    "metrics/classifier.json",
    "models/fmnist_classifier.pth",
    "outputs/evaluate/vae_reconstructions.png",
    "outputs/evaluate/vae_latent_space.png",
    "outputs/generate/vae_generated_samples.png",
    "outputs/generate/vae_latent_grid.png",
    "outputs/generate/vae_interpolation.png",
]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def copy_repo(dest: Path) -> None:
    """Copy the files git would clone (tracked, and untracked but not ignored)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    if not env.get("FASHION_MNIST_DIR"):
        env["FASHION_MNIST_DIR"] = str(write_fashion_mnist(tmp_path_factory.mktemp("idx"), 300, 200))
    return env


def new_project(root: Path, env: dict[str, str], epochs: int = 1) -> Path:
    """A git + DVC repository copied from this one, with tiny params, committed."""
    copy_repo(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(epochs=epochs)
    params["data"].update(train_limit=300, test_limit=200)
    params["train"].update(batch_size=64)
    params["classifier"].update(epochs=1, min_accuracy=0.0)  # a few hundred images cannot reach 88%
    params["evaluate"].update(iw_samples=10, fd_samples=500)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "test@example.com"],
        ["git", "config", "user.name", "test"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny params"],
    ):
        run(cmd, root, env)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """A tiny copy of this repository after `dvc repro`."""
    root = new_project(tmp_path_factory.mktemp("project"), env)
    run(["dvc", "repro"], root, env)
    return root


def mlflow_runs(root: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion-mnist-vae")
    assert experiment is not None, "the pipeline created no MLflow experiment in the project's mlflow.db"
    return client.search_runs([experiment.experiment_id]), client


def test_repro_writes_every_output_and_is_up_to_date(project: Path, env: dict[str, str]) -> None:
    for name in OUTPUTS:
        assert (project / name).is_file() and (project / name).stat().st_size > 0, name
    assert "up to date" in run(["dvc", "status"], project, env)
    metrics = json.loads((project / "metrics/train.json").read_text())
    assert set(metrics) == {
        "loss",
        "reconstruction_loss",
        "kl_loss",
        "test_loss",
        "test_reconstruction_loss",
        "test_kl_loss",
    }
    history = (project / "metrics/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,") and len(history) == 2
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert 0 < evaluation["test_reconstruction_loss"] < 1
    assert evaluation["iw_log_likelihood"] >= -evaluation["nelbo"] - 1.0  # K=10 bound, one-sample NELBO noise
    assert evaluation["active_units"] in (0, 1, 2) and 0 <= evaluation["knn_accuracy"] <= 1
    assert evaluation["classifier_frechet_distance"] > 0
    assert 0 <= json.loads((project / "metrics/classifier.json").read_text())["test_accuracy"] <= 1


def stages_to_rerun(project: Path, env: dict[str, str], **changes: object) -> set[str]:
    """The stages `dvc repro` would run after applying ``changes`` ("generate.seed": 3) to params.yaml."""
    original = (project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for parent in parents:
            section = section[parent]
        section[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = run(["dvc", "repro", "--dry"], project, env)
    finally:
        (project / "params.yaml").write_text(original)
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_reruns_only_what_a_param_change_affects(project: Path, env: dict[str, str]) -> None:
    assert stages_to_rerun(project, env) == set()
    assert stages_to_rerun(project, env, **{"generate.num_samples": 10}) == {"generate"}
    # a dry run lists the stages whose own inputs changed; generate follows once train rewrites the model
    assert stages_to_rerun(project, env, beta=7) == {"train", "evaluate"}
    assert "prepare" in stages_to_rerun(project, env, **{"data.test_limit": 100})


def test_experiment_with_another_beta(project: Path, env: dict[str, str]) -> None:
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline results"], project, env)
    out = run(["dvc", "exp", "run", "--set-param", "beta=100"], project, env)
    assert "Stage 'prepare' didn't change, skipping" in out
    assert all(f"Running stage '{stage}'" in out for stage in ("train", "evaluate", "generate"))
    table = json.loads(run(["dvc", "exp", "show", "--json"], project, env))
    experiments = [exp for rev in table for exp in (rev.get("experiments") or [])]
    found = [
        rev["data"]
        for exp in experiments
        for rev in exp["revs"]
        if rev["data"]["params"]["params.yaml"]["data"]["beta"] == 100
    ]
    assert found, f"no experiment with beta=100 in dvc exp show: {table}"
    metrics = found[0]["metrics"]
    assert metrics["metrics/evaluate.json"]["data"]["test_loss"] > 0
    assert metrics["metrics/train.json"]["data"]["loss"] > 0


def test_mlflow_holds_both_runs_with_metrics_images_and_model(project: Path) -> None:
    import mlflow

    runs, client = mlflow_runs(project)
    by_beta = {run.data.params["beta"]: run for run in runs}
    assert {"500.0", "100.0"} <= set(by_beta), f"runs: {[r.data.params.get('beta') for r in runs]}"
    for run_ in (by_beta["500.0"], by_beta["100.0"]):
        assert run_.info.status == "FINISHED"
        for key in ("loss", "reconstruction_loss", "kl_loss", "test_loss", "test_reconstruction_loss", "test_kl_loss"):
            history = client.get_metric_history(run_.info.run_id, key)
            assert [m.step for m in history] == [1], key
        assert {
            "eval_test_loss",
            "eval_nelbo",
            "eval_iw_log_likelihood",
            "eval_active_units",
            "eval_knn_accuracy",
            "eval_classifier_frechet_distance",
        } <= set(run_.data.metrics)
        assert [m.value for m in client.get_metric_history(run_.info.run_id, "beta")] == [
            float(run_.data.params["beta"])
        ]
        assert run_.data.tags["device"] == "cpu" and len(run_.data.tags["git_commit"]) == 40
        logged = {
            a.path for folder in ("evaluate", "generate") for a in client.list_artifacts(run_.info.run_id, folder)
        }
        assert set(IMAGES) <= logged
    assert by_beta["100.0"].data.tags.get("dvc_exp_name")
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")  # runs:/ URIs resolve through it
    try:
        model = mlflow.pytorch.load_model(f"runs:/{by_beta['100.0'].info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous_env)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
    with torch.inference_mode():
        images = model(torch.randn(5, 2))
    assert images.shape == (5, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_ui_serves_the_runs_over_rest(project: Path, env: dict[str, str]) -> None:
    port = free_port()
    # exactly the README's command, from the project root, bound to loopback on a free port
    server = subprocess.Popen(
        ["mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=fashion-mnist-vae") as r:
                    experiment_id = json.load(r)["experiment"]["experiment_id"]
                break
            except OSError:
                assert server.poll() is None, "mlflow ui exited early"
                assert time.monotonic() < deadline, "mlflow ui did not answer within 90 s"
                time.sleep(1)
        request = urllib.request.Request(
            f"{base}/runs/search",
            data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            runs = json.load(r)["runs"]
        betas = {p["value"] for run_ in runs for p in run_["data"]["params"] if p["key"] == "beta"}
        assert {"500.0", "100.0"} <= betas
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_queued_experiment_lands_in_the_project_store(project: Path, env: dict[str, str]) -> None:
    run(["dvc", "exp", "run", "--queue", "--set-param", "beta=50"], project, env)
    run(["dvc", "exp", "run", "--run-all"], project, env)
    runs, _ = mlflow_runs(project)
    queued = [r for r in runs if r.data.params.get("beta") == "50.0"]
    assert len(queued) == 1 and queued[0].info.status == "FINISHED"
    artifact_dir = Path(queued[0].info.artifact_uri.removeprefix("file://"))
    assert artifact_dir.is_relative_to(project) and (artifact_dir / "generate" / "vae_interpolation.png").is_file()


def test_parallel_queue_loses_no_run(tmp_path: Path, env: dict[str, str]) -> None:
    """Four queued experiments on two workers, starting from no mlflow.db at all."""
    root = new_project(tmp_path / "parallel", env, epochs=2)
    betas = ["1.0", "10.0", "100.0", "500.0"]
    for beta in betas:
        run(["dvc", "exp", "run", "--queue", "--set-param", f"beta={beta}"], root, env)
    run(["dvc", "queue", "start", "--jobs", "2"], root, env)
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := run(["dvc", "queue", "status"], root, env)):
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 4, status

    runs, client = mlflow_runs(root)
    assert sorted(r.data.params["beta"] for r in runs) == sorted(betas)  # exactly four: none lost, none twice
    for run_ in runs:
        assert run_.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_.info.run_id, "test_loss")] == [1, 2]
        logged = {
            a.path for folder in ("evaluate", "generate") for a in client.list_artifacts(run_.info.run_id, folder)
        }
        assert set(IMAGES) <= logged
        assert client.list_artifacts(run_.info.run_id, "checkpoint")
    assert len(client.search_logged_models([runs[0].info.experiment_id])) == 4
