"""The model registry and serving: versions registered by the pipeline, promotion, loading and serving by alias.

Two training runs (β=500 from `dvc repro`, committed, and β=100 from `dvc exp run`) in a tiny copy of the
repository with the default SQLite store: test_pipeline.py's project (``pipeline_states``), made once for
both files, which run on one worker. The served models run in real `mlflow models serve` processes on free
loopback ports.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import PipelineStates
from project import by_stage, free_port, mlflow_runs, packages_loaded_by_import, restore_state, run

pytestmark = pytest.mark.slow

NAME, ENCODER = "fashion-mnist-vae", "fashion-mnist-vae-encoder"


@pytest.fixture(scope="module")
def project(pipeline_states: PipelineStates) -> tuple[Path, dict[str, str]]:
    """The pipeline's two trainings, restored once for this file: its tests promote, tag and serve them."""
    root = restore_state(pipeline_states.two_trainings, pipeline_states.root)
    return root, pipeline_states.env | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}


def client(root: Path):
    import mlflow

    store = f"sqlite:///{root / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=store, registry_uri=store)


def evaluation_of(root: Path) -> dict[str, dict[str, float]]:
    """Each training run id → the metrics of its evaluate run."""
    runs, _ = mlflow_runs(f"sqlite:///{root / 'mlflow.db'}")
    return {r.data.tags["training_run_id"]: r.data.metrics for r in by_stage(runs, "evaluate")}


def promote(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vae.tracking.promote", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_training_run_registers_its_decoder_and_encoder(project: tuple[Path, dict[str, str]]) -> None:
    root, _ = project
    registry = client(root)
    runs, _ = mlflow_runs(f"sqlite:///{root / 'mlflow.db'}")
    training = {r.info.run_id: r for r in by_stage(runs, "train")}
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    for name in (NAME, ENCODER):
        versions = registry.search_model_versions(f"name = '{name}'")
        assert sorted(v.run_id for v in versions) == sorted(training), name
        for version in versions:
            run_ = training[version.run_id]
            assert version.tags["beta"] == f"{float(run_.data.params['beta']):g}"
            assert version.tags["latent_dim"] == run_.data.params["latent_dim"] == "2"
            assert version.tags["git_commit"] == run_.data.tags["mlflow.source.git.commit"]
            assert version.tags["training_run_id"] == version.run_id
            assert version.tags.get("dvc_exp_name") == run_.data.tags.get("dvc_exp_name")
    # the version of the committed run names the same file as DVC's artifact, by the hash in dvc.lock
    committed_md5 = next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models/vae.pth")
    assert committed_md5 in {v.tags["checkpoint_md5"] for v in registry.search_model_versions(f"name = '{NAME}'")}
    # the evaluate stage's metrics are on each decoder version's MLflow model
    evaluations = evaluation_of(root)
    for version in registry.search_model_versions(f"name = '{NAME}'"):
        model_id = version.source.removeprefix("models:/")  # MLflow 3: a version's source is its logged model
        logged = {m.key: m.value for m in registry.get_logged_model(model_id).metrics}
        assert logged["eval_val_iw_log_likelihood"] == pytest.approx(
            evaluations[version.run_id]["eval_val_iw_log_likelihood"]
        )


def test_dvc_lists_and_gets_the_model_artifact(project: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, env = project
    head = run(["git", "rev-parse", "HEAD"], root, env).strip()
    run(["gto", "register", NAME, head], root, env)  # a version tag in git, DVC's model registry
    assert NAME in run(["gto", "show"], root, env)
    run(["dvc", "artifacts", "get", str(root), NAME, "-o", str(tmp_path / "vae.pth")], tmp_path, env)
    committed = run(["git", "show", f"{head}:dvc.lock"], root, env)
    md5 = next(o["md5"] for o in yaml.safe_load(committed)["stages"]["train"]["outs"] if o["path"].endswith(".pth"))
    assert hashlib.md5((tmp_path / "vae.pth").read_bytes()).hexdigest() == md5


def test_promote_picks_the_best_in_each_direction_and_a_rerun_changes_nothing(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    registry = client(root)
    evaluations = evaluation_of(root)
    version_of = {v.run_id: int(v.version) for v in registry.search_model_versions(f"name = '{NAME}'")}
    best_iw = max(evaluations, key=lambda r: evaluations[r]["eval_val_iw_log_likelihood"])
    best_nelbo = min(evaluations, key=lambda r: evaluations[r]["eval_val_nelbo"])

    first = promote(root, env)
    print(f"\n$ python -m vae.tracking.promote\n{first.stdout}")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"{NAME}: versions by eval_val_iw_log_likelihood (higher is better)"
    assert f"champion: version {version_of[best_iw]}" in first.stdout
    assert int(registry.get_model_version_by_alias(NAME, "champion").version) == version_of[best_iw]
    assert registry.get_model_version_by_alias(ENCODER, "champion").run_id == best_iw  # the same run's encoder
    aliases = {name: registry.get_registered_model(name).aliases for name in (NAME, ENCODER)}

    again = promote(root, env)
    assert again.returncode == 0 and f"champion: version {version_of[best_iw]}, unchanged" in again.stdout
    assert {name: registry.get_registered_model(name).aliases for name in aliases} == aliases

    lower = promote(root, env, "--metric", "nelbo")  # short for eval_val_nelbo: promotion chooses on validation
    assert lower.returncode == 0, lower.stderr
    assert "versions by eval_val_nelbo (lower is better)" in lower.stdout
    assert int(registry.get_model_version_by_alias(NAME, "champion").version) == version_of[best_nelbo]
    worst_knn = min(evaluations, key=lambda r: evaluations[r]["eval_val_knn_accuracy"])
    best_knn = max(evaluations, key=lambda r: evaluations[r]["eval_val_knn_accuracy"])
    if worst_knn != best_knn:  # higher is better: the direction matters
        assert promote(root, env, "--metric", "eval_val_knn_accuracy").returncode == 0
        assert int(registry.get_model_version_by_alias(NAME, "champion").version) == version_of[best_knn]
    assert promote(root, env).returncode == 0  # back to the default ranking


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        ("eval_no_such", "promote: error: no registered version has metric 'eval_no_such'; their evaluate runs have: "),
        (
            "val_nelbo_kl",
            "promote: error: eval_val_nelbo_kl depends on beta or has no better direction; rank by one of: ",
        ),
        (
            "test_nelbo",
            "promote: error: eval_test_nelbo is a test-set metric, and the test set only reports: "
            "choose by its validation twin eval_val_nelbo",
        ),
        ("eval_test_loss", "promote: error: eval_test_loss is a test-set metric, and the test set only reports: "),
    ],
)
def test_promote_refuses_a_metric_it_cannot_rank_by_in_one_line(
    project: tuple[Path, dict[str, str]], metric: str, message: str
) -> None:
    root, env = project
    result = promote(root, env, "--metric", metric)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr
    if "no registered version" in message:
        assert "eval_val_iw_log_likelihood" in result.stderr and "eval_val_nelbo" in result.stderr


@pytest.fixture(scope="module")
def champion(project: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    """The project once `python -m vae.tracking.promote` (the default ranking) has named both champions:
    whatever other tests promoted before, the alias names a version."""
    root, env = project
    result = promote(root, env)
    assert result.returncode == 0, result.stderr
    return project


@pytest.fixture
def serve(champion: tuple[Path, dict[str, str]]) -> Iterator:
    """Start `mlflow models serve` (the README's command) for a model URI; stop it at the end."""
    root, env = champion
    servers: list[subprocess.Popen] = []

    def start(uri: str) -> str:
        port = free_port()
        server = subprocess.Popen(
            ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=root,
            env=env | {"MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"},  # as the README serves: CPU models
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        servers.append(server)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    return f"http://127.0.0.1:{port}/invocations"
            except OSError:
                assert server.poll() is None, f"mlflow models serve {uri} exited"
                assert time.monotonic() < deadline, f"mlflow models serve {uri} did not answer in 180 s"
                time.sleep(0.5)

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=60)


def post(url: str, inputs: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps({"inputs": inputs}).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_the_champion_decoder_is_served_over_rest_and_rejects_a_wrong_latent_width(serve) -> None:
    url = serve(f"models:/{NAME}@champion")
    status, answer = post(url, [[0.0, 0.0], [1.5, -0.5], [-2.0, 2.0]])
    images = np.asarray(answer["predictions"])
    assert status == 200 and images.shape == (3, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    status, answer = post(url, [[0.0, 0.0, 0.0]])
    print(f"\nwrong width: HTTP {status}: {answer['message']}")
    assert status == 400 and "does not match expected shape (-1, 2)" in answer["message"]


def test_the_champion_encoder_embeds_images_without_this_package(
    champion: tuple[Path, dict[str, str]], serve, tmp_path: Path
) -> None:
    root, env = champion
    from vae.storage import load_model, load_prepared
    from vae.utils import batch_images

    version = client(root).get_model_version_by_alias(ENCODER, "champion")
    images = batch_images(load_prepared(root / "data/prepared/test.pt").images[:5], torch.device("cpu"))
    # loaded in a process where importing this package fails
    code = (
        "import sys, json, numpy, torch, mlflow; sys.modules['vae'] = None; "
        f"e = mlflow.pytorch.load_model('models:/{ENCODER}@champion'); "
        "x = torch.tensor(numpy.array(json.load(sys.stdin), dtype=numpy.float32)); print(json.dumps(e(x).tolist()))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(images.tolist()),
        env=env | {"TMPDIR": str(tmp_path)},  # where MLflow downloads the model to, and leaves it
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    means = torch.tensor(json.loads(loaded.stdout))
    # the same as the champion run's own checkpoint gives, through this package
    import mlflow

    checkpoint = mlflow.artifacts.download_artifacts(
        run_id=version.run_id,
        artifact_path="checkpoint/vae.pth",
        dst_path=str(tmp_path),
        tracking_uri=env["MLFLOW_TRACKING_URI"],
    )
    model, _ = load_model(checkpoint)
    with torch.inference_mode():
        expected, _ = model.encode(images)
    assert means.shape == (5, 2) and torch.allclose(means, expected, atol=1e-5)

    url = serve(f"models:/{ENCODER}@champion")
    status, answer = post(url, images[:2].tolist())
    assert status == 200 and np.allclose(answer["predictions"], expected[:2].numpy(), atol=1e-5)
    status, answer = post(url, images[:2, :, :28, :28].tolist())
    assert status == 400 and "does not match expected shape (-1, 1, 32, 32)" in answer["message"]


def test_the_champion_decoder_loads_by_alias(champion: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, env = champion
    code = (
        "import torch, mlflow; "
        f"d = mlflow.pytorch.load_model('models:/{NAME}@champion'); x = d(torch.randn(4, 2)); "
        "print(tuple(x.shape), float(x.min()) >= 0, float(x.max()) <= 1)"
    )
    env = env | {"TMPDIR": str(tmp_path)}  # where MLflow downloads the model to, and leaves it
    loaded = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert loaded.stdout.strip() == "(4, 1, 32, 32) True True", loaded.stderr[-2000:]


def test_a_refit_is_listed_as_having_no_validation_and_never_wins() -> None:
    from vae.tracking.registry import Candidate, Promotion, format_promotion, rank

    chosen = Candidate(1, "a" * 32, {"beta": "1275"}, {"eval_val_nelbo": 236.8, "eval_test_nelbo": 237.6})
    refit = Candidate(2, "b" * 32, {"beta": "1275"}, {"eval_test_nelbo": 237.2})  # data.val_size: 0
    never = Candidate(3, "c" * 32, {"beta": "1275"}, {})
    ranked = rank([refit, never, chosen], "nelbo")
    assert ranked[0] is chosen
    table = format_promotion(Promotion(NAME, "eval_val_nelbo", ranked, chosen, None)).splitlines()
    assert table[3].rstrip().endswith("no validation") and table[4].rstrip().endswith("not evaluated")


def test_the_promote_command_starts_without_torch() -> None:
    """Promotion reads the registry: the model logging that needs torch lives in vae.tracking.logged_models."""
    assert packages_loaded_by_import("vae.tracking.promote", {"torch"}) == []
