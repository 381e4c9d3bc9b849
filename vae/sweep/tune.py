"""Sweeps on Ray Tune: the driver, :func:`run_sweep`.

It checks the sweep file, the data and the tracking store, joins Ray
(:mod:`vae.sweep.cluster`), puts the prepared data in Ray's object store once,
opens one MLflow parent run and lets Tune run the trials (:mod:`vae.sweep.trial`).
What a trial could not do itself (a trial stopped by ASHA, a worker that died for
good) is written into its run by the driver when Tune is done; then it prints the
trials best first and the `dvc exp run` command that reproduces the best.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml

from vae.classifier import ImageClassifier, load_classifier
from vae.compare.page import write_page
from vae.config import project_root
from vae.data import ImageSplit
from vae.pipeline import paths
from vae.pipeline.dvc_yaml import lineage_params
from vae.storage import load_prepared
from vae.sweep.cluster import check_cluster, check_reachable, connect
from vae.sweep.resume import Unfinished, close_stale, find_unfinished, mark_finished, mark_unfinished
from vae.sweep.spec import EPOCH_METRIC, Sweep, SweepError
from vae.sweep.trial import FAILURE_TAG, TRIAL_TAG, TrialSetup, run_trial, trial_run
from vae.tracking.registry import best_first
from vae.tracking.runs import GIT_COMMIT_TAG, setup_experiment, ui_link
from vae.tracking.store import check_tracking_store, lost_server_reported


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
    trial, none left RUNNING). A result's metrics are the trial's last report, with its ``trial_id``.
    Not ``ResultGrid.get_dataframe()``: it leaves out a trial that never reported (one failing in its
    first epoch), which the table must show; and not ``get_best_result()``: it ranks failed trials too."""
    outcomes = []
    for trial in results:
        overrides = {key: trial.config[key] for key in sweep.keys}
        result, trial_id = trial.metrics, trial.metrics["trial_id"]
        run = trial_run(client, setup, trial_id)
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


def load_setup_data() -> tuple[ImageSplit, ImageSplit, ImageClassifier | None]:
    """The prepared data and the classifier the trials share; missing ones are named with the fix."""
    missing = [p for p in (paths.PREPARED_TRAIN, paths.PREPARED_VAL, paths.CLASSIFIER) if not p.exists()]
    if missing:
        raise SweepError(
            f"{', '.join(map(str, missing))} missing: trials train on the prepared data and score samples "
            "with the classifier; run `dvc repro classifier` first"
        )
    train, val = load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_VAL)
    classifier = load_classifier(paths.CLASSIFIER, torch.device("cpu"), expected_channels=train.channels)
    return train, val, classifier


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
                _log_sweep_params(sweep, len(nodes))
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
    _reproduce_best(sweep, outcomes, _exp_name(sweep, parent), run_best)
    return outcomes


def _log_sweep_params(sweep: Sweep, ray_nodes: int) -> None:
    """What the sweep is, as params of its parent run."""
    resources = sweep.spec.resources
    mlflow.log_params(
        {
            "sweep_file": str(sweep.path),
            "search": sweep.spec.search,
            "metric": sweep.spec.metric,
            "mode": sweep.mode,
            "epochs": sweep.base["epochs"],
            "scheduler": sweep.spec.scheduler,
            "resources": f"cpu={resources.cpu:g},gpu={resources.gpu:g}",
            "space": yaml.safe_dump(sweep.spec.space, default_flow_style=True).strip(),
            "ray_nodes": ray_nodes,
        }
    )


def _reproduce_best(sweep: Sweep, outcomes: list[TrialOutcome], exp_name: str, run_best: bool) -> None:
    """Print the `dvc exp run` command that reproduces the best finished trial; run it too with ``run_best``."""
    best = outcomes[0] if outcomes and outcomes[0].status == "finished" else None
    if best is None:
        raise SweepError(f"{sweep.path}: no trial finished; see the reasons above")
    command = sweep.reproduce_command(best.overrides, yaml.safe_load(paths.PARAMS.read_text()), exp_name)
    print(f"sweep: reproduce the best trial as a DVC experiment:\n  {command}")
    if run_best:
        print("sweep: running it (--run-best)", flush=True)
        status = subprocess.run(command, shell=True).returncode
        if status != 0:
            raise SweepError(f"`{command}` failed with exit status {status}")


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
            reuse_actors=True,  # a trial after another on the same worker process: torch and vae already imported
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
