"""End to end: the DVC pipeline in a temporary copy of the repository, a few hundred images, one epoch.

Uses the real data when FASHION_MNIST_DIR is set, else tiny IDX files written here.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import PipelineStates
from project import IMAGES, by_stage, children, free_port, restore_state, run, run_queue, save_state
from project import mlflow_runs as runs_in

pytestmark = pytest.mark.slow

OUTPUTS = [
    "data/prepared/train.pt",
    "data/prepared/test.pt",
    "models/vae.pth",
    "outputs/train_run_id.txt",
    "outputs/evaluate_run_id.txt",
    "outputs/generate_run_id.txt",
    "metrics/train.json",
    "metrics/train_history.csv",
    "metrics/evaluate.json",
    "metrics/classifier.json",
    "models/classifier.pth",
    "outputs/evaluate/vae_reconstructions.png",
    "outputs/evaluate/vae_latent_space.png",
    "outputs/generate/vae_generated_samples.png",
    "outputs/generate/vae_latent_grid.png",
    "outputs/generate/vae_interpolation.png",
    "outputs/generate/vae_latent_explorer.html",
]


@pytest.fixture(scope="module")
def env(pipeline_states: PipelineStates) -> dict[str, str]:
    """The README's environment the project was made with."""
    return pipeline_states.env


@pytest.fixture
def reproduced(pipeline_states: PipelineStates) -> Path:
    """The project right after `dvc repro`."""
    return restore_state(pipeline_states.baseline, pipeline_states.root)


@pytest.fixture
def project(pipeline_states: PipelineStates) -> Path:
    """The project with two trainings: the committed β=500 baseline and the β=100 experiment in the workspace."""
    return restore_state(pipeline_states.two_trainings, pipeline_states.root)


@pytest.fixture(scope="module")
def three_trainings(pipeline_states: PipelineStates, env: dict[str, str]) -> tuple[Path, str]:
    """The two trainings and a queued experiment (β=50 on 150 images) run by `dvc queue start`: the saved
    state and the queue's status."""
    root = restore_state(pipeline_states.two_trainings, pipeline_states.root)
    run(["dvc", "exp", "run", "--queue", "--set-param", "beta=50", "--set-param", "data.train_limit=150"], root, env)
    status = run_queue(root, env, jobs=1)
    stop_queue_workers(root, env)
    return save_state(root, root.parent / "three-trainings"), status


def stop_queue_workers(root: Path, env: dict[str, str], timeout: float = 60) -> None:
    """`dvc queue stop`, then wait until no worker is left: one idles a minute in the project's .dvc/tmp
    after its queue empties, and a state saved or replaced under it would not be the one it leaves."""
    run(["dvc", "queue", "stop"], root, env)
    deadline = time.monotonic() + timeout
    while "Worker status: 0 active, 0 idle" not in (status := run(["dvc", "queue", "status"], root, env)):
        assert time.monotonic() < deadline, status
        time.sleep(1)


def mlflow_runs(root: Path) -> tuple[list, object]:
    """The runs in the project's own store, ``root/mlflow.db``."""
    return runs_in(f"sqlite:///{root / 'mlflow.db'}")


def snapshot(root: Path) -> dict[str, dict]:
    """Every run's params and full metric histories (step, value, timestamp), by run id."""
    runs, client = mlflow_runs(root)
    return {
        r.info.run_id: {
            "params": r.data.params,
            "metrics": {
                key: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(r.info.run_id, key)]
                for key in r.data.metrics
            },
        }
        for r in runs
    }


def test_repro_writes_every_output_and_is_up_to_date(reproduced: Path, env: dict[str, str]) -> None:
    project = reproduced
    for name in OUTPUTS:
        assert (project / name).is_file() and (project / name).stat().st_size > 0, name
    assert "up to date" in run(["dvc", "status"], project, env)
    metrics = json.loads((project / "metrics/train.json").read_text())
    assert set(metrics) == {
        "loss",
        "reconstruction_loss",
        "kl_loss",
        "val_loss",
        "val_reconstruction_loss",
        "val_kl_loss",
    }
    history = (project / "metrics/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,") and history[0].endswith(",beta") and len(history) == 2
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert 0 < evaluation["test_reconstruction_loss"] < 1
    for split in ("val", "test"):  # validation to choose by, test to report
        nelbo, iw = evaluation[f"{split}_nelbo"], evaluation[f"{split}_iw_log_likelihood"]
        assert iw >= -nelbo - 1.0  # K=10 bound, one-sample NELBO noise
        assert evaluation[f"{split}_active_units"] in (0, 1, 2) and 0 <= evaluation[f"{split}_knn_accuracy"] <= 1
        assert evaluation[f"{split}_classifier_frechet_distance"] > 0
    assert not [key for key in evaluation if key.startswith("val_") and "loss" in key]  # train.json has those
    assert 0 <= json.loads((project / "metrics/classifier.json").read_text())["test_accuracy"] <= 1


def test_a_one_line_model_change_marks_every_stage_that_runs_the_model_changed(
    project: Path, env: dict[str, str]
) -> None:
    model_file = project / "vae" / "model.py"
    original = model_file.read_text()
    model_file.write_text(original.replace("class VAE(", "# one line changed\nclass VAE(", 1))
    try:
        changed = set(json.loads(run(["dvc", "status", "--json"], project, env)))
    finally:
        model_file.write_text(original)
    assert {"train", "evaluate", "generate"} <= changed, changed
    assert "up to date" in run(["dvc", "status"], project, env)


def stages_to_rerun(project: Path, env: dict[str, str], **changes: object) -> set[str]:
    """The stages `dvc repro` would run after applying ``changes`` ("generate.seed": 3) to params.yaml."""
    original = (project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for parent in parents:
            section = section[parent]
        section[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = run(["dvc", "repro", "--dry"], project, env)
    finally:
        (project / "params.yaml").write_text(original)
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_reruns_only_what_a_param_change_affects(project: Path, env: dict[str, str]) -> None:
    assert stages_to_rerun(project, env) == set()
    assert stages_to_rerun(project, env, **{"generate.num_samples": 10}) == {"generate"}
    # a dry run lists the stages whose own inputs changed; generate follows once train rewrites the model
    assert stages_to_rerun(project, env, beta=7) == {"train", "evaluate"}
    assert "prepare" in stages_to_rerun(project, env, **{"data.test_limit": 100})
    # where results are tracked retrains nothing (a resumable state would be thrown away)
    assert stages_to_rerun(project, env, **{"mlflow.system_metrics": False}) == set()
    assert stages_to_rerun(project, env, **{"mlflow.experiment_name": "elsewhere"}) == set()
    assert stages_to_rerun(project, env, **{"mlflow.log_images_every": 0}) == set()


def test_experiment_with_another_beta(pipeline_states: PipelineStates, project: Path, env: dict[str, str]) -> None:
    # `dvc exp run --set-param beta=100` after the baseline's results were committed
    out = pipeline_states.beta_100_output
    assert "Stage 'prepare' didn't change, skipping" in out
    assert all(f"Running stage '{stage}'" in out for stage in ("train", "evaluate", "generate"))
    table = json.loads(run(["dvc", "exp", "show", "--json"], project, env))
    experiments = [exp for rev in table for exp in (rev.get("experiments") or [])]
    found = [
        rev["data"]
        for exp in experiments
        for rev in exp["revs"]
        if rev["data"]["params"]["params.yaml"]["data"]["beta"] == 100
    ]
    assert found, f"no experiment with beta=100 in dvc exp show: {table}"
    metrics = found[0]["metrics"]
    assert metrics["metrics/evaluate.json"]["data"]["test_loss"] > 0
    assert metrics["metrics/train.json"]["data"]["loss"] > 0


def test_the_readme_s_comparison_shows_params_and_validation_verdicts_of_every_experiment(
    project: Path, env: dict[str, str]
) -> None:
    """The README's `dvc exp show --drop … --keep …` line, as written: β, latent_dim and two validation
    numbers comparable across β, one row per experiment; nothing β-dependent, nothing from test."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [line] = re.findall(r"(?m)^dvc exp show .*$", readme)
    table = run(shlex.split(line.split("  #")[0]), project, env)
    lines = [row.split() for row in table.splitlines() if row.strip() and not set(row.strip()) <= set("─━-|")]
    assert sorted(lines[0]) == sorted(["Experiment", "beta", "latent_dim", "val_nelbo", "val_knn_accuracy"])
    column = {name: lines[0].index(name) - len(lines[0]) for name in lines[0]}  # from the right: names have spaces
    betas = {row[column["beta"]] for row in lines[1:]}
    assert {"500", "100"} <= betas, table
    for row in lines[1:]:
        assert float(row[column["val_nelbo"]]) > 0 and 0 <= float(row[column["val_knn_accuracy"]]) <= 1


def test_plots_diff_shows_each_experiment_s_pictures_side_by_side(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """docs/pipeline.md's `dvc plots diff HEAD EXP`: every picture of both, by revision."""
    [exp] = {
        r.data.tags["dvc_exp_name"] for r in by_stage(mlflow_runs(project)[0], "train") if "dvc_exp_name" in r.data.tags
    }
    run(["dvc", "plots", "diff", "HEAD", exp, "-o", str(tmp_path / "plots")], project, env)
    shown = {p.name for p in (tmp_path / "plots" / "static").iterdir()}
    pictures = [
        "evaluate_vae_reconstructions.png",
        "generate_vae_generated_samples.png",
        "generate_vae_latent_grid.png",
    ]
    assert {f"{rev}_outputs_{picture}" for rev in ("HEAD", exp) for picture in pictures} <= shown


def test_mlflow_holds_both_runs_with_metrics_images_and_model(project: Path, tmp_path: Path) -> None:
    import mlflow

    runs, client = mlflow_runs(project)
    training = {run_.data.params["beta"]: run_ for run_ in by_stage(runs, "train")}
    assert set(training) == {"500.0", "100.0"}, f"training runs: {[r.data.params.get('beta') for r in runs]}"
    assert len(runs) == 6  # each execution: a training run with an evaluate and a generate run under it
    for run_ in training.values():
        assert run_.info.status == "FINISHED"
        for key in ("loss", "reconstruction_loss", "kl_loss", "val_loss", "val_reconstruction_loss", "val_kl_loss"):
            history = client.get_metric_history(run_.info.run_id, key)
            assert [m.step for m in history] == [1], key
        assert [m.value for m in client.get_metric_history(run_.info.run_id, "beta")] == [
            float(run_.data.params["beta"])
        ]
        # the params training used, not those of stages that may later change without retraining
        assert {"beta", "train.lr", "data.train_limit", "evaluate.batch_size"} <= set(run_.data.params)
        assert not any(key.startswith(("generate.", "classifier.", "evaluate.knn")) for key in run_.data.params)
        assert run_.data.tags["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
        assert len(run_.data.tags["mlflow.source.git.commit"]) == 40
        [evaluate], [generate] = children(runs, run_, "evaluate"), children(runs, run_, "generate")
        assert {
            f"eval_{split}_{name}"
            for split in ("val", "test")
            for name in ("nelbo", "iw_log_likelihood", "active_units", "knn_accuracy", "classifier_frechet_distance")
        } | {"eval_test_loss"} <= set(evaluate.data.metrics)
        inputs = {i.tags[0].value: i.dataset.name for i in evaluate.inputs.dataset_inputs}
        assert inputs == {
            "training": "fashion-mnist-train",
            "validation": "fashion-mnist-val",
            "testing": "fashion-mnist-test",
        }
        assert evaluate.data.params["beta"] == run_.data.params["beta"] and "evaluate.knn_k" in evaluate.data.params
        # the verdict on the training run too, where runs are compared: the β-independent metrics, not the losses
        verdict = {k: v for k, v in evaluate.data.metrics.items() if k.startswith("eval_") and "loss" not in k}
        assert {k: v for k, v in run_.data.metrics.items() if k.startswith("eval_")} == verdict
        assert len(verdict) == 14  # 7 on validation, 7 on test
        beta = f"{float(run_.data.params['beta']):g}"
        assert evaluate.info.run_name.endswith(f"evaluate beta={beta} latent=2"), evaluate.info.run_name
        assert generate.info.run_name.endswith(f"generate beta={beta} latent=2"), generate.info.run_name
        assert evaluate.data.tags["training_run_id"] == run_.info.run_id
        assert "generate.seed" in generate.data.params and "evaluate.knn_k" not in generate.data.params
        for child in (evaluate, generate):
            assert child.info.status == "FINISHED" and child.data.tags.get("dvc_exp_name") == run_.data.tags.get(
                "dvc_exp_name"
            )
        logged = {a.path for a in client.list_artifacts(evaluate.info.run_id, "evaluate")}
        logged |= {a.path for a in client.list_artifacts(generate.info.run_id, "generate")}
        assert set(IMAGES) <= logged and "generate/vae_latent_explorer.html" in logged
    assert training["100.0"].data.tags.get("dvc_exp_name")
    # the workspace holds the last experiment (beta=100): its run-id files name its runs
    [evaluate_100] = children(runs, training["100.0"], "evaluate")
    assert (project / "outputs/train_run_id.txt").read_text().strip() == training["100.0"].info.run_id
    assert (project / "outputs/evaluate_run_id.txt").read_text().strip() == evaluate_100.info.run_id
    # runs:/ URIs resolve through it (conftest resets MLflow's tracking URI after each test)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    # named whose it is: the DVC experiment's name, the part and the key params
    exp = training["100.0"].data.tags["dvc_exp_name"]
    uri = f"runs:/{training['100.0'].info.run_id}/{exp}-decoder-beta100-latent2"
    model = mlflow.pytorch.load_model(uri, dst_path=str(tmp_path))
    with torch.inference_mode():
        images = model(torch.randn(5, 2))
    assert images.shape == (5, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_experiment_changing_only_evaluate_params_gets_a_run_of_its_own(project: Path, env: dict[str, str]) -> None:
    before = snapshot(project)
    out = run(["dvc", "exp", "run", "--set-param", "evaluate.knn_k=7"], project, env)
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out, out
    assert "Running stage 'generate'" not in out, out
    after = snapshot(project)
    [new_id] = set(after) - set(before)
    runs, client = mlflow_runs(project)
    [new] = [r for r in runs if r.info.run_id == new_id]
    [training_100] = [r for r in by_stage(runs, "train") if r.data.params["beta"] == "100.0"]
    # no earlier run gained or lost a number, but for the verdict its model's training run shows: each
    # eval_* metric once more, the new evaluation's
    verdict_run = training_100.info.run_id
    assert {run_id: after[run_id] for run_id in before if run_id != verdict_run} == {
        run_id: numbers for run_id, numbers in before.items() if run_id != verdict_run
    }
    was, now = before[verdict_run], after[verdict_run]
    assert now["params"] == was["params"]
    for key, history in now["metrics"].items():
        if key.startswith("eval_"):
            gained = [m for m in history if m not in was["metrics"][key]]
            assert len(history) == len(was["metrics"][key]) + 1 and len(gained) == 1, key
            assert gained[0][1] == new.data.metrics[key], key
        else:
            assert history == was["metrics"][key], key
    assert new.data.tags["pipeline_stage"] == "evaluate" and new.data.tags.get("dvc_exp_name")
    assert new.data.tags["mlflow.parentRunId"] == training_100.info.run_id  # the run that made the model
    assert new.data.params["evaluate.knn_k"] == "7" and new.data.params["beta"] == "100.0"
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert new.data.metrics["eval_val_knn_accuracy"] == pytest.approx(evaluation["val_knn_accuracy"])
    # what the training run shows is the latest evaluation's
    shown = client.get_run(training_100.info.run_id).data.metrics
    assert shown["eval_val_knn_accuracy"] == new.data.metrics["eval_val_knn_accuracy"]
    assert (project / "outputs/evaluate_run_id.txt").read_text().strip() == new_id
    print(f"\nnew evaluate run {new_id} under training run {training_100.info.run_id}:")
    for key in ("eval_val_knn_accuracy", "eval_val_nelbo"):
        print(f"  {key}: {[(m.step, m.value) for m in client.get_metric_history(new_id, key)]}")


def test_run_cache_restored_training_then_new_generate_params(project: Path, env: dict[str, str]) -> None:
    """Train and evaluate come back from DVC's run cache; generate runs anew, in a run of its own."""
    before = snapshot(project)
    out = run(["dvc", "exp", "run", "-S", "beta=500", "-S", "evaluate.knn_k=5", "-S", "generate.seed=3"], project, env)
    assert "Running stage 'train'" not in out and "Running stage 'evaluate'" not in out, out
    assert "Running stage 'generate'" in out, out
    after = snapshot(project)
    assert {run_id: after[run_id] for run_id in before} == before
    [new_id] = set(after) - set(before)
    runs, _ = mlflow_runs(project)
    [new] = [r for r in runs if r.info.run_id == new_id]
    [training_500] = [r for r in by_stage(runs, "train") if r.data.params["beta"] == "500.0"]
    assert (project / "outputs/train_run_id.txt").read_text().strip() == training_500.info.run_id  # restored
    assert new.data.tags["pipeline_stage"] == "generate"
    assert new.data.tags["mlflow.parentRunId"] == training_500.info.run_id
    assert new.data.params["generate.seed"] == "3" and new.data.params["beta"] == "500.0"
    assert (project / "outputs/generate_run_id.txt").read_text().strip() == new_id


def test_mlflow_ui_serves_the_runs_over_rest(project: Path, env: dict[str, str]) -> None:
    port = free_port()
    # exactly the README's command, from the project root, bound to loopback on a free port; one uvicorn
    # worker (MLflow's MLFLOW_WORKERS), not four that each import the server, for this one client
    server = subprocess.Popen(
        ["mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=project,
        env=env | {"MLFLOW_WORKERS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=fashion-mnist-vae") as r:
                    experiment_id = json.load(r)["experiment"]["experiment_id"]
                break
            except OSError:
                assert server.poll() is None, "mlflow ui exited early"
                assert time.monotonic() < deadline, "mlflow ui did not answer within 90 s"
                time.sleep(1)
        request = urllib.request.Request(
            f"{base}/runs/search",
            data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            runs = json.load(r)["runs"]
        betas = {p["value"] for run_ in runs for p in run_["data"]["params"] if p["key"] == "beta"}
        assert {"500.0", "100.0"} <= betas
        verdicts = {
            m["value"]
            for run_ in runs
            if {"key": "pipeline_stage", "value": "train"} in run_["data"]["tags"]
            for m in run_["data"].get("metrics", [])
            if m["key"] == "eval_val_nelbo"
        }
        assert len(verdicts) >= 2  # every training run carries its evaluation's verdict
        charts, column = verdict_in_the_browser(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs")
        assert "eval_val_nelbo" in charts  # the training runs' chart view has the verdict's card
        assert {round(v, 6) for v in verdicts} <= {round(float(c), 6) for c in column if c != "-"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def verdict_in_the_browser(runs_page: str) -> tuple[list[str], list[str]]:
    """In Chromium, on `mlflow ui`'s runs page: the chart cards found by searching `eval_val_nelbo`, and the
    cells of the runs table's `eval_val_nelbo` column once a user adds it (Columns → search → tick them)."""
    from playwright.sync_api import sync_playwright
    from test_explorer import chromium_or_fail

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_or_fail(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(runs_page + "?compareRunsMode=CHART")
        page.get_by_placeholder("Search metric charts").fill("eval_val_nelbo")
        cards = page.locator('[data-testid="experiment-view-compare-runs-card"] h4[title="eval_val_nelbo"]')
        cards.first.wait_for(timeout=60_000)
        charts = page.locator('[data-testid="experiment-view-compare-runs-card"] h4').all_inner_texts()
        page.goto(runs_page + "?compareRunsMode=TABLE")
        page.get_by_role("button", name="Columns", exact=True).click()
        page.get_by_placeholder("Search columns").fill("eval_val_nelbo")
        page.get_by_text("Metrics (").click()  # ticks the metrics found: eval_val_nelbo and its two halves
        page.keyboard.press("Escape")
        header = page.locator('[role="columnheader"][col-id="metrics.`eval_val_nelbo`"]')
        header.first.wait_for(timeout=30_000)
        cells = page.locator('[role="gridcell"][col-id="metrics.`eval_val_nelbo`"]')
        cells.first.wait_for(timeout=30_000)  # the grid fills its cells after the header appears
        column = cells.all_inner_texts()
        browser.close()
    return charts, column


def test_queued_experiment_lands_in_the_project_store(
    pipeline_states: PipelineStates, three_trainings: tuple[Path, str]
) -> None:
    """A data change reruns prepare in DVC's temporary copy (.dvc/tmp/exps/…), where the README's relative
    FASHION_MNIST_DIR still names the project's data: it is relative to the project root (DVC_ROOT)."""
    state, status = three_trainings
    project = restore_state(state, pipeline_states.root)
    assert status.count("Success") == 1, status
    runs, _ = mlflow_runs(project)
    queued = [r for r in by_stage(runs, "train") if r.data.params.get("beta") == "50.0"]
    assert len(queued) == 1 and queued[0].info.status == "FINISHED"
    assert queued[0].data.tags["train_images"] == "150"  # prepare ran again, on the data the README points at
    [generate] = children(runs, queued[0], "generate")
    artifact_dir = Path(generate.info.artifact_uri.removeprefix("file://"))
    assert artifact_dir.is_relative_to(project) and (artifact_dir / "generate" / "vae_interpolation.png").is_file()


def test_the_comparison_page_holds_every_training_and_marks_the_best(
    pipeline_states: PipelineStates, three_trainings: tuple[Path, str], env: dict[str, str], tmp_path: Path
) -> None:
    """`python -m vae.compare` on two DVC experiments (by name) and the baseline (by run id): one page
    with each training's verdict, the best of each column marked, its pictures inline, nothing fetched,
    and nothing left in the temporary folder."""
    import re
    from html.parser import HTMLParser

    project = restore_state(three_trainings[0], pipeline_states.root)
    runs, client = mlflow_runs(project)
    training = {r.data.params["beta"]: r for r in by_stage(runs, "train")}
    names = [training["100.0"].data.tags["dvc_exp_name"], training["50.0"].data.tags["dvc_exp_name"]]
    baseline = next(r for r in by_stage(runs, "train") if "dvc_exp_name" not in r.data.tags)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = ["python", "-m", "vae.compare", *names, baseline.info.run_id, "--log"]
    out = run(command, project, env | {"TMPDIR": str(temporary)})
    assert "compare: 3 trainings → compare.html" in out
    assert not list(temporary.iterdir())  # the pictures' downloads are gone
    page = (project / "compare.html").read_text()

    class Cells(HTMLParser):  # the verdict table's rows: (text, marked best) per cell
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[tuple[str, bool]]] = []
            self.references: list[str] = []
            self.best = False

        def handle_starttag(self, tag: str, attrs: list) -> None:
            attrs = dict(attrs)
            self.references += [v for k, v in attrs.items() if k in ("src", "href")]
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.best = attrs.get("class") == "best"

        def handle_data(self, data: str) -> None:
            if self.rows and data.strip():
                self.rows[-1].append((data.strip(), self.best))

    cells = Cells()
    cells.feed(page)
    assert cells.references and all(ref.startswith("data:image/png;base64,") for ref in cells.references)
    assert not re.search(r"url\(|https?://", page)  # nothing to fetch: the page opens offline
    assert len(cells.references) == 1 + 3 * 3  # the curves, and three pictures of each training
    header = [text for text, _ in cells.rows[0]]
    table = {row[0][0]: dict(zip(header, row)) for row in cells.rows[1:4]}
    shown = [baseline, training["100.0"], training["50.0"]]
    assert sorted(table) == sorted(r.info.run_name for r in shown)
    for column, higher in (("val_nelbo", False), ("val_iw_log_likelihood", True), ("test_nelbo", False)):
        values = {r.info.run_name: r.data.metrics[f"eval_{column}"] for r in shown}
        for name, value in values.items():
            assert float(table[name][column][0]) == pytest.approx(value, rel=1e-3)
        best = (max if higher else min)(values, key=values.get)
        assert [name for name in table if table[name][column][1]] == [best], (column, values)
    [logged] = [r for r in mlflow_runs(project)[0] if r.data.tags.get("pipeline_stage") == "compare"]
    assert [a.path for a in client.list_artifacts(logged.info.run_id, "compare")] == ["compare/compare.html"]


def test_cifar10_and_a_folder_of_digits_run_as_experiments_and_are_never_ranked_together(
    reproduced: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """The issue's two experiments, as a user types them: CIFAR-10 in torchvision's layout (tiny pickled
    batches) and a folder of real images (scikit-learn's 1,797 8×8 digits as PNG class folders). Each
    finishes with the model's input_channels right, colour (resp. gray) pictures, NELBO on validation
    and test and tagged runs; compare refuses to mix them; one more picture makes prepare changed."""
    from datasets import write_cifar10, write_digits_folder
    from PIL import Image

    from vae.storage import load_model

    folders = {"cifar10": write_cifar10(tmp_path / "cifar", per_batch=60, n_test=200), "folder": tmp_path / "digits"}
    write_digits_folder(folders["folder"])
    for dataset, channels in (("cifar10", 3), ("folder", 1)):
        name = f"on-{dataset}"
        # as the issue types them, exporting no MLflow models (seconds each run): no test here loads one
        settings = [
            "-S",
            f"data.dataset={dataset}",
            "-S",
            f"data.dir={folders[dataset]}",
            "-S",
            "mlflow.log_models=false",
        ]
        run(["dvc", "exp", "run", "-n", name, *settings], reproduced, env)
        model, _ = load_model(reproduced / "models/vae.pth")
        assert model.input_channels == channels
        evaluation = json.loads((reproduced / "metrics/evaluate.json").read_text())
        assert evaluation["val_nelbo"] > 0 and evaluation["test_nelbo"] > 0 and "val_knn_accuracy" in evaluation
        picture = np.asarray(Image.open(reproduced / "outputs/evaluate/vae_reconstructions.png").convert("RGB"))
        coloured = (picture.max(axis=2) != picture.min(axis=2)).any()
        assert coloured == (channels == 3), dataset  # the originals row: CIFAR's colours, the digits' grays
        [training] = [
            r
            for r in by_stage(runs_in(f"sqlite:///{reproduced}/mlflow.db")[0], "train")
            if r.data.tags.get("dvc_exp_name") == name
        ]
        assert training.data.tags["dataset"] == dataset and training.data.tags["input_channels"] == str(channels)
        assert {d.dataset.name for d in training.inputs.dataset_inputs} == {f"{dataset}-train", f"{dataset}-val"}
    shown = run(
        ["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", "Experiment|data.dataset|val_nelbo"], reproduced, env
    )
    rows = {row.split(",")[0]: row.split(",")[-1] for row in shown.splitlines()}  # data.dataset is the last column
    assert rows["on-cifar10"] == "cifar10" and rows["on-folder"] == "folder", shown
    refused = subprocess.run(
        ["python", "-m", "vae.compare", "on-cifar10", "on-folder"],
        cwd=reproduced,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "cannot rank trainings on different data together" in refused.stderr and "cifar10" in refused.stderr
    assert "up to date" in run(["dvc", "status"], reproduced, env)  # the folder experiment is the workspace's
    extra = folders["folder"] / "3" / "extra.png"
    extra.write_bytes(next((folders["folder"] / "3").iterdir()).read_bytes())
    assert "prepare:" in run(["dvc", "status"], reproduced, env)
