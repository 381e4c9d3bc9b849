"""What a name on the command line means in MLflow, and what each training holds there.

A name is a DVC experiment (its latest training run, by ``tags.dvc_exp_name``), a training
run's id, or a sweep's parent run id (its trials). Each becomes a :class:`Training`: its
params, its evaluation's verdict (``eval_val_*``, ``eval_test_*``, logged on the training run
by the evaluate stage or by the trial itself), its per-epoch validation NELBO, and the final
pictures of its evaluate and generate runs.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from vae.errors import UserError
from vae.loss import nelbo_of_losses
from vae.tracking.data_tags import CHANNELS_TAG, mixed_data
from vae.tracking.store import tracking_uri

RUN_ID = re.compile(r"[0-9a-f]{32}")
# the final pictures, by the run that logs them (stage) and their artifact path
PICTURES = {
    "reconstructions": ("evaluate", "evaluate/vae_reconstructions.png"),
    "samples": ("generate", "generate/vae_generated_samples.png"),
    "latent grid": ("generate", "generate/vae_latent_grid.png"),
}


class CompareError(UserError, LookupError):
    """A name on the command line is no experiment or run in the tracking store; the message names it."""


@dataclass
class Training:
    """One trained model as MLflow holds it; ``pictures`` maps a name of :data:`PICTURES` to PNG bytes."""

    label: str
    run_id: str
    params: dict[str, str]
    verdict: dict[str, float]
    val_nelbo: list[tuple[int, float]]  # (epoch, nats per image)
    pictures: dict[str, bytes] = field(default_factory=dict)


def existing_store() -> str:
    """The tracking store's URI; raises :class:`CompareError` for a SQLite file that is not there (a client
    would create an empty one)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise CompareError(f"{uri}: no MLflow store here to compare from (run dvc repro, or set MLFLOW_TRACKING_URI)")
    return uri


def resolve(names: list[str], client: mlflow.MlflowClient | None = None) -> list[Training]:
    """Every training the ``names`` stand for, in the order given (a sweep's trials by name).

    Raises:
        CompareError: a name stands for nothing; or the trainings were made on different data (their
            NELBOs are of other images, in other units for other channel counts), naming two of them.
    """
    client = client or mlflow.MlflowClient(existing_store())
    experiments = [e.experiment_id for e in client.search_experiments()]
    labelled = {run.info.run_id: (name, run) for name in names for run in _runs_of(client, experiments, name)}
    if why := mixed_data([(f"{name} ({run.info.run_id[:8]})", run.data.tags) for name, run in labelled.values()]):
        raise CompareError(why)
    return [_training(client, run, experiments) for _, run in labelled.values()]


def _runs_of(client: mlflow.MlflowClient, experiments: list[str], name: str) -> list:
    """The training runs ``name`` stands for; raises :class:`CompareError` naming it when there are none."""
    if RUN_ID.fullmatch(name):
        try:
            run = client.get_run(name)
        except mlflow.exceptions.MlflowException:
            raise CompareError(f"{name}: no run with this id in {tracking_uri()}") from None
        if run.data.tags.get("pipeline_stage") != "sweep":
            return [run]
        trials = client.search_runs(
            experiments, f"tags.mlflow.parentRunId = '{name}'", order_by=["attributes.run_name"]
        )
        if not trials:
            raise CompareError(f"{name}: the sweep run has no trials yet")
        return trials
    latest = client.search_runs(
        experiments,
        f"tags.dvc_exp_name = '{name}' and tags.pipeline_stage = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not latest:
        raise CompareError(
            f"{name}: no DVC experiment of this name and no run id in {tracking_uri()} "
            "(names: dvc exp show; run ids: mlflow ui)"
        )
    return latest


def _training(client: mlflow.MlflowClient, run: object, experiments: list[str]) -> Training:
    history = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        for key in ("val_reconstruction_loss", "val_kl_loss")
    }
    epochs = sorted(set(history["val_reconstruction_loss"]) & set(history["val_kl_loss"]))
    pixels = int(run.data.tags.get(CHANNELS_TAG, "1")) * 32 * 32  # the BCE is a mean over them
    val_nelbo = [
        (e, nelbo_of_losses(history["val_reconstruction_loss"][e], history["val_kl_loss"][e], pixels)) for e in epochs
    ]
    if not val_nelbo and "val_nelbo" in run.data.metrics:  # a sweep trial logs its own
        val_nelbo = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_nelbo")]
    return Training(
        label=run.data.tags.get("mlflow.runName") or run.info.run_id[:8],
        run_id=run.info.run_id,
        params=dict(run.data.params),
        verdict={k: v for k, v in run.data.metrics.items() if k.startswith(("eval_val_", "eval_test_"))},
        val_nelbo=val_nelbo,
        pictures=_pictures(client, run.info.run_id, experiments),
    )


def _pictures(client: mlflow.MlflowClient, run_id: str, experiments: list[str]) -> dict[str, bytes]:
    """The final pictures of the latest evaluate and generate runs nested under ``run_id``."""
    children = client.search_runs(
        experiments, f"tags.mlflow.parentRunId = '{run_id}'", order_by=["attributes.start_time DESC"]
    )
    latest = {}
    for child in children:
        latest.setdefault(child.data.tags.get("pipeline_stage"), child.info.run_id)
    pictures = {}
    # into a folder removed afterwards: without dst_path MLflow makes a temporary folder per download and
    # leaves it, one in the user's /tmp per picture of every training compared
    with tempfile.TemporaryDirectory(prefix="vae-compare-") as folder:
        for name, (stage, path) in PICTURES.items():
            if stage in latest:
                try:
                    local = mlflow.artifacts.download_artifacts(
                        run_id=latest[stage], artifact_path=path, dst_path=folder, tracking_uri=tracking_uri()
                    )
                except (mlflow.exceptions.MlflowException, OSError):
                    continue  # latent_dim > 2 has no latent grid
                pictures[name] = Path(local).read_bytes()
    return pictures
