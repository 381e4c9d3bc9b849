"""Sweeps on Ray Tune: every trial trains and evaluates as the DVC stages do, logged as an MLflow child run.

The driver (:func:`run_sweep`) checks the sweep file, the data and the tracking
store, joins Ray (this machine, or the cluster at ``RAY_ADDRESS``), puts the
prepared data in Ray's object store once, opens one MLflow parent run and lets
Tune run the trials. A trial (:func:`run_trial`) builds its params from
params.yaml and its overrides, trains with :func:`vae.pipeline.train.start_training`
and evaluates with :func:`vae.pipeline.evaluate.evaluate_model`, exactly as
``dvc exp run -S`` would, and reports every epoch to Tune (so ASHA can stop it)
with a checkpoint (so a trial whose node dies resumes on another after its
last finished epoch). Its MLflow run is found again by its Tune trial id, so a
retried trial stays one run. What a trial could not do itself (a trial
stopped by ASHA, a worker that died for good) is written into its run by the
driver when Tune is done.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml

from vae import fast_cpu
from vae.classifier import FashionClassifier, load_classifier
from vae.compare.page import write_page
from vae.config import Params
from vae.data import FashionMNISTSplit
from vae.errors import UserError
from vae.loss import nelbo_of_losses
from vae.model import VAE
from vae.pipeline import paths
from vae.pipeline.dvc_yaml import lineage_params, select
from vae.pipeline.evaluate import evaluate_model
from vae.pipeline.resume import TrainState
from vae.pipeline.train import start_training
from vae.storage import load_model, load_prepared, save_model
from vae.sweep.resume import Unfinished, close_stale, find_unfinished, mark_finished, mark_unfinished
from vae.sweep.spec import EPOCH_METRIC, Sweep, SweepError
from vae.tracking.epoch_images import EpochImages
from vae.tracking.registry import best_first, log_models
from vae.tracking.store import (
    GIT_COMMIT_TAG,
    check_tracking_store,
    is_server,
    logged_epochs,
    lost_server_reported,
    setup_experiment,
    ui_link,
)
from vae.utils import get_device, project_root

STATE = "state.pt"  # the trial checkpoint's file: a vae.pipeline.resume.TrainState
TRIAL_TAG = "ray_trial_id"
NODE_TAG = "ray_node_id"
FAILURE_TAG = "failure_reason"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial gets: put in Ray's object store once by ``tune.with_parameters``."""

    sweep: Sweep
    train: FashionMNISTSplit
    val: FashionMNISTSplit  # every trial is validated and ranked on it; a sweep never reads the test set
    classifier: FashionClassifier
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    git_commit: str | None  # MLflow's tag of it on the parent run, copied to each trial's
    logged_params: tuple[str, ...]  # the params.yaml keys each trial's run logs: those of train and evaluate


class TrialFailed(UserError, RuntimeError):
    """A trial cannot finish: non-finite loss, bad params for this trial, a lost tracking server."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {text[0] if text else ''}"


def _trial_run(client: mlflow.MlflowClient, setup: TrialSetup, trial_id: str) -> mlflow.entities.Run | None:
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


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: ``config`` holds the sampled params.yaml overrides (dotted keys)."""
    import ray
    from ray import tune

    context = tune.get_context()
    trial_id, node_id = context.get_trial_id(), ray.get_runtime_context().get_node_id()
    mlflow.set_tracking_uri(setup.tracking_uri)  # also exported, for MLflow's own threads (system metrics)
    client = mlflow.MlflowClient()
    params = setup.sweep.params(config)
    existing = _trial_run(client, setup, trial_id)
    if existing is not None and existing.info.status == "FAILED":
        # an earlier attempt failed on its own (not a lost node): the same inputs fail the same way
        raise TrialFailed(existing.data.tags.get(FAILURE_TAG, "failed in an earlier attempt"))
    if existing is not None and existing.info.status == "FINISHED":
        # finished before its driver was killed, after Tune's last save of the sweep's state: its run holds
        # the final report, so the trial reports it again instead of training its last epoch once more
        final = {k: v for k, v in existing.data.metrics.items() if not k.startswith("system/")}
        tune.report(final | {"epoch": params.epochs, "mlflow_run_id": existing.info.run_id})
        return
    if existing is None:
        tags = {
            "mlflow.parentRunId": setup.parent_run_id,
            TRIAL_TAG: trial_id,
            "ray_trial_name": context.get_trial_name(),
            "pipeline_stage": "sweep-trial",
            "sweep": setup.sweep.name,
        }
        if setup.git_commit:
            tags[GIT_COMMIT_TAG] = setup.git_commit
        run_id = client.create_run(setup.experiment_id, run_name=context.get_trial_name(), tags=tags).info.run_id
    else:
        run_id = existing.info.run_id
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
        reason = _one_line(err)
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

    def end_of_epoch(epoch: int, metrics: dict[str, float]) -> None:
        metrics = metrics | {
            EPOCH_METRIC: nelbo_of_losses(metrics["val_reconstruction_loss"], metrics["val_kl_loss"]),
            "beta": params.beta_at(epoch),
            "lr": training.lr,
        }
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

    training.run(end_of_epoch)


def _evaluate_and_log(setup: TrialSetup, params: Params, model: VAE, device: torch.device) -> dict[str, float]:
    """The evaluate stage's metrics of the trained model on validation, logged with the model; returns them
    as eval_val_*, as the evaluate stage's run shows them."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / paths.MODEL.name
        save_model(model, checkpoint)
        # evaluated as the evaluate stage does it: the saved model, loaded back
        saved, _ = load_model(checkpoint, device, expected_latent_dim=params.latent_dim)
        fast_cpu.enable(saved)
        # the classifier embeds the Fréchet features where the trial computes, as in the evaluate stage
        classifier = setup.classifier.to(device, memory_format=torch.channels_last)
        metrics, _ = evaluate_model(saved, classifier, setup.train, {"val": setup.val}, params, device)
        evaluation = {f"eval_{key}": value for key, value in metrics.items()}
        mlflow.log_metrics(evaluation, step=params.epochs)
        # logged, not registered: the winner is, once reproduced by DVC
        log_models(saved, checkpoint, None, {}, as_models=params.mlflow.log_models, beta=params.beta)
    return evaluation


# --- the driver ----------------------------------------------------------------------------------


def ray_address(flag: str | None) -> str | None:
    """The cluster to join: ``--address``, else ``RAY_ADDRESS``; None runs Ray on this machine."""
    return flag or os.environ.get("RAY_ADDRESS") or None


# Ray's switch for a single-machine Ray (its default on Windows and macOS): node addresses stay on
# 127.0.0.1. Elsewhere Ray replaces 127.0.0.1 by the machine's network address, for every node and driver.
SINGLE_MACHINE_RAY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


# Ray (2.59 and later) turns token authentication on for the clusters `ray start` creates
TOKEN_HINT = (
    "export RAY_AUTH_MODE=token and put the cluster's token (`ray get-auth-token` on the head) in "
    "~/.ray/auth_token, or name its file in RAY_AUTH_TOKEN_PATH"
)


def keep_local_ray_on_loopback() -> None:
    """Make the Ray this process starts listen on 127.0.0.1, not on the machine's network address, where
    every host that reaches it could join. Before Ray is imported: Ray reads the switch once, at import."""
    os.environ.setdefault(SINGLE_MACHINE_RAY, "0")


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, in seconds, when nothing listens at ``address`` (Ray itself waits much longer)."""
    if address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"RAY_ADDRESS={address}: not a Ray address (host:port, ray://host:port or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SweepError(
            f"RAY_ADDRESS={address}: cannot reach a Ray cluster there ({reason}); start one with "
            "`ray start --head`, or unset RAY_ADDRESS to run the sweep on this machine"
        ) from None


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (see :func:`check_reachable`), or start Ray on this machine
    (on 127.0.0.1 only: see :func:`keep_local_ray_on_loopback`)."""
    import ray
    from ray.exceptions import AuthenticationError

    try:
        # "local": a Ray of its own, never the cluster a `ray start` on this machine left in /tmp/ray, which
        # ray.init(address=None) would join
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=True, configure_logging=False)
    except AuthenticationError:
        raise SweepError(
            f"RAY_ADDRESS={address}: token authentication is on but this machine has no Ray token: {TOKEN_HINT}"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        # the address answered (check_reachable): a refusal is most often a token this driver lacks
        hint = "" if os.environ.get("RAY_AUTH_MODE") == "token" else f"; if the cluster uses tokens, {TOKEN_HINT}"
        raise SweepError(f"RAY_ADDRESS={address}: cannot join the Ray cluster ({_one_line(err)}){hint}") from None


def check_cluster(sweep: Sweep, uri: str) -> list[dict[str, Any]]:
    """The cluster can run this sweep's trials and reach its tracking store; returns its live nodes."""
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) > 1 and not is_server(uri):
        raise SweepError(
            f"the Ray cluster has {len(nodes)} nodes but the MLflow tracking URI is {uri}, a file on this "
            "machine the other nodes cannot write: start a tracking server (python -m vae.tracking.server) "
            "and set MLFLOW_TRACKING_URI=http://<its address>:5000"
        )
    wanted = sweep.spec.resources
    has = [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes]
    if not any(cpu >= wanted.cpu and gpu >= wanted.gpu for cpu, gpu in has):
        have = ", ".join(f"{cpu:g} CPU/{gpu:g} GPU" for cpu, gpu in has)
        raise SweepError(
            f"{sweep.path}: resources: a trial asks for {wanted.cpu:g} CPU and {wanted.gpu:g} GPU, "
            f"more than any node of the cluster has ({have})"
        )
    return nodes


def _search_space(sweep: Sweep) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, entry in sweep.space.items():
        if isinstance(entry, list):
            space[key] = tune.grid_search(entry) if sweep.spec.search == "grid" else tune.choice(entry)
        else:
            ((kind, (low, high)),) = entry.items()
            space[key] = tune.randint(low, high + 1) if kind == "randint" else getattr(tune, kind)(low, high)
    return space


def _search_algorithm(sweep: Sweep) -> Any:
    if sweep.spec.search != "optuna":
        return None  # Tune's own: every grid point, or random samples
    from ray.tune.search.optuna import OptunaSearch

    class FinalResultOptuna(OptunaSearch):
        """Optuna's TPE learns from each trial's evaluation, which only the last epoch's report holds."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return FinalResultOptuna(metric=sweep.spec.metric, mode=sweep.mode, seed=0)


def _scheduler(sweep: Sweep) -> Any:
    if sweep.spec.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    budget = sweep.base["epochs"]
    return ASHAScheduler(
        time_attr="epoch",
        metric=EPOCH_METRIC,
        mode="min",
        max_t=budget,
        grace_period=min(sweep.spec.asha.grace_period, budget),
        reduction_factor=sweep.spec.asha.reduction_factor,
    )


@dataclass
class TrialOutcome:
    """One trial as the sweep's table shows it."""

    overrides: dict[str, Any]
    status: str  # finished, stopped (by ASHA), failed
    epochs: int
    metrics: dict[str, float]
    run_id: str
    reason: str = ""


def _collect(sweep: Sweep, results: Any, setup: TrialSetup, client: mlflow.MlflowClient) -> list[TrialOutcome]:
    """Every trial's outcome from Tune's ``ResultGrid``, and its MLflow run made to say it (one run per
    trial, none left RUNNING). A result's metrics are the trial's last report, with its ``trial_id``."""
    outcomes = []
    for trial in results:
        overrides = {key: trial.config[key] for key in sweep.keys}
        result, trial_id = trial.metrics, trial.metrics["trial_id"]
        run = _trial_run(client, setup, trial_id)
        epochs = int(result.get("epoch", 0))
        if run is None:  # its worker died before it could start its run, every attempt
            run = client.create_run(
                setup.experiment_id,
                run_name=trial_id,
                tags={"mlflow.parentRunId": setup.parent_run_id, TRIAL_TAG: trial_id, "sweep": sweep.name},
            )
        tags = run.data.tags
        run_id = run.info.run_id
        if trial.error is not None:
            status = "failed"
            reason = tags.get(FAILURE_TAG) or "its worker died (a lost node?) and no retry was left"
            if run.info.status != "FAILED":
                client.set_tag(run_id, FAILURE_TAG, reason)
                client.set_terminated(run_id, "FAILED")
        elif sweep.spec.metric in result:
            status, reason = "finished", ""
        else:
            status, reason = "stopped", f"stopped by ASHA after epoch {epochs}"
            client.set_tag(run_id, "stopped_early", reason)
            client.set_terminated(run_id, "KILLED")
        outcomes.append(TrialOutcome(overrides, status, epochs, dict(result), run_id, reason))
    return outcomes


def ranked(outcomes: list[TrialOutcome], metric: str, mode: str) -> list[TrialOutcome]:
    """Finished trials best first by ``metric``, then those stopped early, then the failed."""
    by_status = sorted(outcomes, key=lambda o: ("finished", "stopped", "failed").index(o.status))
    return best_first(by_status, lambda o: o.metrics.get(metric) if o.status == "finished" else None, mode == "max")


def format_table(outcomes: list[TrialOutcome], sweep: Sweep) -> str:
    """The trials, best first: their params, epochs, metric and status, as printed at the end of a sweep."""
    metric, keys = sweep.spec.metric, sweep.keys
    widths = [max(len(k), *(len(_shown(o.overrides[k])) for o in outcomes)) for k in keys]
    header = "  ".join(f"{k:>{w}}" for k, w in zip(keys, widths)) + f"  epochs  {metric:>{len(metric)}}  status"
    lines = [f"{len(outcomes)} trials by {metric} ({'higher' if sweep.mode == 'max' else 'lower'} is better)", header]
    for o in outcomes:
        values = "  ".join(f"{_shown(o.overrides[k]):>{w}}" for k, w in zip(keys, widths))
        value = o.metrics.get(metric)
        shown = f"{value:.4f}" if value is not None and o.status == "finished" else "-"
        status = o.status + (f": {o.reason}" if o.reason and o.status == "failed" else "")
        lines.append(f"{values}  {o.epochs:>6}  {shown:>{len(metric)}}  {status}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load_setup_data() -> tuple[FashionMNISTSplit, FashionMNISTSplit, FashionClassifier]:
    """The prepared data and the classifier the trials share; missing ones are named with the fix."""
    missing = [p for p in (paths.PREPARED_TRAIN, paths.PREPARED_VAL, paths.CLASSIFIER) if not p.exists()]
    if missing:
        raise SweepError(
            f"{', '.join(map(str, missing))} missing: trials train on the prepared data and score samples "
            "with the classifier; run `dvc repro classifier` first"
        )
    classifier = load_classifier(paths.CLASSIFIER, torch.device("cpu"))
    return load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_VAL), classifier


def run_sweep(sweep: Sweep, address: str | None, storage: Path, run_best: bool = False) -> list[TrialOutcome]:
    """Run ``sweep`` on Ray Tune; print the table and the command that reproduces the best trial."""
    import ray

    if address is not None:
        check_reachable(address)  # in seconds: Ray itself waits a minute
    train, val, classifier = load_setup_data()
    uri = check_tracking_store()
    connect(address)
    try:
        nodes = check_cluster(sweep, uri)
        experiment_id = setup_experiment(sweep.params({}).mlflow.experiment_name)
        uri = mlflow.get_tracking_uri()
        client = mlflow.MlflowClient()
        started = time.monotonic()
        unfinished, stale = find_unfinished(sweep, storage)
        if stale is not None:
            close_stale(stale)
        with (
            lost_server_reported("finished trials are in MLflow; start the server again and rerun the sweep"),
            _parent_run(sweep, unfinished) as parent,
        ):
            experiment = unfinished.experiment if unfinished else f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            mark_unfinished(sweep, storage, experiment, parent.info.run_id)
            if unfinished is None:
                mlflow.log_params(
                    {
                        "sweep_file": str(sweep.path),
                        "search": sweep.spec.search,
                        "metric": sweep.spec.metric,
                        "mode": sweep.mode,
                        "epochs": sweep.base["epochs"],
                        "scheduler": sweep.spec.scheduler,
                        "resources": f"cpu={sweep.spec.resources.cpu:g},gpu={sweep.spec.resources.gpu:g}",
                        "space": yaml.safe_dump(sweep.spec.space, default_flow_style=True).strip(),
                        "ray_nodes": len(nodes),
                    }
                )
            commit = parent.data.tags.get(GIT_COMMIT_TAG)
            logged = lineage_params("evaluate")
            setup = TrialSetup(sweep, train, val, classifier, uri, experiment_id, parent.info.run_id, commit, logged)
            print(
                f"sweep: {sweep.name} on {len(nodes)} Ray node(s), {sweep.spec.resources.cpu:g} CPU and "
                f"{sweep.spec.resources.gpu:g} GPU per trial; MLflow parent run {parent.info.run_id}"
            )
            results = _tune(sweep, setup, storage / experiment, restore=unfinished is not None)
            outcomes = ranked(_collect(sweep, results, setup, client), sweep.spec.metric, sweep.mode)
            _log_summary(sweep, outcomes, time.monotonic() - started)
            # the trials side by side, beside Tune's state and on the parent run
            write_page(
                [parent.info.run_id], storage / f"{experiment}.compare.html", log=True, parent=parent.info.run_id
            )
            mark_finished(sweep, storage)
            link = ui_link(experiment_id, parent.info.run_id)
    finally:
        ray.shutdown()
    print(format_table(outcomes, sweep))
    print(f"sweep: the trials in MLflow's UI, under run sweep-{sweep.name}: {link}")
    best = outcomes[0] if outcomes and outcomes[0].status == "finished" else None
    if best is None:
        raise SweepError(f"{sweep.path}: no trial finished; see the reasons above")
    params_file = yaml.safe_load(paths.PARAMS.read_text())
    command = sweep.reproduce_command(best.overrides, params_file, _exp_name(sweep, parent))
    print(f"sweep: reproduce the best trial as a DVC experiment:\n  {command}")
    if run_best:
        print("sweep: running it (--run-best)", flush=True)
        status = subprocess.run(command, shell=True).returncode
        if status != 0:
            raise SweepError(f"`{command}` failed with exit status {status}")
    return outcomes


def _parent_run(sweep: Sweep, unfinished: Unfinished | None) -> mlflow.ActiveRun:
    """The sweep's MLflow parent run: the interrupted sweep's, continued, else a new one."""
    if unfinished is not None:
        return mlflow.start_run(run_id=unfinished.parent_run_id)
    return mlflow.start_run(run_name=f"sweep-{sweep.name}", tags={"pipeline_stage": "sweep"})


def _exp_name(sweep: Sweep, parent: mlflow.ActiveRun) -> str:
    return f"{sweep.name.replace('_', '-')}-best-{parent.info.run_id[:6]}"


def _tune(sweep: Sweep, setup: TrialSetup, folder: Path, restore: bool) -> Any:
    """Run the trials in the Tune experiment ``folder`` (``restore``: continue the one a killed driver left
    there); returns Tune's ``ResultGrid``, every trial in it finished, stopped or failed."""
    from ray import tune

    # the ranking metric comes with the last epoch's report only (see _search_algorithm); Tune's
    # searchers would otherwise reject the earlier epochs' reports for lacking it
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    resources = {"cpu": sweep.spec.resources.cpu, "gpu": sweep.spec.resources.gpu}
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)  # the data: put once
    if restore:  # finished and failed trials stay as they were; unfinished ones go on from their checkpoints
        return tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=False).fit()
    tuner = tune.Tuner(
        trainable,
        param_space=_search_space(sweep),
        tune_config=tune.TuneConfig(
            num_samples=sweep.spec.num_samples,
            search_alg=_search_algorithm(sweep),
            scheduler=_scheduler(sweep),
            max_concurrent_trials=sweep.spec.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=str(folder.parent),
            failure_config=tune.FailureConfig(max_failures=sweep.spec.max_failures),
            verbose=1,
        ),
    )
    return tuner.fit()


def _log_summary(sweep: Sweep, outcomes: list[TrialOutcome], seconds: float) -> None:
    """On the parent run: the table, the best trial's metric and run, and the sweep's throughput."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*sweep.keys, "status", "epochs", sweep.spec.metric, "mlflow_run_id", "reason"])
    for o in outcomes:
        writer.writerow(
            [*(o.overrides[k] for k in sweep.keys), o.status, o.epochs]
            + [o.metrics.get(sweep.spec.metric, ""), o.run_id, o.reason]
        )
    mlflow.log_text(buffer.getvalue(), "sweep_results.csv")
    finished = [o for o in outcomes if o.status == "finished"]
    mlflow.log_metrics({"trials_finished": len(finished), "trials_per_hour": 3600 * len(outcomes) / seconds})
    if finished:
        mlflow.log_metric(f"best_{sweep.spec.metric}", finished[0].metrics[sweep.spec.metric])
        mlflow.set_tag("best_run_id", finished[0].run_id)


def default_storage() -> Path:
    """Where Tune keeps trial checkpoints: ``ray_results/`` in the project (git ignores it)."""
    return project_root() / "ray_results"
