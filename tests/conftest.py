"""Shared fixtures: tiny IDX files written by the tests, and the real data when FASHION_MNIST_DIR is set."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from vae.data import ENV_VAR, SPLIT_FILES
from vae.sweep.cluster import SINGLE_MACHINE_RAY
from vae.tracking.postgres import LocalPostgres, ServerError, postgres_tool

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Pin a relative FASHION_MNIST_DIR (the README's ``../shared/data/fashion-mnist``) to the folder it
    names from the project root, where it was set and what the README says it is relative to: the
    end-to-end tests run stages in copies of the project elsewhere, which give their own layouts."""
    # every Ray node the tests start (and the drivers joining them) on 127.0.0.1: Ray's single-machine
    # switch, set before Ray is imported and inherited by every command the tests run
    os.environ[SINGLE_MACHINE_RAY] = "0"
    # pytest-xdist's workers share the cores: each worker's own torch work gets its share of them. Every
    # worker's OpenMP threads spinning on all cores at once slowed the classifier's floor test from
    # 58 s alone to 332 s in the suite. Processes the tests start keep torch's default, as users run them.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    # Those processes' OpenMP threads wait passively: libgomp's default spin-wait burns the cycles the
    # other worker's processes need. It changes no result (the thread count is theirs), only who computes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    value = os.environ.get(ENV_VAR)
    if value and not Path(value).expanduser().is_absolute():
        os.environ[ENV_VAR] = str((REPO / Path(value).expanduser()).resolve())


# test files whose tests run on the worker of another file, sharing its session fixtures: the registry's
# tests use the pipeline's reproduced project (`pipeline_states`) instead of reproducing one of their own
SHARED_WORKER = {"tests/test_registry.py": "tests/test_pipeline.py"}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` (every file's tests on one worker, so its module fixtures are made once), with
    the files of :data:`SHARED_WORKER` on one worker together, and the files with slow tests handed out
    first. (xdist's ``loadgroup`` would say the grouping with marks, but with pytest 9 it no longer groups:
    it renames ``item._nodeid``, which pytest 9 ignores.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    @functools.cache
    def has_slow_tests(scope: str) -> bool:  # the controller collects no items: the file says it
        return "pytest.mark.slow" in (config.rootpath / scope).read_text()

    class SharedFileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SHARED_WORKER.get(scope, scope)

        def _assign_work_unit(self, node: object) -> None:
            # Longest first, the slow mark standing for the length: xdist's own order (most tests first)
            # left a one-test file of ~2 minutes for last while the other worker idled (gw0 ended 911 s,
            # gw1 1031 s). Simulated with that run's file times over 500 shuffles: 998 s mean, 1032 s at
            # worst; slow files first: 975 s and 980 s (the ideal split: 971 s).
            slow = next((scope for scope in self.workqueue if has_slow_tests(scope)), None)
            if slow is not None:
                self.workqueue.move_to_end(slow, last=False)
            super()._assign_work_unit(node)

    return SharedFileScheduling(config, log)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x08 = unsigned byte, then the dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 32, gz: bool = True, seed: int = 0) -> Path:
    """Write the four Fashion-MNIST files with random content: images (N, 28, 28), labels 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = SPLIT_FILES[split]
        payloads = {
            images_name: idx_bytes(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)),
            labels_name: idx_bytes(np.arange(n, dtype=np.uint8) % 10),
        }
        for name, payload in payloads.items():
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(payload)
            else:
                (folder / name).write_bytes(payload)
    return folder


@pytest.fixture
def tiny_idx_dir(tmp_path: Path) -> Path:
    return write_fashion_mnist(tmp_path / "fmnist")


@pytest.fixture
def real_data_dir() -> Path:
    """The real Fashion-MNIST folder from FASHION_MNIST_DIR; skips the test when it is not set."""
    value = os.environ.get(ENV_VAR)
    if not value:
        pytest.skip(f"{ENV_VAR} is not set")
    return Path(value)


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_reaches_python() -> None:
    """Restore Python's Ctrl-C handler when the suite was started with SIGINT ignored.

    A shell ignores SIGINT in what it starts in the background (``bash .ci/run &``),
    and every Python started from there inherits that: the tests of Ctrl-C
    handling need it delivered, here and in the stages they start.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _mlflow_globals_stay_in_their_test() -> Iterator[None]:
    """The stages point MLflow at their store and experiment in process globals (and in the environment,
    for MLflow's own threads), which outlive a test that runs them in-process: a later test on the same
    worker would log to that store, whatever its own MLFLOW_TRACKING_URI says. Reset after each test."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    before = {name: os.environ.get(name) for name in names}
    yield
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        mlflow.tracking.fluent._active_experiment_id = None  # set by mlflow.set_experiment; no public reset
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def shared_temp_dir(prefix: str) -> Path:
    """A new folder under /tmp that every user may enter: as root, PostgreSQL runs as its own account."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


def require_postgres() -> None:
    """Skip when PostgreSQL is not installed here; on CI (which installs it) fail instead."""
    try:
        postgres_tool("initdb")
    except ServerError as err:
        if os.environ.get("CI"):
            pytest.fail(f"{err} (.ci/run installs it on CI)")
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server (initdb into a temporary folder, pg_ctl on a free loopback port), stopped at the end."""
    from project import free_port

    require_postgres()
    folder = shared_temp_dir("vae-postgres-")
    server = LocalPostgres(folder / "server", free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """moto's S3-compatible server on 127.0.0.1 with the bucket ``team``, stopped by its process id at the end."""
    from project import S3Server

    s3 = S3Server(tmp_path_factory.mktemp("s3"), "team")
    try:
        yield s3
    finally:
        s3.stop()


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    """A web server that is not MLflow: every path is an HTML page."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html><body>a wiki</body></html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_mlflow() -> Iterator[str]:
    """The URL of a real web server on loopback that answers every GET with HTML."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMlflow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 128 MB tmpfs at ``tmp_path/disk``, a real small file system to fill up (``fill``) or remount
    read-only, unmounted at the end. Mounting needs root: skipped where it is refused, failed on CI (root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): the full-disk tests need root"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI runs as root")
        pytest.skip(why)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to its last ``leave`` bytes with one preallocated file, as ``fallocate`` makes it;
    removing the file frees the space again."""
    filler = disk / "filler"
    with open(filler, "ab") as f:
        os.posix_fallocate(f.fileno(), 0, f.tell() + max(0, shutil.disk_usage(disk).free - leave))
    return filler


@dataclass(frozen=True)
class PipelineStates:
    """A tiny clone of this repository, as ``main`` beside ``shared``, at its saved states: after `dvc repro`
    (``baseline``), then with those results committed and a β=100 experiment run in the workspace
    (``two_trainings``, and that experiment's output). Each test restores the state it starts from, so
    none depends on what another did or on their order."""

    root: Path
    env: dict[str, str]
    baseline: Path
    two_trainings: Path
    beta_100_output: str


@pytest.fixture(scope="session")
def pipeline_states(tmp_path_factory: pytest.TempPathFactory) -> PipelineStates:
    """Made once per session for the files of one worker (test_pipeline.py, test_registry.py)."""
    from project import new_project, readme_layout, run, save_state

    home = tmp_path_factory.mktemp("pipeline")
    env = readme_layout(home)
    root = new_project(home / "main", env)
    run(["dvc", "repro"], root, env)
    baseline = save_state(root, home / "baseline")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline results"], root, env)
    out = run(["dvc", "exp", "run", "--set-param", "beta=100"], root, env)
    return PipelineStates(root, env, baseline, save_state(root, home / "two-trainings"), out)


@pytest.fixture(scope="module")
def clone_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder a module's clones of this project sit in, with the data where the README's relative path finds it."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def env(clone_home: Path) -> dict[str, str]:
    """The README's environment: ``FASHION_MNIST_DIR=../shared/data/fashion-mnist``, relative, as written
    (a module may define its own ``env``)."""
    from project import readme_layout

    return readme_layout(clone_home)
