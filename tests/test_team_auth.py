"""The team's server with MLflow's authentication (`python -m vae.tracking.server --auth`): its secrets,
its refusals, and an EDIT user who trains beside a READ user who only reads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_postgres, shared_temp_dir, write_fashion_mnist
from project import TrackingServer, clean_env, new_project, run, tags_of

from vae.tracking.postgres import LocalPostgres


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return clean_env(write_fashion_mnist(tmp_path_factory.mktemp("idx"), 300, 200))


# --- authentication: MLflow's basic-auth app, on the team's server -------------------------------------------


@pytest.fixture(scope="module")
def auth_server() -> Iterator[TrackingServer]:
    """`python -m vae.tracking.server --data-dir DIR --auth`, on a PostgreSQL of its own."""
    require_postgres()
    folder = shared_temp_dir("vae-auth-")
    server = TrackingServer(folder / "tracking", "--auth")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        LocalPostgres(server.data_dir, server.pg_port).stop()
        shutil.rmtree(folder, ignore_errors=True)


def as_user(server: TrackingServer, path: str, body: dict | None, user: str, password: str) -> tuple[int, dict]:
    """MLflow's REST API as ``user`` (HTTP basic authentication); returns the status and the JSON answer."""
    import base64

    data = None if body is None else json.dumps(body).encode()
    url = f"{server.uri}/api/{path}"
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, {}


def admin_password(server: TrackingServer) -> str:
    return (server.data_dir / "auth" / "admin_password").read_text().strip()


@pytest.mark.slow
def test_the_authenticated_server_keeps_its_secrets_private_and_lets_no_one_in(
    auth_server: TrackingServer, env: dict[str, str], tmp_path: Path
) -> None:
    auth = auth_server.data_dir / "auth"
    assert oct(auth.stat().st_mode & 0o777) == "0o700"
    for name in ("admin_password", "flask_secret_key", "basic_auth.ini", "basic_auth.db"):
        assert oct((auth / name).stat().st_mode & 0o777) == "0o600", name
    assert admin_password(auth_server) != "password1234" and len(admin_password(auth_server)) >= 32
    log = (auth_server.data_dir.parent / "server.log").read_text()
    assert "authentication on" in log and admin_password(auth_server) not in log

    with pytest.raises(urllib.error.HTTPError) as anonymous:  # no credentials: refused
        auth_server.api("experiments/search?max_results=1")
    assert anonymous.value.code == 401
    assert as_user(auth_server, "2.0/mlflow/experiments/search?max_results=1", None, "admin", "wrong")[0] == 401

    root = new_project(tmp_path / "project", env, experiment="team-auth")
    run(["dvc", "repro", "prepare"], root, env)
    train = [sys.executable, "stages/train.py"]
    for extra, expected in [
        ({}, "answered HTTP 401: it has authentication on: export MLFLOW_TRACKING_USERNAME=NAME"),
        ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"}, "refused user admin's password"),
    ]:
        result = subprocess.run(
            train, cwd=root, env=env | {"MLFLOW_TRACKING_URI": auth_server.uri} | extra, capture_output=True, text=True
        )
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"train: error: MLflow tracking server {auth_server.uri} ") and expected in (
            result.stderr
        )


@pytest.mark.slow
def test_an_edit_user_trains_and_a_read_user_reads_but_changes_nothing(
    auth_server: TrackingServer, env: dict[str, str], tmp_path: Path
) -> None:
    """As docs/team.md says: the admin adds users, gives the trainer EDIT; a READ user can only read."""
    import mlflow

    admin = ("admin", admin_password(auth_server))
    for user in ("trainer", "reader"):
        status, _ = as_user(
            auth_server, "2.0/mlflow/users/create", {"username": user, "password": f"{user}-pw-12345"}, *admin
        )
        assert status == 200
    status, created = as_user(auth_server, "2.0/mlflow/experiments/create", {"name": "team-auth-edit"}, *admin)
    assert status == 200
    resources = [("experiment", created["experiment_id"])]
    for name in ("fashion-mnist-vae", "fashion-mnist-vae-encoder"):
        assert as_user(auth_server, "2.0/mlflow/registered-models/create", {"name": name}, *admin)[0] == 200
        resources.append(("registered_model", name))
    for kind, resource in resources:
        grant = {"username": "trainer", "resource_type": kind, "resource_id": resource, "permission": "EDIT"}
        assert as_user(auth_server, "3.0/mlflow/users/permissions/grant", grant, *admin)[0] == 200, grant

    trainer = env | {
        "MLFLOW_TRACKING_URI": auth_server.uri,
        "MLFLOW_TRACKING_USERNAME": "trainer",
        "MLFLOW_TRACKING_PASSWORD": "trainer-pw-12345",
    }
    root = new_project(tmp_path / "project", trainer, experiment="team-auth-edit")
    run(["dvc", "repro"], root, trainer)  # the whole pipeline, as the EDIT user
    runs = as_user(auth_server, "2.0/mlflow/runs/search", {"experiment_ids": [created["experiment_id"]]}, *admin)[1]
    assert sorted(tags_of(r).get("pipeline_stage") for r in runs["runs"]) == ["evaluate", "generate", "train"]
    [training] = [r for r in runs["runs"] if tags_of(r).get("pipeline_stage") == "train"]
    run_id = training["info"]["run_id"]
    alias = {"name": "fashion-mnist-vae", "alias": "champion", "version": "1"}
    assert as_user(auth_server, "2.0/mlflow/registered-models/alias", alias, "trainer", "trainer-pw-12345")[0] == 200

    reader = {"MLFLOW_TRACKING_USERNAME": "reader", "MLFLOW_TRACKING_PASSWORD": "reader-pw-12345"}
    for key, value in reader.items():
        os.environ[key] = value
    try:
        client = mlflow.MlflowClient(tracking_uri=auth_server.uri)
        assert client.get_run(run_id).info.status == "FINISHED"  # READ: every run and metric
        assert client.get_registered_model("fashion-mnist-vae").aliases == {"champion": "1"}
        with pytest.raises(mlflow.exceptions.MlflowException) as denied:
            client.delete_run(run_id)
        assert denied.value.error_code == "PERMISSION_DENIED"
        with pytest.raises(mlflow.exceptions.MlflowException) as denied:
            client.set_registered_model_alias("fashion-mnist-vae", "champion", "2")
        assert denied.value.error_code == "PERMISSION_DENIED"
    finally:
        for key in reader:
            del os.environ[key]
    assert (
        as_user(auth_server, f"2.0/mlflow/runs/get?run_id={run_id}", None, *admin)[1]["run"]["info"]["lifecycle_stage"]
        == "active"
    )
    # a READ user's training stops before any work with one line naming what to ask for
    result = subprocess.run(
        [sys.executable, "stages/train.py"], cwd=root, env=trainer | reader, capture_output=True, text=True
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "answered HTTP 403: user reader may not write runs or models there: ask the server's admin for EDIT" in (
        result.stderr
    )
