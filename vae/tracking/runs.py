"""MLflow runs of the pipeline: a run per stage execution, evaluate and generate nested under training.

The train stage's run holds what training did (its params, per-epoch losses,
the model); each execution of evaluate or generate opens a new child run of
the training run that made its model, with the params that shaped its results.
So no execution ever writes into another one's run, and the training run
behind any result is its parent. The experiment is tagged so MLflow's UI opens
it as a model-training one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae.config import project_root
from vae.storage import atomic_write
from vae.tracking.store import (
    ARTIFACTS_DIR,
    TrackingError,
    fail_fast_on_lost_server,
    is_server,
    lost_server_reported,
    tracking_uri,
)

if TYPE_CHECKING:
    import mlflow


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
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """A new MLflow run for one execution of ``stage`` (evaluate, generate), nested under its training run.

    Every execution gets a run of its own, so an experiment that reruns
    evaluate alone (``dvc exp run -S evaluate.knn_k=7``) never writes into
    another execution's run. The run logs ``params`` (the params that shaped
    its results) and ``tags`` (the data's: :mod:`vae.tracking.data_tags`), is a
    child of ``training_run_id`` (the run that made the model, named by the train stage's
    run-id file), and its id is written to
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
        all_tags = run_tags(device, stage) | dict(tags or {}) | {"training_run_id": training_run_id}
        name = run_name(stage, params.get("beta"), params.get("latent_dim"))
        with mlflow.start_run(run_name=name, parent_run_id=parent, tags=all_tags) as run:
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
