"""Stage train: a resumable, MLflow-tracked training run driven by :class:`vae.config.Params`.

Killed or interrupted, it resumes after the last finished epoch when started again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch

from vae import fast_cpu
from vae.batches import TensorBatches
from vae.config import Params, ParamsError, load_params
from vae.data import FashionMNISTSplit
from vae.model import VAE
from vae.pipeline import paths
from vae.pipeline.dvc_yaml import lineage_params, select, stage_params
from vae.pipeline.resume import (
    STATE_FILE,
    TrainState,
    clear_state,
    fingerprint,
    interrupts_deferred,
    load_state,
    restore_rng,
    rng_state,
    save_state,
)
from vae.pipeline.runner import write_history_csv, write_json
from vae.storage import file_md5, load_prepared, save_model
from vae.tracking.epoch_images import EpochImages, logged_image_steps
from vae.tracking.registry import log_models
from vae.tracking.store import (
    GIT_COMMIT_TAG,
    check_tracking_store,
    is_server,
    log_dataset,
    logged_epochs,
    lost_server_reported,
    run_name,
    run_tags,
    setup_experiment,
    tracking_uri,
    ui_link,
    write_run_id,
)
from vae.trainer import configure_performance, make_optimizer, make_scheduler, resolve_precision, train_vae_model
from vae.utils import DeviceError, get_device, set_seed


def training_settings(params: Params, dvc_yaml: Path = paths.DVC_YAML) -> dict[str, Any]:
    """The params the train stage declares in dvc.yaml, with their values: what a saved state must match.

    The same keys make DVC rerun train, so a state is resumed exactly when DVC
    would rerun the same training.
    """
    return select(params.flat(), stage_params("train", dvc_yaml))


def _log_missing_epochs(
    run_id: str, history: dict[str, list[float]], beta_at: Callable[[int], float], last_lr: float
) -> None:
    """Log the epochs a killed run finished but had not yet logged (the state is saved first).

    ``last_lr`` is the lr after the last saved epoch (the resumed scheduler's): the only epoch that can
    be missing, since training stops at the first epoch whose metrics do not reach the store.
    """
    logged = logged_epochs(mlflow.MlflowClient(), run_id)
    epochs = len(history.get("loss", []))
    for epoch in range(1, epochs + 1):
        if epoch not in logged:
            epoch_metrics = {key: series[epoch - 1] for key, series in history.items()} | {"beta": beta_at(epoch)}
            mlflow.log_metrics(epoch_metrics | ({"lr": last_lr} if epoch == epochs else {}), step=epoch)


@dataclass
class Training:
    """One training run: its params, device, model, optimizer, batches, arithmetic and progress. Built by
    :func:`start_training` for the train stage and for every sweep trial alike, so both give the same numbers."""

    params: Params
    device: torch.device
    model: VAE
    optimizer: torch.optim.Optimizer
    train_batches: TensorBatches
    val_batches: TensorBatches | None  # the validation split's, evaluated after every epoch (None: no split)
    precision: str  # "fp32" or "bf16", as train.precision resolves on the device
    scheduler: torch.optim.lr_scheduler.LRScheduler | None  # train.lr_schedule, stepped per batch (None: constant)
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch metrics so far
    start_epoch: int = 1  # the first epoch :meth:`run` trains

    def state(self, run_fingerprint: str, epoch: int, run_id: str) -> TrainState:
        """Everything needed to continue after ``epoch`` (see :mod:`vae.pipeline.resume`)."""
        rng = rng_state(self.train_batches.generator, self.device)
        model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        schedule = self.scheduler.state_dict() if self.scheduler is not None else None
        return TrainState(run_fingerprint, epoch, model, optimizer, rng, self.history, run_id, schedule)

    def resume(self, state: TrainState) -> None:
        """Continue after ``state``'s epoch: its weights, optimizer, random generators and history."""
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        restore_rng(state.rng, self.train_batches.generator, self.device)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state.scheduler)  # the schedule goes on where it stopped
        self.history, self.start_epoch = state.history, state.epoch + 1

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return self.optimizer.param_groups[0]["lr"]

    def run(self, on_epoch_end: Callable[[int, dict[str, float]], None]) -> dict[str, list[float]]:
        """Train to ``params.epochs``, validating after each epoch (``val_*`` metrics); returns the history."""
        return train_vae_model(
            self.model,
            self.train_batches,
            self.optimizer,
            self.device,
            epochs=self.params.epochs,
            beta=self.params.beta_at,
            val_loader=self.val_batches,
            progress=None,
            start_epoch=self.start_epoch,
            history=self.history,
            on_epoch_end=on_epoch_end,
            precision=self.precision,
            scheduler=self.scheduler,
        )


def start_training(
    params: Params, train: FashionMNISTSplit, val: FashionMNISTSplit | None, device: torch.device
) -> Training:
    """A fresh model, optimizer and batches for ``params``, seeded with train.seed; ``val``: the validation
    split (None: data.val_size is 0, no held-out metrics per epoch).

    Raises:
        ParamsError: train.batch_size is larger than the training set.
    """
    if params.train.batch_size > len(train):
        raise ParamsError(
            f"{paths.PARAMS}: train.batch_size = {params.train.batch_size} is larger than the "
            f"{len(train)} training images (lower it or raise data.train_limit)"
        )
    set_seed(params.train.seed)
    precision = resolve_precision(params.train.precision, device)
    model = configure_performance(device, VAE(latent_dim=params.latent_dim, input_channels=1).to(device))
    fast_cpu.enable(model)  # on the CPU, faster convolutions with the same weights (a no-op on CUDA)
    optimizer = make_optimizer(model, params.train.lr)
    train_batches = TensorBatches(train.images, params.train.batch_size, seed=params.train.seed, device=device)
    total_steps = params.epochs * len(train_batches)
    schedule = params.train
    scheduler = make_scheduler(optimizer, schedule.lr_schedule, total_steps, schedule.lr_min, schedule.lr_warmup)
    return Training(
        params,
        device,
        model,
        optimizer,
        train_batches,
        None if val is None else TensorBatches(val.images, params.evaluate.batch_size, shuffle=False, device=device),
        precision,
        scheduler,
    )


def train_pipeline(
    params: Params,
    train: FashionMNISTSplit,
    val: FashionMNISTSplit | None,
    device: torch.device,
    prepared_files: list[Path],
    state_file: Path = STATE_FILE,
) -> dict[str, list[float]]:
    """Train (or continue training) as params say, log to MLflow, write the model and metrics files.

    A checkpoint is written atomically after every epoch; see :mod:`vae.pipeline.resume`.
    """
    check_tracking_store()  # before any work: an unreachable server fails in seconds
    training = start_training(params, train, val, device)
    model, precision = training.model, training.precision

    run_fingerprint = fingerprint(training_settings(params), prepared_files)
    state, note = load_state(run_fingerprint, state_file)
    print(f"train: {note}")
    run_id = None
    if state is not None:
        training.resume(state)
        run_id = state.run_id
    images = EpochImages.for_run(params, (train if val is None else val).images)  # the same ones every epoch

    setup_experiment(params.mlflow.experiment_name)
    name = None if run_id else run_name("train", params.beta, params.latent_dim)
    tags = run_tags(device, "train")
    kept = f"every finished epoch is saved in {state_file}: start the server again and run `dvc repro` to resume"
    with (
        lost_server_reported(kept),
        mlflow.start_run(run_id=run_id, run_name=name, log_system_metrics=params.mlflow.system_metrics) as run,
    ):
        if run_id is None:
            # the params of train and of the stages feeding it: not evaluate's or generate's, which
            # later executions may change without retraining (each logs them in a run of its own);
            # and the tracking settings it ran with, which DVC leaves out of train's params
            mlflow.log_params(select(params.flat(), (*lineage_params("train"), "mlflow")))
            arithmetic = {"precision": precision, "threads": torch.get_num_threads()}  # what rounding depends on
            sizes = {"train_images": len(train), "val_images": 0 if val is None else len(val)}
            mlflow.set_tags(tags | sizes | arithmetic)
            # training fits the train split and reports per-epoch losses on validation; it never reads test
            for split, path, context in zip((train, val), prepared_files, ("training", "validation")):
                log_dataset(split, path, context)
        else:
            _log_missing_epochs(run_id, training.history, params.beta_at, training.lr)
            # the state is saved before the pictures: a kill in between leaves its epoch's to log now
            if images.due(state.epoch) and state.epoch not in logged_image_steps(mlflow.MlflowClient(), run_id):
                images.log(model, state.epoch)
        print(f"train: {len(train)} images on {device} ({precision}), MLflow run {run.info.run_id}")

        def end_of_epoch(epoch: int, metrics: dict[str, float]) -> None:
            with interrupts_deferred():
                save_state(training.state(run_fingerprint, epoch, run.info.run_id), state_file)
                mlflow.log_metrics(metrics | {"beta": params.beta_at(epoch), "lr": training.lr}, step=epoch)
                if images.due(epoch):
                    images.log(model, epoch)

        history = training.run(end_of_epoch)
        save_model(model, paths.MODEL)
        write_json({key: values[-1] for key, values in history.items()}, paths.TRAIN_METRICS)
        write_history_csv(
            history | {"beta": [params.beta_at(e) for e in range(1, params.epochs + 1)]}, paths.TRAIN_HISTORY
        )
        provenance = {k: v for k, v in tags.items() if k == "dvc_exp_name"}
        if GIT_COMMIT_TAG in run.data.tags:
            provenance["git_commit"] = run.data.tags[GIT_COMMIT_TAG]
        log_models(
            model,
            paths.MODEL,
            params.mlflow.registered_model,
            {
                "beta": f"{params.beta:g}",
                "latent_dim": str(params.latent_dim),
                "training_run_id": run.info.run_id,
                "checkpoint_md5": file_md5(paths.MODEL),  # the DVC artifact's hash in dvc.lock
            }
            | provenance,
            as_models=params.mlflow.log_models,
            beta=params.beta,
        )
        write_run_id(run.info.run_id, paths.TRAIN_RUN_ID)
    served = "" if is_server(tracking_uri()) else " (start `mlflow ui` first)"
    print(f"train: the run in MLflow's UI: {ui_link(run.info.experiment_id, run.info.run_id)}{served}")
    clear_state(state_file)  # finished: a later run with the same inputs trains afresh
    return history


def main() -> None:
    params = load_params(paths.PARAMS)
    prepared = [paths.PREPARED_TRAIN] + ([paths.PREPARED_VAL] if params.data.val_size else [])  # a refit: no val
    train = load_prepared(paths.PREPARED_TRAIN)
    val = load_prepared(paths.PREPARED_VAL) if params.data.val_size else None
    try:
        device = get_device(params.train.device)
    except DeviceError as err:
        raise ParamsError(f"{paths.PARAMS}: train.device: {err}") from None
    try:
        train_pipeline(params, train, val, device, prepared)
    except KeyboardInterrupt:
        print(
            f"\ntrain: interrupted; every finished epoch is saved in {STATE_FILE}. "
            "Run `dvc repro` (or `python stages/train.py`) to resume.",
            file=sys.stderr,
        )
        sys.exit(130)
