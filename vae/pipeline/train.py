"""Stage train: a resumable, MLflow-tracked training run driven by :class:`vae.config.Params`.

Killed or interrupted, it resumes after the last finished epoch when started again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch

from vae import fast_cpu
from vae.batches import TensorBatches
from vae.config import Params, ParamsError, load_params
from vae.data import ImageSplit
from vae.faults import NotEnoughSpace, Rerun, free_space, human_size
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
    saved_epoch,
)
from vae.pipeline.runner import write_history_csv, write_json
from vae.storage import file_md5, load_prepared, save_model
from vae.tracking.datasets import log_dataset, split_tags
from vae.tracking.epoch_images import EpochImages, pictured_epoch
from vae.tracking.logged_models import log_models
from vae.tracking.runs import GIT_COMMIT_TAG, logged_epochs, run_name, run_tags, setup_experiment, ui_link, write_run_id
from vae.tracking.store import check_tracking_store, is_server, lost_server_reported, sqlite_file, tracking_uri
from vae.trainer import (
    configure_performance,
    make_optimizer,
    make_scheduler,
    record_epoch,
    resolve_precision,
    train_epoch,
)
from vae.utils import DeviceError, get_device, set_seed


def resume_note() -> str:
    """What rerunning the train stage does now: resume after the last saved epoch, or start afresh."""
    epoch = saved_epoch()
    return f"it resumes after epoch {epoch}" if epoch else "it starts from epoch 1"


# what the train stage says after a fault of the machine (vae.faults): rerun, and where it goes on from
RERUN = Rerun(resume=resume_note, batch_param="train.batch_size", store=sqlite_file)


def check_disk_space(model: VAE, folder: Path, log_models: bool) -> None:
    """Stop before any work when ``folder``'s disk cannot hold what training writes there: the resume state
    (weights and Adam's two moments, twice while a new one replaces the old), the model, MLflow's copy
    of it and, with ``log_models``, its exported halves; and a megabyte for pictures and the MLflow store.

    Raises:
        NotEnoughSpace: with the free space and what is needed.
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = weights * (6 + 1 + 1 + (2 if log_models else 0)) + 1_000_000
    free = free_space(folder)
    if free < needed:
        raise NotEnoughSpace(
            f"{folder.absolute()}: {human_size(free)} free on its disk; training writes about "
            f"{human_size(needed)} there (its resume state, the model and MLflow's copies): free space, "
            "then rerun `dvc repro`"
        )


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

    @property
    def epochs(self) -> range:
        """The epochs still to train: from :attr:`start_epoch` to ``params.epochs``."""
        return range(self.start_epoch, self.params.epochs + 1)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train ``epoch``, then validate (``val_*`` metrics); adds its metrics to the history and returns them."""
        batches, beta, of = self.train_batches, self.params.beta_at(epoch), (epoch, self.params.epochs)
        options = {"val_batches": self.val_batches, "precision": self.precision, "scheduler": self.scheduler}
        metrics = train_epoch(self.model, batches, self.optimizer, self.device, beta, of, progress=None, **options)
        record_epoch(self.history, metrics)
        return metrics


def start_training(params: Params, train: ImageSplit, val: ImageSplit | None, device: torch.device) -> Training:
    """A fresh model for ``train``'s images (its channels), optimizer and batches for ``params``, seeded with
    train.seed; ``val``: the validation split (None: data.val_size is 0, no held-out metrics per epoch).

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
    model = VAE(latent_dim=params.latent_dim, input_channels=train.channels)  # gray or RGB, as prepared
    model = configure_performance(device, model.to(device))
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
    train: ImageSplit,
    val: ImageSplit | None,
    device: torch.device,
    prepared_files: list[Path],
    state_file: Path = STATE_FILE,
) -> dict[str, list[float]]:
    """Train (or continue training) as params say, log to MLflow, write the model and metrics files.

    Each epoch: train, validate, save the resume state (atomically; see :mod:`vae.pipeline.resume`),
    log its metrics and pictures. Returns the history of every epoch's metrics.
    """
    check_tracking_store()  # before any work: an unreachable server fails in seconds
    training = start_training(params, train, val, device)
    check_disk_space(training.model, state_file.parent, params.mlflow.log_models)  # not after an epoch
    run_fingerprint = fingerprint(training_settings(params), prepared_files)
    state, note = load_state(run_fingerprint, state_file)
    print(f"train: {note}")
    if state is not None:
        training.resume(state)
    images = EpochImages.for_run(params, (train if val is None else val).images)  # the same ones every epoch
    kept = f"every finished epoch is saved in {state_file}: start the server again and run `dvc repro` to resume"
    with lost_server_reported(kept), training_run(training, state, images, (train, val), prepared_files) as run:
        print(f"train: {len(train)} images on {device} ({training.precision}), MLflow run {run.info.run_id}")
        for epoch in training.epochs:
            metrics = training.train_epoch(epoch)
            with interrupts_deferred():  # a Ctrl-C now waits until the epoch is saved and logged
                save_state(training.state(run_fingerprint, epoch, run.info.run_id), state_file)
                mlflow.log_metrics(metrics | {"beta": params.beta_at(epoch), "lr": training.lr}, step=epoch)
                if images.due(epoch):
                    images.log(training.model, epoch)
        write_results(training, run)
    served = "" if is_server(tracking_uri()) else " (start `mlflow ui` first)"
    print(f"train: the run in MLflow's UI: {ui_link(run.info.experiment_id, run.info.run_id)}{served}")
    clear_state(state_file)  # finished: a later run with the same inputs trains afresh
    return training.history


@contextmanager
def training_run(
    training: Training,
    state: TrainState | None,
    images: EpochImages,
    splits: tuple[ImageSplit, ImageSplit | None],
    prepared_files: list[Path],
) -> Iterator[mlflow.ActiveRun]:
    """The training's MLflow run: a new one with its params, tags and datasets, or, resuming ``state``, its
    run again, first logging what the stopped run had finished but not logged."""
    params = training.params
    setup_experiment(params.mlflow.experiment_name)
    run_id = None if state is None else state.run_id
    name = None if run_id else run_name("train", params.beta, params.latent_dim)
    with mlflow.start_run(run_id=run_id, run_name=name, log_system_metrics=params.mlflow.system_metrics) as run:
        if state is None:
            # the params of train and of the stages feeding it: not evaluate's or generate's, which
            # later executions may change without retraining (each logs them in a run of its own);
            # and the tracking settings it ran with, which DVC leaves out of train's params
            mlflow.log_params(select(params.flat(), (*lineage_params("train"), "mlflow")))
            arithmetic = {"precision": training.precision, "threads": torch.get_num_threads()}  # rounding's
            train, val = splits
            sizes = {"train_images": len(train), "val_images": 0 if val is None else len(val)}
            mlflow.set_tags(run_tags(training.device, "train") | sizes | arithmetic | split_tags(train))
            # training fits the train split and reports per-epoch losses on validation; it never reads test
            for split, path, context in zip(splits, prepared_files, ("training", "validation")):
                log_dataset(split, path, context)
        else:
            _log_missing_epochs(state.run_id, training.history, params.beta_at, training.lr)
            # the state is saved before the pictures: a kill in between leaves its epoch's to log now
            if images.due(state.epoch) and pictured_epoch(run) < state.epoch:
                images.log(training.model, state.epoch)
        yield run


def write_results(training: Training, run: mlflow.ActiveRun) -> None:
    """After the last epoch: the model and the metrics files (DVC's outputs), the logged and registered
    models, and the run-id file that evaluate and generate read."""
    params, history, model = training.params, training.history, training.model
    save_model(model, paths.MODEL)
    write_json({key: values[-1] for key, values in history.items()}, paths.TRAIN_METRICS)
    betas = [params.beta_at(e) for e in range(1, params.epochs + 1)]
    write_history_csv(history | {"beta": betas}, paths.TRAIN_HISTORY)
    provenance = {k: v for k, v in run_tags(training.device, "train").items() if k == "dvc_exp_name"}
    if GIT_COMMIT_TAG in run.data.tags:
        provenance["git_commit"] = run.data.tags[GIT_COMMIT_TAG]
    version_tags = {
        "beta": f"{params.beta:g}",
        "latent_dim": str(params.latent_dim),
        "training_run_id": run.info.run_id,
        "checkpoint_md5": file_md5(paths.MODEL),  # the DVC artifact's hash in dvc.lock
    }
    registered, as_models = params.mlflow.registered_model, params.mlflow.log_models
    log_models(model, paths.MODEL, registered, version_tags | provenance, as_models=as_models, beta=params.beta)
    write_run_id(run.info.run_id, paths.TRAIN_RUN_ID)


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
