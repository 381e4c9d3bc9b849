"""MLflow tracking for the pipeline: a run per stage execution, evaluate and generate nested under training.

The train stage's run holds what training did (its params, per-epoch losses,
the model); each execution of evaluate or generate opens a new child run of
the training run that made its model, with the params that shaped its results.
So no execution ever writes into another one's run, and the training run
behind any result is its parent.

The store defaults to ``sqlite:///<project root>/mlflow.db`` — the same file a
plain ``mlflow ui`` opens from the project root — and ``MLFLOW_TRACKING_URI``
overrides it. The project root is ``DVC_ROOT`` when DVC runs the stage: for
``dvc exp run --temp`` and queued experiments DVC points it at the original
repository rather than the temporary copy, so their runs land in the project's
store and survive the copy's deletion. Artifacts go to ``<root>/mlruns``.

A team's tracking server (``http://…``, see :mod:`vae.tracking.server`) keeps
its own artifact store. Every stage checks the store before any work
(:func:`check_tracking_store`), and a server that goes away mid-run stops the
stage in seconds with one line (:func:`fail_fast_on_lost_server`,
:func:`lost_server_reported`). The experiment is tagged so MLflow's UI opens it
as a model-training one, and runs record the prepared data they read as MLflow
datasets (:func:`log_dataset`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vae.data import FashionMNISTSplit
from vae.errors import UserError
from vae.storage import atomic_write, file_md5
from vae.utils import project_root

if TYPE_CHECKING:
    import mlflow

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project root's ``mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DB_FILE}"


class TrackingError(UserError, RuntimeError):
    """The MLflow tracking store cannot be used; the message names the URI."""


def redact(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***``: safe to print (SQLAlchemy's own rendering)."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a database URI: nothing of it is a password
        return uri


def check_database(uri: str, source: str, timeout: float = 5.0) -> None:
    """Connect to a database URI (``postgresql://USER:PASSWORD@HOST:PORT/DB``, …) once, or fail in one line.

    Raises:
        TrackingError: names the URI (password hidden) and the database's own reason: unreachable,
            wrong password, no such database, or its driver not installed.
    """
    import sqlalchemy

    shown = redact(uri)
    try:
        # PostgreSQL's and MySQL's drivers take a connect timeout; SQLite's (a file) has none and refuses one
        network = not uri.startswith("sqlite")
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout)} if network else {})
    except ImportError as err:
        fix = "pip install -e '.[server]'" if uri.startswith("postgresql") else f"install the Python package {err.name}"
        raise TrackingError(
            f"database {shown} (from {source}) needs a driver this environment lacks ({err.name}): {fix}"
        ) from None
    except sqlalchemy.exc.ArgumentError as err:
        raise TrackingError(f"database {shown} (from {source}) is not a database URI: {err}") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as err:
        # the driver's first line says what failed: refused connection, password, missing database
        reason = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
        reason = " ".join(reason.removeprefix("connection failed: ").split())
        raise TrackingError(f"cannot use database {shown} (from {source}): {reason}") from None
    finally:
        engine.dispose()


def check_tracking_store(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, before any training, when the tracking store is out of reach; returns the URI.

    An http(s) URI must be an MLflow tracking server: it must answer MLflow's
    experiments API with JSON within ``timeout`` seconds (MLflow's own client
    would retry for minutes). A database URI must accept a connection; a local
    SQLite database needs a folder it can write to.

    Raises:
        TrackingError: names the URI and what failed.
    """
    uri = uri or tracking_uri()
    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default store"
    scheme = urlsplit(uri).scheme
    if is_server(uri):
        _check_server(uri, source, timeout)
    elif scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {uri} (from {source}): folder {folder} is missing or not writable")
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        check_database(uri, source, timeout)
    return uri


def _check_server(uri: str, source: str, timeout: float) -> None:
    """GET a one-experiment page of MLflow's REST API: only an MLflow server answers it with JSON."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url)
    user, password = os.environ.get(USER_VAR), os.environ.get(PASSWORD_VAR)
    if user and password:  # what MLflow's own client sends to a server with authentication
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        if err.code in (404, 405):
            raise TrackingError(
                f"{uri} (from {source}) is not an MLflow tracking server: HTTP {err.code} for MLflow's API ({url})"
            ) from None
        if err.code in (401, 403):
            raise TrackingError(refused(uri, err.code)) from None
        detail = _error_message(err.read())
        raise TrackingError(
            f"MLflow tracking server {uri} (from {source}) answered HTTP {err.code}{': ' + detail if detail else ''}"
        ) from None
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"cannot reach MLflow tracking server {uri} (from {source}): {reason}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise TrackingError(
            f"{uri} (from {source}) is not an MLflow tracking server: its answer to MLflow's API ({url}) is not JSON"
        )


# MLflow's client sends these as HTTP basic authentication to a server with its auth app on
USER_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def refused(uri: str, status: int, what: str = "") -> str:
    """One line for a server that refused this client (HTTP 401 or 403): what to set, or to ask for."""
    user = os.environ.get(USER_VAR)
    if status == 401 and not user:
        fix = f"it has authentication on: export {USER_VAR}=NAME {PASSWORD_VAR}=PASSWORD (an account its admin made)"
    elif status == 401:
        fix = f"it refused user {user}'s password: check {USER_VAR} and {PASSWORD_VAR}"
    else:
        fix = f"user {user} may not {what or 'do this'}: ask the server's admin for EDIT on the experiment or model"
    return f"MLflow tracking server {uri} (from MLFLOW_TRACKING_URI) answered HTTP {status}: {fix}"


def _error_message(body: bytes) -> str:
    """The ``message`` of an MLflow error answer, else the body's first line (at most 200 characters)."""
    text = body.decode(errors="replace").strip()
    try:
        text = str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        pass
    return text.splitlines()[0][:200] if text else ""


def is_server(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def fail_fast_on_lost_server() -> None:
    """Make MLflow's client give up on a dead tracking server in seconds rather than minutes.

    MLflow retries a failed request 7 times with exponential backoff (minutes
    in all); a training stage would hang that long after its server went away.
    Two retries, one second apart, ride out a restart blip; set the
    ``MLFLOW_HTTP_REQUEST_*`` variables to override. urllib3's per-retry
    warnings are silenced: :func:`lost_server_reported` says what happened, in
    one line.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


@contextmanager
def lost_server_reported(what_is_kept: str) -> Iterator[None]:
    """Turn the MLflow client's failure on a tracking server that stopped answering into one line.

    Inside the block, an MLflow or HTTP error while the server no longer
    answers becomes a :class:`TrackingError` naming the server and saying
    ``what_is_kept``; a refusal by the server's authentication one naming what
    to set or ask for; any other error passes through unchanged.
    """
    import mlflow
    import requests

    try:
        yield
    except (mlflow.exceptions.MlflowException, requests.exceptions.RequestException) as err:
        uri = mlflow.get_tracking_uri()
        if not is_server(uri):
            raise
        code = getattr(err, "error_code", None)
        if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):  # the server's auth app said no
            status = 403 if code == "PERMISSION_DENIED" else 401
            raise TrackingError(refused(uri, status, "write runs or models there")) from None
        _report_lost(uri, what_is_kept)
        raise


def _report_lost(uri: str, what_is_kept: str) -> None:
    """Raise a one-line :class:`TrackingError` when the server at ``uri`` no longer answers; else return."""
    try:
        check_tracking_store(uri)
    except TrackingError as lost:
        # the run's own background threads would report the same loss again, as warnings
        logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
        raise TrackingError(f"{lost}; {what_is_kept}") from None


def logged_epochs(client: mlflow.MlflowClient, run_id: str) -> set[int]:
    """The epochs a training run has logged (steps of its ``loss``): what a resumed run must not log again."""
    return {metric.step for metric in client.get_metric_history(run_id, "loss")}


# MLflow's own tag of the git commit a run's program was started from (set by mlflow.start_run)
GIT_COMMIT_TAG = "mlflow.source.git.commit"


@contextmanager
def sqlite_init_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` while a SQLite store is opened.

    The first process to open a new database creates and migrates its tables;
    two experiments doing so at once (``dvc queue start -j 2``) collide with
    "duplicate column" or "table already exists" errors, and two may both
    create the same experiment. Later writes need no lock: MLflow gives SQLite
    a 20 s busy timeout. Other stores are used without a lock.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    with FileLock(uri.removeprefix("sqlite:///") + ".lock"):
        yield


# MLflow 3's UI opens an experiment by its kind: without this tag, on the GenAI "Overview" page
# (traces); with it, on the runs table of a model-training experiment. Value from MLflow's UI code.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def setup_experiment(experiment_name: str) -> str:
    """Point MLflow at :func:`tracking_uri` and select (creating if needed) the experiment; returns its id.

    The experiment is tagged as a model-training one, so the UI opens it on its
    runs (an experiment made before that tag existed gets it here too).
    """
    import mlflow

    # A server picks its own artifact store; the local default keeps artifacts beside
    # the database, at an absolute path, so runs from a temporary copy stay there.
    own_store = not os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri()
    if is_server(uri):
        fail_fast_on_lost_server()
    mlflow.set_tracking_uri(uri)  # also exports MLFLOW_TRACKING_URI
    kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    with sqlite_init_lock(uri):
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is None:
            location = (project_root() / ARTIFACTS_DIR).as_uri() if own_store else None
            try:
                experiment_id = mlflow.create_experiment(experiment_name, artifact_location=location, tags=kind)
            except mlflow.exceptions.MlflowException as err:
                # another stage created it since we looked (queued experiments on a server, where no lock is held)
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = mlflow.get_experiment_by_name(experiment_name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# `mlflow ui`'s address when the store is a local file
LOCAL_UI = "http://127.0.0.1:5000"


def ui_link(experiment_id: str, run_id: str | None = None, uri: str | None = None) -> str:
    """The page of an experiment (or of one of its runs) in MLflow's UI, opened in its model-training view.

    MLflow 3.17's UI ignores the experiment-kind tag once its GenAI / Model
    training switch exists: it opens what the URL's ``workflowType`` says, else
    what the browser chose last, else GenAI's trace overview. This link says
    ``machine_learning``. A file store's link is where ``mlflow ui`` serves it.
    """
    uri = uri or tracking_uri()
    base = uri.rstrip("/") if is_server(uri) else LOCAL_UI
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/#/{page}?workflowType=machine_learning"


def log_dataset(split: FashionMNISTSplit, path: Path, context: str) -> None:
    """Record in the active run that it read the prepared ``split`` from ``path``, as ``context``.

    ``context`` is ``"training"``, ``"validation"`` or ``"testing"``. MLflow keeps the dataset's
    name, schema and shape (images (N, 1, 32, 32) uint8, labels (N,)), its
    source file and a digest of the whole file (MLflow's own digest reads only
    the first rows): runs on different data never share a digest.
    """
    import mlflow

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path matches both
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            split.images.numpy(),
            targets=split.labels.numpy(),
            source=str(path.resolve()),
            name=f"fashion-mnist-{path.stem}",
            digest=file_md5(path),
        )
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as err:
        # two queued experiments logging the same data at once race on a server's dataset table
        # (PostgreSQL: "duplicate key value violates unique constraint dataset_pk"); the row the other
        # one wrote is the same dataset, so once it exists, linking to it succeeds
        if "duplicate key" not in str(err) and "UNIQUE constraint" not in str(err):
            raise
        mlflow.log_input(dataset, context=context)


def run_name(stage: str, beta: float | None = None, latent_dim: int | None = None) -> str:
    """A recognisable run name: the DVC experiment's name when there is one, then what the run is.

    Training runs are named by their key params (``beta=500 latent=2``), the evaluate and
    generate runs nested under them by their stage and the same params (``evaluate beta=500
    latent=2``), so a child run says whose it is wherever MLflow lists it alone.
    """
    exp = os.environ.get("DVC_EXP_NAME")
    what = " ".join(
        ([] if stage == "train" else [stage])
        + ([] if beta is None else [f"beta={beta:g}"])
        + ([] if latent_dim is None else [f"latent={latent_dim}"])
    )
    return f"{exp + ' ' if exp else ''}{what}"


def run_tags(device: object, stage: str) -> dict[str, str]:
    """Tags that say where a run came from: pipeline stage, device, DVC experiment name.

    The git commit is MLflow's own tag (``mlflow.source.git.commit``), which ``mlflow.start_run``
    reads from the repository of the stage script.
    """
    tags = {"pipeline_stage": stage, "device": str(device)}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


@contextmanager
def stage_run(
    stage: str,
    experiment_name: str,
    params: Mapping[str, Any],
    training_run_id: str,
    device: object,
    run_id_file: Path,
) -> Iterator[mlflow.ActiveRun]:
    """A new MLflow run for one execution of ``stage`` (evaluate, generate), nested under its training run.

    Every execution gets a run of its own, so an experiment that reruns
    evaluate alone (``dvc exp run -S evaluate.knn_k=7``) never writes into
    another execution's run. The run logs ``params`` (the params that shaped
    its results), is a child of ``training_run_id`` (the run that made the
    model, named by the train stage's run-id file), and its id is written to
    ``run_id_file`` once the block ends without error. When the training run is
    not in this store (another ``MLFLOW_TRACKING_URI``), the run is logged
    without a parent and says so on stderr; the ``training_run_id`` tag keeps
    the link either way.
    """
    import mlflow
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    with lost_server_reported("start the server again and run `dvc repro` to log this stage"):
        setup_experiment(experiment_name)
        parent = training_run_id
        try:
            mlflow.MlflowClient().get_run(training_run_id)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            parent = None
            print(
                f"{stage}: note: training run {training_run_id} is not in {mlflow.get_tracking_uri()}; "
                "logging this run without a parent",
                file=sys.stderr,
            )
        tags = run_tags(device, stage) | {"training_run_id": training_run_id}
        name = run_name(stage, params.get("beta"), params.get("latent_dim"))
        with mlflow.start_run(run_name=name, parent_run_id=parent, tags=tags) as run:
            mlflow.log_params(dict(params))
            yield run
            write_run_id(run.info.run_id, run_id_file)


def log_verdict(training_run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Copy the evaluate stage's β-independent ``metrics`` onto the training run that made the model, at
    ``step`` (its last epoch), so the runs table sorts training runs by them and their chart and compare
    views show them. A later evaluation logs them again, later, at the same step: MLflow shows the latest.
    Nothing is copied when the training run is not in this store (``stage_run`` said so already)."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        client.get_run(training_run_id)
    except mlflow.exceptions.MlflowException:
        return
    now = int(time.time() * 1000)
    entries = [mlflow.entities.Metric(key, value, now, step) for key, value in metrics.items()]
    client.log_batch(training_run_id, metrics=entries)


def write_run_id(run_id: str, path: Path) -> None:
    """Write the id of a stage's MLflow run, atomically (a DVC output of that stage)."""
    atomic_write(path, lambda tmp: tmp.write_text(run_id + "\n"))


def read_run_id(path: Path) -> str:
    """The MLflow run id a stage wrote to ``path`` (the train stage's, for evaluate and generate).

    Raises:
        TrackingError: the file is missing or holds no run id; names the file.
    """
    try:
        run_id = path.read_text().strip()
    except OSError:
        raise TrackingError(f"{path}: no MLflow run id; run the train stage first (dvc repro train)") from None
    if not run_id or not run_id.isalnum():
        raise TrackingError(f"{path}: {run_id!r} is not an MLflow run id; rerun the train stage (dvc repro train)")
    return run_id
