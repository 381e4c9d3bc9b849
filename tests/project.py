"""Helpers of the end-to-end tests: temporary git + DVC copies of this repository, commands, MLflow runs."""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "fashion-mnist-vae"
IMAGES = [
    "evaluate/vae_reconstructions.png",
    "generate/vae_generated_samples.png",
    "generate/vae_latent_grid.png",
    "generate/vae_interpolation.png",
]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Run ``cmd``; fail the test with its output unless it succeeds. Returns stdout."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def run_queue(root: Path, env: dict[str, str], jobs: int = 2, timeout: float = 600) -> str:
    """``dvc queue start -j JOBS``, then wait until nothing is queued or running; returns ``dvc queue status``.

    The wait asks DVC's queue in this process what ``dvc queue status`` lists (without its ping of the
    workers): 0.02 s of CPU a look, where the command costs 0.6 s, about 25 CPU-seconds of a suite run."""
    from dvc.repo import Repo

    run(["dvc", "queue", "start", "-j", str(jobs)], root, env)
    deadline = time.monotonic() + timeout
    while True:
        with Repo(str(root)) as repo:
            waiting = [
                task for task in repo.experiments.celery_queue.status() if task["status"] in ("Queued", "Running")
            ]
        if not waiting:
            return run(["dvc", "queue", "status"], root, env)
        assert time.monotonic() < deadline, f"still queued or running after {timeout} s: {waiting}"
        time.sleep(2)


def packages_loaded_by_import(module: str, packages: set[str]) -> list[str]:
    """Which of ``packages`` importing ``module`` loads, in a fresh Python: a command that starts without
    torch (1.5 s of imports) or MLflow (1.8 s) gives its --help, errors and answers that much sooner."""
    code = f"import json, sys, {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return sorted(set(json.loads(result.stdout)) & packages)


def clean_env(idx_dir: Path) -> dict[str, str]:
    """This process's environment without MLflow or DVC settings, with this venv first on PATH.

    ``FASHION_MNIST_DIR`` keeps the real data when set (conftest made it absolute), else points
    at ``idx_dir``. Output stays buffered as Python buffers it for a user's file or pipe.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("PYTHONUNBUFFERED", None)  # a user's shell has none: stdout into a file or pipe is block-buffered
    env.setdefault("FASHION_MNIST_DIR", str(idx_dir))
    return env


def readme_data_dir() -> str:
    """The value of the README's ``export FASHION_MNIST_DIR=…`` line, as a newcomer copies it."""
    line = re.search(r"(?m)^export FASHION_MNIST_DIR=(\S+)$", (REPO / "README.md").read_text())
    assert line, "README.md has no `export FASHION_MNIST_DIR=…` line"
    return line.group(1)


def readme_layout(folder: Path, n_train: int = 300, n_test: int = 200) -> dict[str, str]:
    """Lay out ``folder`` as the README's clone sits beside shared/, and return the README's environment.

    The data lands where the README's relative ``FASHION_MNIST_DIR`` points from a project in any
    sub-folder of ``folder`` (``folder/main``, as a clone of main): the real data, linked, when
    FASHION_MNIST_DIR is set, else tiny IDX files. The environment holds the README's relative value
    itself, so every command run with it resolves the path as a newcomer's would.
    """
    from conftest import write_fashion_mnist

    relative = readme_data_dir()
    data = (folder / "main" / relative).resolve()
    assert data.is_relative_to(folder.resolve()), f"the README's {relative} leaves the clone's folder"
    real = os.environ.get("FASHION_MNIST_DIR")
    if real:
        data.parent.mkdir(parents=True, exist_ok=True)
        data.symlink_to(real, target_is_directory=True)
    else:
        write_fashion_mnist(data, n_train, n_test)
    return clean_env(data) | {"FASHION_MNIST_DIR": relative}


def copy_repo(dest: Path) -> None:
    """Copy the files git would clone (tracked, and untracked but not ignored)."""
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(listing, cwd=REPO, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def new_project(
    root: Path,
    env: dict[str, str],
    epochs: int = 1,
    train_limit: int = 300,
    experiment: str = EXPERIMENT,
    log_models: bool = True,
) -> Path:
    """A git + DVC repository copied from this one, with tiny params, committed. ``log_models=False``
    where a test loads no MLflow model: exporting them is seconds of every training run."""
    copy_repo(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(epochs=epochs)
    params["mlflow"].update(experiment_name=experiment, log_models=log_models)
    params["data"].update(val_size=100, train_limit=train_limit, test_limit=200)
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


def commit_data_and_classifier(root: Path, env: dict[str, str]) -> None:
    """`dvc repro classifier` (prepare and the classifier, neither of which touches MLflow) and commit the
    results: experiments queued from there skip both stages, as a user's would after a first `dvc repro`."""
    run(["dvc", "repro", "classifier"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "prepared data and classifier"], root, env)


def save_state(folder: Path, saved: Path) -> Path:
    """Copy ``folder`` (a project: git, DVC cache, mlflow.db, outputs) to ``saved``, to be put back by
    :func:`restore_state`. Nothing may be running in it."""
    shutil.copytree(folder, saved, symlinks=True)
    return saved


def restore_state(saved: Path, folder: Path) -> Path:
    """Put ``folder`` back as :func:`save_state` saved it, at the same path: MLflow's artifact URIs and
    DVC's state are absolute, so a copy elsewhere would still point at the original. Each test that
    changes a shared project starts from its saved state, whatever ran before it."""
    _forget_sqlite_engines(folder)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(saved, folder, symlinks=True)
    return folder


def _forget_sqlite_engines(folder: Path) -> None:
    """Close this process's pooled MLflow connections to SQLite files under ``folder``: they would go on
    reading the replaced (deleted) file instead of the restored one. MLflow keeps one engine per URI, and
    its stores (cached per URI too) hold on to it: each is disposed (its next connection opens the file
    anew) and stays in MLflow's map, to be disposed again at the next restore."""
    stores = ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store")
    for module in (sys.modules[name] for name in stores if name in sys.modules):
        for uri, engine in module.SqlAlchemyStore._engine_map.items():
            if str(folder) in uri:
                engine.dispose()


def set_params(path: Path, **changes: object) -> None:
    """Change dotted keys of the params file at ``path``: ``set_params(p, **{"train.lr": 0.01})``."""
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        target = params
        for section in sections:
            target = target[section]
        target[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@functools.cache
def _empty_store_file() -> Path:
    """An MLflow SQLite store with its schema and nothing else, made once per process (removed at its exit)."""
    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="vae-empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def empty_mlflow_store(folder: Path) -> str:
    """``folder/mlflow.db``, an empty MLflow store as MLflow makes it on first use, and its URI.

    A copy of one made once: MLflow builds a new SQLite store by running each of its schema migrations,
    0.8-1.5 s of CPU, which the suite paid 39 times, about 20 of them in tests that only need a store.
    Tests of what happens where no store exists yet start without it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_empty_store_file(), folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def prepared_project(folder: Path, monkeypatch: object, **changes: object) -> Path:
    """``folder/project`` as the working directory: dvc.yaml, params.yaml with dotted ``changes``
    (``{"train.batch_size": 32}``), tiny data prepared by the prepare stage (of 96 training images, 32 for
    validation unless ``changes`` say otherwise; 64 test images), a store of its own."""
    from conftest import write_fashion_mnist

    from vae.pipeline import prepare

    source = write_fashion_mnist(folder / "idx", n_train=96, n_test=64)
    root = folder / "project"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    set_params(root / "params.yaml", **({"data.val_size": 32} | changes))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_mlflow_store(root))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(source))
    prepare.main()
    return root


def mlflow_runs(tracking_uri: str, experiment_name: str = EXPERIMENT) -> tuple[list, object]:
    """Every run of the project's experiment in the store at ``tracking_uri``, and a client of that store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"the pipeline created no MLflow experiment in {tracking_uri}"
    return client.search_runs([experiment.experiment_id]), client


def by_stage(runs: list, stage: str) -> list:
    """The runs of one pipeline stage (train, evaluate, generate), by their ``pipeline_stage`` tag."""
    return [r for r in runs if r.data.tags.get("pipeline_stage") == stage]


def children(runs: list, parent: object, stage: str) -> list:
    """The ``stage`` runs nested under the training run ``parent``."""
    return [r for r in by_stage(runs, stage) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(uri: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Wait until the MLflow server at ``uri`` answers ``/health``; fail with its log if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                if response.read() == b"OK":
                    return
        except OSError:
            pass
        assert process.poll() is None, f"the tracking server exited: {log.read_text()[-3000:]}"
        silent = f"the tracking server did not answer in {timeout} s: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, silent
        time.sleep(0.5)


class MlflowServer:
    """``mlflow server`` on a SQLite file in ``folder``, its artifacts beside it; started on a free port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder)]
        command += ["--workers", "1"]  # MLflow's default four each import the server: 15 s of CPU for one test
        self.log = folder / "server.log"
        # without MLflow's job runner (four more processes), as vae.tracking.server runs it
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        wait_until_healthy(self.uri, self.process, self.log, timeout=120)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class S3Server:
    """moto's standalone S3-compatible server (``moto_server``) on 127.0.0.1, in memory, with one bucket.

    ``env`` holds what a client of it needs: moto's fixed test credentials, a region, and the
    endpoint under the name MLflow reads (``MLFLOW_S3_ENDPOINT_URL``). Stop it by its process id.
    """

    def __init__(self, folder: Path, bucket: str) -> None:
        self.port, self.bucket = free_port(), bucket
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        self.env = self.credentials | {"AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": self.endpoint}
        self.log = folder / "moto.log"
        command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client().create_bucket(Bucket=bucket)
                return
            except Exception:  # not listening yet
                assert self.process.poll() is None, f"moto_server exited: {self.log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"moto_server did not answer: {self.log.read_text()[-3000:]}"
                time.sleep(0.3)

    def client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object's key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class TrackingServer:
    """``python -m vae.tracking.server --data-dir …`` (the README's command) in a process group of its own."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir, self.port, self.pg_port = data_dir, free_port(), free_port()
        # the server's own settings (S3's credentials), not the clients'; one uvicorn worker, not MLflow's
        # default four, which each import the server (~4 s of CPU apiece) for the few clients a test has
        self.env = os.environ | {"MLFLOW_WORKERS": "1"} | (env or {})
        self.command = [
            sys.executable,
            "-m",
            "vae.tracking.server",
            "--data-dir",
            str(data_dir),
            "--pg-port",
            str(self.pg_port),
            "--port",
            str(self.port),
            *extra,
        ]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        log = open(self.data_dir.parent / "server.log", "a")  # noqa: SIM115 (the process holds it)
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
        )
        wait_until_healthy(self.uri, self.process, self.data_dir.parent / "server.log", timeout)

    def log_tail(self) -> str:
        return (self.data_dir.parent / "server.log").read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL the tracking server's processes (not PostgreSQL, which pg_ctl runs in a session of its own)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, as a user's Ctrl-C: the server stops MLflow and PostgreSQL."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)

    def api(self, path: str, body: dict | None = None) -> dict:
        """Call MLflow's REST API: GET ``path``, or POST ``body`` as JSON."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.uri}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def download(self, artifact_uri: str) -> bytes:
        """An artifact's bytes through the server's artifact proxy (``mlflow-artifacts:/…``)."""
        path = artifact_uri.removeprefix("mlflow-artifacts:/")
        with urllib.request.urlopen(f"{self.uri}/api/2.0/mlflow-artifacts/artifacts/{path}", timeout=30) as response:
            return response.read()

    def runs(self, experiment: str) -> list[dict]:
        experiment_id = self.api(f"experiments/get-by-name?experiment_name={experiment}")["experiment"]["experiment_id"]
        return self.api("runs/search", {"experiment_ids": [experiment_id], "max_results": 1000}).get("runs", [])

    def metric_steps(self, run_id: str, key: str) -> list[int]:
        history = self.api(f"metrics/get-history?run_id={run_id}&metric_key={key}").get("metrics", [])
        return sorted(m["step"] for m in history)


def tags_of(run_: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run_["data"].get("tags", [])}
