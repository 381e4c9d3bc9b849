"""The team set-up, with real parts: PostgreSQL, `python -m vae.tracking.server`, a DVC remote, a git origin.

Every command here is one the README's "Team set-up" section gives. The server
tests start PostgreSQL with its own tools (initdb, pg_ctl) in a temporary
folder on a free loopback port and stop it at the end; they skip only where
PostgreSQL is not installed, and fail on CI, which installs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import require_postgres, shared_temp_dir, write_fashion_mnist
from project import (
    IMAGES,
    S3Server,
    TrackingServer,
    by_stage,
    children,
    clean_env,
    commit_data_and_classifier,
    free_port,
    mlflow_runs,
    new_project,
    packages_loaded_by_import,
    run,
    run_queue,
    set_params,
    tags_of,
)

from vae.config import load_params
from vae.pipeline.dvc_yaml import lineage_params, select
from vae.tracking.postgres import LocalPostgres

ARTIFACTS_DESTINATION = "s3://team/mlflow"
TRAIN_METRICS = ["loss", "reconstruction_loss", "kl_loss", "val_loss", "val_reconstruction_loss", "val_kl_loss"]


def params_of(run_: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run_["data"].get("params", [])}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server(s3: S3Server) -> Iterator[TrackingServer]:
    """The team's server as docs/team.md sets it up: PostgreSQL of its own, artifacts proxied to S3."""
    require_postgres()
    folder = shared_temp_dir("vae-tracking-")
    server = TrackingServer(folder / "tracking", "--artifacts-destination", ARTIFACTS_DESTINATION, env=s3.env)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        LocalPostgres(server.data_dir, server.pg_port).stop()  # in case the server could not
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return clean_env(write_fashion_mnist(tmp_path_factory.mktemp("idx"), 300, 200))


@pytest.mark.slow
def test_pipeline_against_the_server_logs_everything_over_rest(
    server: TrackingServer, s3: S3Server, env: dict[str, str], tmp_path: Path
) -> None:
    assert not set(s3.env) & set(env)  # the trainer knows the server, not the bucket or its credentials
    # system metrics every half second, so a seconds-long training run records some
    env = env | {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"}
    root = new_project(tmp_path / "project", env, epochs=2, experiment="team-e2e")
    out = run(["dvc", "repro"], root, env)
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()  # all of it went to the server

    experiment = server.api("experiments/get-by-name?experiment_name=team-e2e")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    runs = server.runs("team-e2e")
    [training] = [r for r in runs if tags_of(r).get("pipeline_stage") == "train"]
    assert len(runs) == 3  # the training run, and its evaluate and generate runs
    run_id = training["info"]["run_id"]
    assert training["info"]["status"] == "FINISHED"
    link = f"{server.uri}/#/experiments/{experiment['experiment_id']}/runs/{run_id}?workflowType=machine_learning"
    assert f"train: the run in MLflow's UI: {link}\n" in out  # the page that opens on the model-training view
    params = load_params(root / "params.yaml")
    logged = (*lineage_params("train", root / "dvc.yaml"), "mlflow")  # and the tracking settings it ran with
    expected = {k: str(v) for k, v in select(params.flat(), logged).items()}
    assert params_of(training) == expected
    for key in [*TRAIN_METRICS, "beta"]:
        assert server.metric_steps(run_id, key) == [1, 2], key
    assert any(m["key"] == "system/cpu_utilization_percentage" for m in training["data"]["metrics"])
    assert any(m["key"] == "system/system_memory_usage_megabytes" for m in training["data"]["metrics"])

    # the data each run saw: name, digest (the prepared file's MD5, as in DVC's cache), source and context
    inputs = {
        next(t["value"] for t in i["tags"] if t["key"] == "mlflow.data.context"): i["dataset"]
        for i in training["inputs"]["dataset_inputs"]
    }
    assert set(inputs) == {"training", "validation"}
    for context, split in (("training", "train"), ("validation", "val")):
        prepared = root / "data" / "prepared" / f"{split}.pt"
        assert inputs[context]["name"] == f"fashion-mnist-{split}"
        assert inputs[context]["digest"] == md5(prepared)
        assert json.loads(inputs[context]["source"])["uri"] == str(prepared.resolve())

    # artifacts are proxied: mlflow-artifacts: URIs, bytes served by the server, objects in its S3 bucket
    artifact_uri = training["info"]["artifact_uri"]
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri
    checkpoint = server.download(f"{artifact_uri}/checkpoint/vae.pth")
    assert checkpoint == (root / "models" / "vae.pth").read_bytes()
    in_bucket = s3.keys(f"mlflow/{experiment['experiment_id']}/")
    assert f"mlflow/{experiment['experiment_id']}/{run_id}/artifacts/checkpoint/vae.pth" in in_bucket
    assert not (server.data_dir / "artifacts").exists()
    [evaluate] = [r for r in runs if tags_of(r).get("pipeline_stage") == "evaluate"]
    [generate] = [r for r in runs if tags_of(r).get("pipeline_stage") == "generate"]
    for child, folder in ((evaluate, "evaluate"), (generate, "generate")):
        assert tags_of(child)["mlflow.parentRunId"] == run_id and child["info"]["status"] == "FINISHED"
        listed = server.api(f"artifacts/list?run_id={child['info']['run_id']}&path={folder}")["files"]
        for image in (name for name in IMAGES if name.startswith(folder)):
            assert image in {f["path"] for f in listed}, image
            assert server.download(f"{child['info']['artifact_uri']}/{image}").startswith(b"\x89PNG")
            child_id = child["info"]["run_id"]
            assert f"mlflow/{experiment['experiment_id']}/{child_id}/artifacts/{image}" in in_bucket, image
    assert {m["key"] for m in evaluate["data"]["metrics"]} >= {"eval_val_nelbo", "eval_test_iw_log_likelihood"}
    assert {i["dataset"]["digest"] for i in evaluate["inputs"]["dataset_inputs"]} == {
        md5(root / "data/prepared/test.pt"),
        md5(root / "data/prepared/val.pt"),
        md5(root / "data/prepared/train.pt"),
    }

    # the logged model: its files behind the proxy, and loadable by a client that knows only the server
    models = server.api("logged-models/search", {"experiment_ids": [experiment["experiment_id"]]})["models"]
    assert sorted(m["info"]["name"] for m in models) == ["decoder-beta500-latent2", "encoder-beta500-latent2"]
    [model] = [m for m in models if m["info"]["name"] == "decoder-beta500-latent2"]
    assert model["info"]["source_run_id"] == run_id
    assert model["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    model_keys = s3.keys(f"mlflow/{experiment['experiment_id']}/models/{model['info']['model_id']}/artifacts/")
    names = {key.split("/artifacts/", 1)[1] for key in model_keys}
    assert "MLmodel" in names and any(name.startswith("data/") for name in names), names
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import mlflow, torch; m = mlflow.pytorch.load_model('runs:/{run_id}/decoder-beta500-latent2'); "
            "x = m(torch.randn(3, 2)); print(tuple(x.shape), float(x.min()) >= 0, float(x.max()) <= 1)",
        ],
        env=env | {"TMPDIR": str(tmp_path)},  # where MLflow downloads the model to, and leaves it
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.stdout.strip() == "(3, 1, 32, 32) True True", loaded.stderr[-2000:]

    # registered on the server: a new version of the decoder and of the encoder, tagged with where it came from
    for name in ("fashion-mnist-vae", "fashion-mnist-vae-encoder"):
        query = urllib.parse.urlencode({"filter": f"name = '{name}' AND run_id = '{run_id}'"})
        [version] = server.api(f"model-versions/search?{query}")["model_versions"]
        tags = {t["key"]: t["value"] for t in version["tags"]}
        assert tags["beta"] == "500" and tags["latent_dim"] == "2" and tags["training_run_id"] == run_id
        assert tags["checkpoint_md5"] == md5(root / "models" / "vae.pth")


@pytest.mark.slow
def test_two_queued_experiments_on_two_workers_against_the_server(
    server: TrackingServer, env: dict[str, str], tmp_path: Path
) -> None:
    env = env | {"MLFLOW_TRACKING_URI": server.uri}
    root = new_project(tmp_path / "queue", env, experiment="team-queue", log_models=False)
    commit_data_and_classifier(root, env)
    run(["dvc", "exp", "run", "--queue", "-S", "beta=1,10"], root, env)
    status = run_queue(root, env, jobs=2)  # dvc queue start -j 2
    assert status.count("Success") == 2, status

    runs, client = mlflow_runs(server.uri, "team-queue")
    training = by_stage(runs, "train")
    assert sorted(r.data.params["beta"] for r in training) == ["1.0", "10.0"]  # both, neither twice
    assert len(runs) == 6
    for run_ in training:
        assert run_.info.status == "FINISHED" and run_.data.tags.get("dvc_exp_name")
        assert [m.step for m in client.get_metric_history(run_.info.run_id, "loss")] == [1]
        [evaluate], [generate] = children(runs, run_, "evaluate"), children(runs, run_, "generate")
        assert evaluate.info.status == generate.info.status == "FINISHED"
        assert evaluate.data.params["beta"] == run_.data.params["beta"]


def saved_state(root: Path) -> dict:
    try:
        return torch.load(root / "checkpoints" / "train_state.pt", weights_only=True)
    except Exception:  # not written yet
        return {}


@pytest.mark.slow
def test_server_killed_mid_training_stops_the_stage_and_the_rerun_resumes(
    server: TrackingServer, tmp_path: Path
) -> None:
    # enough images for an epoch to take a few seconds, so the kill lands in epoch 2
    env = clean_env(write_fashion_mnist(tmp_path / "idx", 2048, 256)) | {"MLFLOW_TRACKING_URI": server.uri}
    env["FASHION_MNIST_DIR"] = str(tmp_path / "idx")
    root = new_project(
        tmp_path / "project", env, epochs=3, train_limit=2048, experiment="team-server-death", log_models=False
    )
    # metrics only: the kill must land in epoch 2's training, not in epoch 1's picture uploads
    set_params(root / "params.yaml", **{"mlflow.log_images_every": 0})
    run(["dvc", "repro", "prepare"], root, env)
    repro = subprocess.Popen(
        ["dvc", "repro", "train"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (state := saved_state(root)) or server.metric_steps(state["run_id"], "loss") != [1]:
        assert repro.poll() is None, repro.communicate()
        assert time.monotonic() < deadline, "epoch 1 was not logged within 300 s"
        time.sleep(0.1)
    run_id = state["run_id"]
    server.kill()
    killed_at = time.monotonic()
    out, err = repro.communicate(timeout=300)
    stopped_after = time.monotonic() - killed_at
    print(f"\ntrain stopped {stopped_after:.1f} s after the server was killed; dvc repro's stderr:\n{err}")
    assert repro.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("train: error:")]
    assert len(lines) == 1, err
    assert f"cannot reach MLflow tracking server {server.uri} (from MLFLOW_TRACKING_URI)" in lines[0]
    assert "every finished epoch is saved in checkpoints/train_state.pt" in lines[0]
    assert "Traceback" not in err and "Retrying" not in err, err
    assert stopped_after < 30
    assert saved_state(root)["epoch"] >= 2  # the epoch that ended when the server was gone is kept too
    assert not (root / "models" / "vae.pth").exists()

    server.start()
    out = run(["dvc", "repro"], root, env)
    assert re.search(r"train: resuming after epoch [23] from checkpoints/train_state.pt", out), out
    assert (root / "outputs" / "train_run_id.txt").read_text().strip() == run_id  # the same MLflow run
    [training] = [r for r in server.runs("team-server-death") if tags_of(r).get("pipeline_stage") == "train"]
    assert training["info"]["run_id"] == run_id and training["info"]["status"] == "FINISHED"
    for key in [*TRAIN_METRICS, "beta", "lr"]:
        assert server.metric_steps(run_id, key) == [1, 2, 3], key  # each epoch logged exactly once


@pytest.mark.slow
def test_tracking_server_refuses_a_wrong_database_password_in_one_line(postgres: LocalPostgres, tmp_path: Path) -> None:
    wrong = postgres.uri.replace(postgres.password_file.read_text().strip(), "wrong-password")
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "vae.tracking.server"]
        + ["--artifacts-destination", str(tmp_path / "artifacts"), "--port", str(port)],
        env=os.environ | {"MLFLOW_BACKEND_STORE_URI": wrong},  # as the docs say: the password never in argv
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"tracking_server: error: cannot use database postgresql://mlflow:***@127.0.0.1:{postgres.port}/mlflow "
        f'(from MLFLOW_BACKEND_STORE_URI): connection to server at "127.0.0.1", port {postgres.port} failed: '
        'FATAL: password authentication failed for user "mlflow"'
    )


@pytest.mark.slow
def test_an_s3_destination_without_its_bucket_is_one_line_before_the_server_starts(
    s3: S3Server, tmp_path: Path
) -> None:
    # the docs' command with a misspelt bucket, on an existing database (SQLite here: nothing else to start)
    command = [sys.executable, "-m", "vae.tracking.server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    command += ["--artifacts-destination", "s3://no-such-bucket/mlflow", "--port", str(free_port())]
    done = subprocess.run(command, env=os.environ | s3.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"tracking_server: error: --artifacts-destination s3://no-such-bucket/mlflow "
        f"(MLFLOW_S3_ENDPOINT_URL={s3.endpoint}): no bucket no-such-bucket there\n"
    )


def test_the_tracking_server_command_loads_neither_torch_nor_mlflow_on_import() -> None:
    """It runs `mlflow server` in processes of their own: torch (1.5 s of imports) would only delay its own
    start, its one-line errors and its --help."""
    assert packages_loaded_by_import("vae.tracking.server", {"torch", "mlflow"}) == []


def test_a_password_on_the_command_line_is_refused_before_anything_starts(tmp_path: Path) -> None:
    uri = "postgresql://mlflow:s3cret@127.0.0.1:5432/mlflow"
    command = [sys.executable, "-m", "vae.tracking.server", "--backend-store-uri", uri]
    result = subprocess.run(
        command + ["--artifacts-destination", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "tracking_server: error: --backend-store-uri postgresql://mlflow:***@127.0.0.1:5432/mlflow holds a password"
    )
    assert "export MLFLOW_BACKEND_STORE_URI=" in result.stderr and "s3cret" not in result.stderr


@pytest.mark.slow
def test_the_database_password_is_in_no_command_line_and_no_log(server: TrackingServer) -> None:
    """`ps` shows every user each process's command line: the server's password must be in none of them."""
    password = (server.data_dir / "password").read_text().strip()
    assert len(password) >= 16
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # a process that ended meanwhile
            continue
    ours = [line for line in lines if "mlflow" in line and "server" in line]
    assert ours, "the tracking server's processes were not found"  # the check looks where they are
    assert not [line for line in lines if password in line]
    assert password not in (server.data_dir.parent / "server.log").read_text()


@pytest.mark.slow
def test_the_tracking_server_starts_no_job_runner(server: TrackingServer) -> None:
    """MLflow's job runner (Huey workers for GenAI jobs, which this project never submits) stays off."""
    import psutil

    processes = psutil.Process(server.process.pid).children(recursive=True)
    assert any("mlflow" in " ".join(p.cmdline()) for p in processes), "the server's processes were not found"
    assert [p.cmdline() for p in processes if "huey" in " ".join(p.cmdline())] == []


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """A project after `dvc repro prepare`, for the cases below to copy: none of them changes it."""
    root = new_project(tmp_path_factory.mktemp("prepared") / "project", env)
    run(["dvc", "repro", "prepare"], root, env)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("store", ["wrong password", "unreachable database", "not an MLflow server"])
def test_a_bad_tracking_store_stops_train_before_any_work(
    store: str, request: pytest.FixtureRequest, env: dict[str, str], prepared: Path, tmp_path: Path
) -> None:
    if store == "not an MLflow server":
        uri = request.getfixturevalue("not_mlflow")
        expected = f"{uri} (from MLFLOW_TRACKING_URI) is not an MLflow tracking server: its answer to MLflow's API"
    elif store == "wrong password":
        postgres = request.getfixturevalue("postgres")
        uri = postgres.uri.replace(postgres.password_file.read_text().strip(), "wrong-password")
        expected = 'password authentication failed for user "mlflow"'
    else:
        uri = f"postgresql://mlflow:secret@127.0.0.1:{free_port()}/mlflow"
        expected = "Connection refused"
    env = env | {"MLFLOW_TRACKING_URI": uri}
    root = shutil.copytree(prepared, tmp_path / "project", symlinks=True)
    result = subprocess.run(
        [sys.executable, "stages/train.py"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("train: error: "), result.stderr
    assert expected in result.stderr and "wrong-password" not in result.stderr and "secret" not in result.stderr
    assert not (root / "models").exists() and not (root / "checkpoints").exists()
