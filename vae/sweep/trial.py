"""A sweep's trial, in a Ray worker: it trains and evaluates as the DVC stages do, logged as an MLflow child run.

A trial (:func:`run_trial`) builds its params from params.yaml and its overrides, trains
with :func:`vae.pipeline.train.start_training` and evaluates with
:func:`vae.pipeline.evaluate.evaluate_model`, exactly as ``dvc exp run -S`` would, and
reports every epoch to Tune (so ASHA can stop it) with a checkpoint (so a trial whose
node dies resumes on another after its last finished epoch). Its MLflow run is found
again by its Tune trial id, so a retried trial stays one run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch

from vae import fast_cpu
from vae.classifier import ImageClassifier
from vae.config import Params
from vae.data import ImageSplit
from vae.errors import UserError, one_line
from vae.loss import nelbo_of_losses
from vae.model import VAE
from vae.pipeline import paths
from vae.pipeline.dvc_yaml import select
from vae.pipeline.evaluate import evaluate_model
from vae.pipeline.resume import TrainState
from vae.pipeline.train import start_training
from vae.storage import load_model, save_model
from vae.sweep.spec import EPOCH_METRIC, Sweep
from vae.tracking.datasets import split_tags
from vae.tracking.epoch_images import EpochImages
from vae.tracking.logged_models import log_models
from vae.tracking.runs import GIT_COMMIT_TAG, logged_epochs
from vae.utils import get_device

STATE = "state.pt"  # the trial checkpoint's file: a vae.pipeline.resume.TrainState
TRIAL_TAG = "ray_trial_id"
NODE_TAG = "ray_node_id"
FAILURE_TAG = "failure_reason"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial gets: put in Ray's object store once by ``tune.with_parameters``."""

    sweep: Sweep
    train: ImageSplit
    val: ImageSplit  # every trial is validated and ranked on it; a sweep never reads the test set
    classifier: ImageClassifier | None  # None: data of one class, no label-based metrics
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    git_commit: str | None  # MLflow's tag of it on the parent run, copied to each trial's
    logged_params: tuple[str, ...]  # the params.yaml keys each trial's run logs: those of train and evaluate


class TrialFailed(UserError, RuntimeError):
    """A trial cannot finish: non-finite loss, bad params for this trial, a lost tracking server."""


def trial_run(client: mlflow.MlflowClient, setup: TrialSetup, trial_id: str) -> mlflow.entities.Run | None:
    """This trial's MLflow run, when an earlier attempt made it (one run per trial, however many attempts)."""
    found = client.search_runs(
        [setup.experiment_id],
        filter_string=f"tags.{TRIAL_TAG} = '{trial_id}' and tags.mlflow.parentRunId = '{setup.parent_run_id}'",
        max_results=1,
    )
    return found[0] if found else None


def _load_checkpoint() -> TrainState | None:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return TrainState(**torch.load(Path(folder) / STATE, map_location="cpu", weights_only=True))


def _newtrial_run(client: mlflow.MlflowClient, setup: TrialSetup, trial_id: str, trial_name: str) -> str:
    """A trial's MLflow run, under the sweep's parent run, found again by its Tune trial id; returns its id."""
    tags = {
        "mlflow.parentRunId": setup.parent_run_id,
        TRIAL_TAG: trial_id,
        "ray_trial_name": trial_name,
        "pipeline_stage": "sweep-trial",
        "sweep": setup.sweep.name,
    } | split_tags(setup.train)
    if setup.git_commit:
        tags[GIT_COMMIT_TAG] = setup.git_commit
    return client.create_run(setup.experiment_id, run_name=trial_name, tags=tags).info.run_id


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: ``config`` holds the sampled params.yaml overrides (dotted keys)."""
    import ray
    from ray import tune

    context = tune.get_context()
    trial_id, node_id = context.get_trial_id(), ray.get_runtime_context().get_node_id()
    mlflow.set_tracking_uri(setup.tracking_uri)  # also exported, for MLflow's own threads (system metrics)
    client = mlflow.MlflowClient()
    params = setup.sweep.params(config)
    existing = trial_run(client, setup, trial_id)
    if existing is not None and existing.info.status == "FAILED":
        # an earlier attempt failed on its own (not a lost node): the same inputs fail the same way
        raise TrialFailed(existing.data.tags.get(FAILURE_TAG, "failed in an earlier attempt"))
    if existing is not None and existing.info.status == "FINISHED":
        # finished before its driver was killed, after Tune's last save of the sweep's state: its run holds
        # the final report, so the trial reports it again instead of training its last epoch once more
        final = {k: v for k, v in existing.data.metrics.items() if not k.startswith("system/")}
        tune.report(final | {"epoch": params.epochs, "mlflow_run_id": existing.info.run_id})
        return
    run_id = (
        _newtrial_run(client, setup, trial_id, context.get_trial_name()) if existing is None else existing.info.run_id
    )
    try:
        if existing is None:
            logged = select(params.flat(), setup.logged_params)
            client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in logged.items()])
        # Ray narrows CUDA_VISIBLE_DEVICES to the GPUs it granted, but (2.60) leaves every GPU visible to a
        # trial granted none: "auto" then means the CPU, not a GPU Ray never allocated
        device = get_device(params.train.device, granted_gpus=len(ray.get_gpu_ids()))
        client.set_tag(run_id, NODE_TAG, node_id)
        client.set_tag(run_id, "device", str(device))
        mlflow.start_run(run_id=run_id, log_system_metrics=params.mlflow.system_metrics)
        _train_and_evaluate(setup, params, device, run_id, client)  # ends the run before its last report
    except Exception as err:
        reason = one_line(err)
        client.set_tag(run_id, FAILURE_TAG, reason)
        if mlflow.active_run():
            mlflow.end_run("FAILED")
        else:
            client.set_terminated(run_id, "FAILED")
        raise TrialFailed(reason) from err
    except BaseException:  # Tune stopping the trial (ASHA) inside tune.report: the driver tags why
        mlflow.end_run("KILLED")
        raise


def _train_and_evaluate(
    setup: TrialSetup, params: Params, device: torch.device, run_id: str, client: mlflow.MlflowClient
) -> None:
    from ray import tune

    training = start_training(params, setup.train, setup.val, device)
    # as the train stage tags them: with the same precision and thread count, a trial's numbers are the stages'
    client.set_tag(run_id, "precision", training.precision)
    client.set_tag(run_id, "threads", str(torch.get_num_threads()))
    state = _load_checkpoint()
    if state is not None:
        training.resume(state)
        client.set_tag(run_id, "resumed_after_epoch", str(state.epoch))
    logged = logged_epochs(client, run_id)  # by an attempt that died after logging
    images = EpochImages.for_run(params, setup.val.images)  # a trial's pictures, as the train stage's

    for epoch in training.epochs:
        metrics = training.train_epoch(epoch) | {"beta": params.beta_at(epoch), "lr": training.lr}
        losses = metrics["val_reconstruction_loss"], metrics["val_kl_loss"]
        metrics[EPOCH_METRIC] = nelbo_of_losses(*losses, pixels=setup.val.pixels)
        if epoch not in logged:
            if images.due(epoch):
                images.log(training.model, epoch)
            mlflow.log_metrics(metrics, step=epoch)  # last before the report: its steps say what was checkpointed
        report = metrics | {"epoch": epoch, "mlflow_run_id": run_id}
        if epoch == params.epochs:
            # everything final happens before the last report: the scheduler may stop the trial right after it
            report |= _evaluate_and_log(setup, params, training.model, device)
            mlflow.end_run("FINISHED")
        with tempfile.TemporaryDirectory() as folder:
            torch.save(training.state("sweep-trial", epoch, run_id).__dict__, Path(folder) / STATE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def _evaluate_and_log(setup: TrialSetup, params: Params, model: VAE, device: torch.device) -> dict[str, float]:
    """The evaluate stage's metrics of the trained model on validation, logged with the model; returns them
    as eval_val_*, as the evaluate stage's run shows them."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / paths.MODEL.name
        save_model(model, checkpoint)
        # evaluated as the evaluate stage does it: the saved model, loaded back
        saved, _ = load_model(checkpoint, device, params.latent_dim, expected_channels=setup.train.channels)
        fast_cpu.enable(saved)
        # the classifier embeds the Fréchet features where the trial computes, as in the evaluate stage
        classifier = setup.classifier
        if classifier is not None:
            classifier = classifier.to(device, memory_format=torch.channels_last)
        metrics, _ = evaluate_model(saved, classifier, setup.train, {"val": setup.val}, params, device)
        evaluation = {f"eval_{key}": value for key, value in metrics.items()}
        mlflow.log_metrics(evaluation, step=params.epochs)
        # logged, not registered: the winner is, once reproduced by DVC
        log_models(saved, checkpoint, None, {}, as_models=params.mlflow.log_models, beta=params.beta)
    return evaluation


# --- the driver ----------------------------------------------------------------------------------
