"""Sweeps on Ray Tune (python -m vae.sweep): real Ray clusters, a real MLflow server, the real DVC pipeline."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from project import (
    EXPERIMENT,
    MlflowServer,
    free_port,
    mlflow_runs,
    new_project,
    readme_layout,
    restore_state,
    run,
    save_state,
    set_params,
)

from vae.sweep import command as sweep_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

GRID = {"space": {"beta": [100, 500], "latent_dim": [2, 4]}, "epochs": 2}


def write_sweep(root: Path, name: str, spec: dict) -> Path:
    path = root / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- bad input: one line before any trial ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"space": {"beta": [100], "trian.lr": [0.1]}}, "space: trian.lr is not a params.yaml key"),
        ({"space": {"data.train_limit": [100]}}, "space: data.train_limit is not a key a sweep can change"),
        ({"space": {"train.lr": [0.001, -1]}}, "space: train.lr = -1.0 is out of range: it must be > 0"),
        ({"space": {"latent_dim": [2, 2.5]}}, "space: latent_dim = 2.5 is not an integer"),
        ({"space": {}}, "space is empty"),
        ({"space": {"beta": []}}, "beta lists no values"),
        ({"space": {"beta": [100]}, "metric": "eval_fid"}, "metric eval_fid is not one the evaluate stage logs"),
        ({"space": {"beta": [100]}, "metric": "eval_val_active_units"}, "has no known direction"),
        (
            {"space": {"beta": [100]}, "metric": "eval_test_nelbo"},
            "metric eval_test_nelbo is a test-set metric, and the test set only reports: "
            "choose by its validation twin eval_val_nelbo",
        ),
        ({"space": {"beta": [100]}, "metric": "eval_iw_log_likelihood"}, "is not one the evaluate stage logs (one of"),
        ({"space": {"train.lr": {"loguniform": [0.1, 0.01]}}, "search": "random"}, "low < high"),
        ({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}, "which a grid cannot enumerate"),
        ({"space": {"beta": [100]}, "resources": {"gpu": 1.5}}, "resources.gpu"),
        ({"space": {"beta": [100]}, "shedular": "asha"}, "unknown key shedular"),
    ],
)
def test_a_bad_sweep_is_one_line_naming_the_culprit(
    spec: dict, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the project's params.yaml and dvc.yaml
    path = write_sweep(tmp_path, "bad", spec)
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([str(path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sweep: error: {path}: "), err
    assert expected in err


def test_a_sweep_without_a_validation_split_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vae.sweep.spec import SweepError, load_sweep

    params = tmp_path / "params.yaml"
    params.write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    set_params(params, **{"data.val_size": 0})
    with pytest.raises(SweepError, match=r"data.val_size: 0, and a sweep chooses on the validation split"):
        load_sweep(write_sweep(tmp_path, "grid", GRID), params)


def test_an_unreachable_ray_address_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(SystemExit):
        sweep_cli.main([str(write_sweep(tmp_path, "grid", GRID))])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RAY_ADDRESS=127.0.0.1:" in err and "cannot reach a Ray cluster" in err, err
    assert time.monotonic() - started < 30


def test_without_the_sweep_extra_the_command_names_it(tmp_path: Path) -> None:
    """`pip install -e .` without `[sweep]`: one line naming the extra, not a traceback from deep inside."""
    without_ray = (
        "import runpy, sys; sys.modules['ray'] = None; sys.argv[0] = 'vae.sweep'; "
        "runpy.run_module('vae.sweep', run_name='__main__')"
    )
    sweep_file = write_sweep(tmp_path, "grid", GRID)
    result = subprocess.run(
        [sys.executable, "-c", without_ray, str(sweep_file)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("sweep: error: Ray Tune or Optuna is not installed")
    assert "pip install -c constraints.txt -e '.[sweep]'" in result.stderr


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml")), ids=lambda p: p.name
)
def test_the_shipped_sweep_files_are_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vae.sweep.spec import load_sweep

    monkeypatch.chdir(path.parents[1])
    assert load_sweep(path).keys


def test_the_reproduce_command_spells_values_dvc_reads_back() -> None:
    from vae.sweep.spec import load_sweep

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "beta_latent.yaml")
    params_file = {"epochs": 10, "beta": 500}
    command = sweep.reproduce_command({"beta": 100, "train.lr": 3e-05}, params_file, "beta-latent-best")
    assert command == "dvc exp run -S beta=100 -S train.lr=3e-05 -S epochs=5 -n beta-latent-best"


# --- real sweeps ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """A tiny DVC project whose prepare and classifier stages ran (what a sweep needs), its saved state,
    and its environment."""
    home = tmp_path_factory.mktemp("sweep")
    env = readme_layout(home, n_train=400, n_test=200)  # the README's relative FASHION_MNIST_DIR, as written
    root = new_project(home / "main", env, train_limit=400, log_models=False)
    run(["dvc", "repro", "classifier"], root, env)
    return root, save_state(root, home / "saved"), env


@pytest.fixture
def project(prepared: tuple[Path, Path, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    """The prepared project as it was saved: a test's sweeps and `--run-best` experiments leave no trace."""
    root, saved, env = prepared
    return restore_state(saved, root), env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    started = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield started
    started.stop()


LOOPBACK = {"node_ip_address": "127.0.0.1"}  # Ray binds to the machine's network address otherwise


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    """A Ray cluster on this machine for the module's tests: a head node of one CPU."""
    from ray.cluster_utils import Cluster

    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False} | LOOPBACK)
    yield head
    head.shutdown()


@pytest.fixture
def cluster(ray_cluster) -> object:
    """Two Ray nodes, one CPU each: the head and one worker (a new one where a test removed the last)."""
    if not ray_cluster.worker_nodes:
        ray_cluster.add_node(num_cpus=1, **LOOPBACK)
    ray_cluster.wait_for_nodes()
    assert len(ray_cluster.list_all_nodes()) == 2
    return ray_cluster


def sweep_command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vae.sweep", str(path), *extra]


def parent_run_id(output: str) -> str:
    return re.search(r"MLflow parent run (\w+)", output).group(1)


def trial_runs(uri: str, parent: str) -> list:
    runs, _ = mlflow_runs(uri, EXPERIMENT)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


@pytest.mark.slow
def test_two_nodes_and_a_sqlite_store_is_one_line(project, cluster) -> None:
    root, env = project
    path = write_sweep(root, "grid", GRID)
    result = subprocess.run(
        sweep_command(path, "--address", cluster.address), cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("sweep: error: the Ray cluster has 2 nodes but the MLflow")
    assert "sqlite:///" in result.stderr and "python -m vae.tracking.server" in result.stderr


@pytest.mark.slow
def test_a_grid_on_two_nodes_runs_every_trial_once_in_mlflow(project, server, cluster) -> None:
    root, env = project
    env = env | {"MLFLOW_TRACKING_URI": server.uri}
    path = write_sweep(root, "grid", GRID)
    output = run(sweep_command(path, "--address", cluster.address), root, env, timeout=600)

    parent = parent_run_id(output)
    trials = trial_runs(server.uri, parent)
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert {(float(r.data.params["beta"]), int(r.data.params["latent_dim"])) for r in trials} == {
        (b, d) for b in (100.0, 500.0) for d in (2, 4)
    }
    assert len({r.data.tags["ray_node_id"] for r in trials}) == 2  # both nodes ran trials
    for r in trials:
        assert r.data.metrics["eval_val_iw_log_likelihood"] < 0 and "val_nelbo" in r.data.metrics
        history = mlflow_runs(server.uri)[1].get_metric_history(r.info.run_id, "loss")
        assert sorted(m.step for m in history) == [1, 2]  # every epoch, once
    best = max(trials, key=lambda r: r.data.metrics["eval_val_iw_log_likelihood"])
    table = output[output.index("4 trials by eval_val_iw_log_likelihood") :].splitlines()
    first = table[2].split()
    assert [float(first[0]), int(first[1])] == [float(best.data.params["beta"]), int(best.data.params["latent_dim"])]
    assert float(first[3]) == pytest.approx(best.data.metrics["eval_val_iw_log_likelihood"], abs=1e-4)
    exp_name = f"grid-best-{parent[:6]}"
    beta = best.data.params["beta"].removesuffix(".0")
    command = f"dvc exp run -S beta={beta} -S latent_dim={best.data.params['latent_dim']} -S epochs=2 -n {exp_name}"
    assert command in output  # epochs: the sweep's budget, not params.yaml's 1


@pytest.mark.slow
def test_a_lost_node_s_trial_resumes_elsewhere_and_finishes_once(project, server, cluster) -> None:
    root, env = project
    env = env | {"MLFLOW_TRACKING_URI": server.uri}
    spec = GRID | {"epochs": 5, "max_failures": 3}  # epochs enough to remove the node mid-trial
    path = write_sweep(root, "lost", spec)
    worker = next(iter(cluster.worker_nodes))
    sweep = subprocess.Popen(
        sweep_command(path, "--address", cluster.address),
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(sweep.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    # until a trial on the worker node has logged its second epoch: a trial logs an epoch before reporting it
    # with its checkpoint, so only then has the first epoch's checkpoint surely reached Tune's driver
    while True:
        assert sweep.poll() is None, "".join(output)[-3000:]
        assert time.monotonic() < deadline, "no trial ran on the worker node"
        parent = re.search(r"MLflow parent run (\w+)", "".join(output))
        on_worker = [
            r
            for r in (trial_runs(server.uri, parent.group(1)) if parent else [])
            if r.data.tags.get("ray_node_id") == worker.node_id
            and max((m.step for m in client.get_metric_history(r.info.run_id, "loss")), default=0) >= 2
        ]
        if on_worker:
            break
        time.sleep(0.5)
    cluster.remove_node(worker)
    assert sweep.wait(timeout=600) == 0, "".join(output)[-5000:]
    reader.join(timeout=10)

    trials = trial_runs(server.uri, parent.group(1))
    assert len(trials) == 4, [r.data.tags.get("ray_trial_id") for r in trials]
    assert len({r.data.tags["ray_trial_id"] for r in trials}) == 4
    assert all(r.info.status == "FINISHED" and "eval_val_iw_log_likelihood" in r.data.metrics for r in trials)
    moved = [r for r in trials if r.info.run_id == on_worker[0].info.run_id][0]
    assert moved.data.tags["ray_node_id"] != worker.node_id  # it finished on the head
    assert "resumed_after_epoch" in moved.data.tags
    steps = sorted(m.step for m in client.get_metric_history(moved.info.run_id, "loss"))
    assert steps == list(range(1, 6))  # each epoch once, though two nodes ran it


@pytest.mark.slow
def test_a_trial_equals_the_dvc_stages_and_a_failing_trial_is_recorded(project) -> None:
    """Local Ray: one good and one diverging trial; --run-best reproduces the good one with `dvc exp run`."""
    root, env = project
    path = write_sweep(root, "lr", {"space": {"train.lr": [0.002, 1.0e6]}, "epochs": 2, "max_failures": 1})
    run(["git", "add", "sweeps"], root, env)
    run(["git", "commit", "-qm", "a sweep"], root, env)
    # one thread in the trial (its CPU share) and in the stages `--run-best` runs: the same sums, the same numbers
    output = run(sweep_command(path, "--run-best"), root, env | {"OMP_NUM_THREADS": "1"}, timeout=900)

    uri = f"sqlite:///{root / 'mlflow.db'}"
    trials = trial_runs(uri, parent_run_id(output))
    assert len(trials) == 2
    good = next(r for r in trials if r.data.params["train.lr"] == "0.002")
    bad = next(r for r in trials if r.data.params["train.lr"] != "0.002")
    assert good.info.status == "FINISHED"
    assert bad.info.status == "FAILED" and "training loss became non-finite" in bad.data.tags["failure_reason"]
    assert "failed: training loss became non-finite" in output

    # --run-best ran `dvc exp run -S train.lr=0.002 -S epochs=2 -n lr-best-…`: the same numbers
    assert "-S train.lr=0.002 -S epochs=2 -n lr-best-" in output
    assert good.data.tags["threads"] == "1"
    evaluation = json.loads((root / "metrics" / "evaluate.json").read_text())
    validation = {name: value for name, value in evaluation.items() if name.startswith("val_")}
    assert len(validation) == 7  # every β-independent metric, on validation
    for name, value in validation.items():
        assert good.data.metrics[f"eval_{name}"] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    assert not [key for key in good.data.metrics if "test" in key]  # a sweep never reads the test set
    trained = json.loads((root / "metrics" / "train.json").read_text())
    for name, value in trained.items():
        assert good.data.metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name  # fp32 or bf16 alike
    assert "lr-best-" in run(["dvc", "exp", "list", "--name-only"], root, env)


@pytest.mark.slow
def test_a_sweep_whose_driver_is_killed_continues_when_run_again(project) -> None:
    """SIGKILL `python -m vae.sweep` (and the Ray it started) after its first finished trial; the same command
    again continues the same Tune experiment under the same parent run, and every trial finishes once."""
    import psutil

    root, env = project
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spec = {"space": {"beta": [100, 300, 500]}, "epochs": 2, "max_concurrent": 1}  # one trial after another
    path = write_sweep(root, "driver", spec)
    # a session of its own: the kill takes the driver and the local Ray it started, as a closed terminal would
    driver = subprocess.Popen(
        sweep_command(path),
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(driver.stdout), daemon=True).start()
    deadline = time.monotonic() + 600
    try:
        while True:  # until the first trial has finished
            assert driver.poll() is None, "".join(output)[-3000:]
            assert time.monotonic() < deadline, "no trial finished"
            parent = re.search(r"MLflow parent run (\w+)", "".join(output))
            finished = [r for r in trial_runs(uri, parent.group(1)) if r.info.status == "FINISHED"] if parent else []
            if finished:
                break
            time.sleep(0.5)
    finally:  # the driver, its process group, and every process it started (Ray's daemons and workers)
        started = psutil.Process(driver.pid).children(recursive=True)
        os.killpg(driver.pid, signal.SIGKILL)
        for child in started:
            child.kill() if child.is_running() else None
        driver.wait(timeout=60)
        psutil.wait_procs(started, timeout=60)
    parent = parent.group(1)
    [first] = finished
    assert "trials by" not in "".join(output)  # killed mid-sweep

    again = run(sweep_command(path), root, env, timeout=900)
    assert "sweep: continuing the interrupted sweep driver-" in again and parent_run_id(again) == parent, again
    trials = trial_runs(uri, parent)
    assert len(trials) == 3 and all(r.info.status == "FINISHED" for r in trials), [r.info.status for r in trials]
    assert sorted(float(r.data.params["beta"]) for r in trials) == [100.0, 300.0, 500.0]  # each trial once
    client = mlflow_runs(uri)[1]
    for r in trials:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss")) == [1, 2]  # each epoch once
    assert next(r for r in trials if r.info.run_id == first.info.run_id).info.end_time == first.info.end_time
    assert client.get_run(parent).info.status == "FINISHED" and "3 trials by" in again
    assert not (root / "ray_results" / "driver.unfinished.json").exists()


def test_a_changed_sweep_file_or_lost_tune_state_starts_afresh_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from vae.sweep.resume import find_unfinished, fingerprint, mark_finished, mark_unfinished
    from vae.sweep.spec import load_sweep

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the project's params.yaml and dvc.yaml
    sweep = load_sweep(write_sweep(tmp_path, "grid", GRID))
    storage = tmp_path / "ray_results"
    assert find_unfinished(sweep, storage) == (None, None)  # nothing left behind: a new sweep, silently
    mark_unfinished(sweep, storage, "grid-1", "a" * 32)
    unfinished, stale = find_unfinished(sweep, storage)  # killed before Tune saved anything: nothing to restore
    assert unfinished is None and stale.experiment == "grid-1"
    assert f"Tune saved no state in {storage / 'grid-1'} for the interrupted sweep grid-1" in capsys.readouterr().out
    sweep.path.write_text(sweep.path.read_text() + "epochs: 3\n")  # the file changed
    assert fingerprint(sweep) != json.loads((storage / "grid.unfinished.json").read_text())["fingerprint"]
    unfinished, stale = find_unfinished(sweep, storage)
    assert unfinished is None and stale.parent_run_id == "a" * 32
    changed = f"{sweep.path} or params.yaml changed since the interrupted sweep grid-1 (run {'a' * 32})"
    assert capsys.readouterr().out == f"sweep: starting afresh: {changed}\n"
    mark_finished(sweep, storage)
    assert not (storage / "grid.unfinished.json").exists()


@pytest.mark.slow
def test_optuna_with_asha_leaves_no_run_running(project) -> None:
    root, env = project
    spec = {
        "search": "optuna",
        "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "latent_dim": [2, 4]},
        "num_samples": 4,
        "epochs": 4,
        "scheduler": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
    }
    output = run(sweep_command(write_sweep(root, "tpe", spec)), root, env, timeout=600)
    trials = trial_runs(f"sqlite:///{root / 'mlflow.db'}", parent_run_id(output))
    assert len(trials) == 4
    for r in trials:
        if r.info.status == "KILLED":
            assert r.data.tags["stopped_early"].startswith("stopped by ASHA after epoch")
        else:
            assert r.info.status == "FINISHED" and "eval_val_iw_log_likelihood" in r.data.metrics
    assert any(r.info.status == "FINISHED" for r in trials)
    assert len({r.data.params["train.lr"] for r in trials}) == 4  # TPE sampled the range
