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
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vae.errors import UserError
from vae.model import VAE
from vae.storage import atomic_write

if TYPE_CHECKING:
    import mlflow

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"


def project_root() -> Path:
    """The repository whose store the runs belong to: ``DVC_ROOT`` when set, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project root's ``mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DB_FILE}"


class TrackingError(UserError, RuntimeError):
    """The MLflow tracking store cannot be used; the message names the URI."""


def check_tracking_store(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, before any training, when the tracking store is out of reach; returns the URI.

    An http(s) server must answer MLflow's health check within ``timeout``
    seconds (MLflow's own client would retry for minutes); a local SQLite
    database needs a folder it can write to.

    Raises:
        TrackingError: names the URI and what failed.
    """
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    uri = uri or tracking_uri()
    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default store"
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as err:
            raise TrackingError(f"MLflow tracking server {uri} (from {source}) answered HTTP {err.code}") from None
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(f"cannot reach MLflow tracking server {uri} (from {source}): {reason}") from None
    elif scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {uri} (from {source}): folder {folder} is missing or not writable")
    return uri


def git_commit() -> str | None:
    """The commit checked out in the working directory, or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


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
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def setup_experiment(experiment_name: str) -> str:
    """Point MLflow at :func:`tracking_uri` and select (creating if needed) the experiment; returns its id."""
    import mlflow

    # A server picks its own artifact store; the local default keeps artifacts beside
    # the database, at an absolute path, so runs from a temporary copy stay there.
    own_store = not os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # also exports MLFLOW_TRACKING_URI
    with sqlite_init_lock(uri):
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = (project_root() / ARTIFACTS_DIR).as_uri() if own_store else None
            experiment_id = mlflow.create_experiment(experiment_name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def run_name(stage: str, beta: float | None = None, latent_dim: int | None = None) -> str:
    """A recognisable run name: the DVC experiment's name when there is one, then what the run is.

    Training runs are named by their key params (``beta=500 latent=2``), the
    evaluate and generate runs nested under them by their stage.
    """
    exp = os.environ.get("DVC_EXP_NAME")
    what = f"beta={beta:g} latent={latent_dim}" if stage == "train" else stage
    return f"{exp + ' ' if exp else ''}{what}"


def run_tags(device: object, stage: str) -> dict[str, str]:
    """Tags that say where a run came from: pipeline stage, device, git commit, DVC experiment name."""
    tags = {"pipeline_stage": stage, "device": str(device), "git_commit": git_commit() or "unknown"}
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

    setup_experiment(experiment_name)
    parent = training_run_id
    try:
        mlflow.MlflowClient().get_run(training_run_id)
    except mlflow.exceptions.MlflowException:
        parent = None
        print(
            f"{stage}: note: training run {training_run_id} is not in {mlflow.get_tracking_uri()}; "
            "logging this run without a parent",
            file=sys.stderr,
        )
    tags = run_tags(device, stage) | {"training_run_id": training_run_id}
    with mlflow.start_run(run_name=run_name(stage), parent_run_id=parent, tags=tags) as run:
        mlflow.log_params(dict(params))
        yield run
        write_run_id(run.info.run_id, run_id_file)


def log_model(model: VAE, checkpoint: Path, name: str = "model") -> None:
    """Log the generative model with MLflow's PyTorch flavour, plus the whole VAE's checkpoint.

    The MLflow model is the decoder, z → image: ``mlflow.pytorch.load_model``
    gives a module that maps a latent batch (N, latent_dim) to images
    (N, 1, 32, 32) in [0, 1], and
    ``mlflow.pyfunc`` serves it as is (the signature and input example say so).
    MLflow saves it as an exported graph (``torch.export``), so loading needs
    no install of this project. The whole VAE, encoder included, is the
    checkpoint logged under ``checkpoint/`` (rebuild it with
    :func:`vae.storage.load_model`).
    """
    import mlflow
    from mlflow.models import infer_signature

    decoder = model.decoder.eval()
    example = torch.randn(4, model.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        output = decoder(example.to(next(decoder.parameters()).device)).cpu()
    with warnings.catch_warnings():
        # torch.export's archive writer warns about every weight of a model saved from the CPU
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        mlflow.pytorch.log_model(
            decoder,
            name=name,
            signature=infer_signature(example.numpy(), output.numpy()),
            input_example=example.numpy(),
            serialization_format="pt2",  # an exported graph: loading it needs no install of this project
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )
    mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")


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
