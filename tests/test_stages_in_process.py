"""The pipeline stages run in-process on tiny data: figures closed, metrics reproducible, errors one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
import yaml
from conftest import write_fashion_mnist
from project import prepared_project, set_params

from vae.classifier import ImageClassifier, save_classifier
from vae.config import load_params
from vae.data import DataError
from vae.errors import UserError, run_command
from vae.model import VAE
from vae.pipeline import evaluate, generate, paths
from vae.storage import save_model
from vae.tracking.runs import write_run_id

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with tiny params, prepared data, an untrained model and classifier, as cwd."""
    evaluate = {"evaluate.iw_samples": 4, "evaluate.fd_samples": 64, "evaluate.batch_size": 32}
    root = prepared_project(tmp_path, monkeypatch, **evaluate)
    torch.manual_seed(0)
    save_model(VAE(latent_dim=2), paths.MODEL)
    save_classifier(ImageClassifier(), paths.CLASSIFIER)
    write_run_id("0" * 32, paths.TRAIN_RUN_ID)  # a training run this store does not hold
    return root


def test_evaluate_and_generate_leave_no_figure_open(project: Path, capsys: pytest.CaptureFixture) -> None:
    plt.close("all")
    evaluate.main()
    generate.main()
    assert plt.get_fignums() == []  # a sweep calls these many times
    assert (paths.EVALUATE_DIR / "vae_latent_space.png").is_file()
    assert (paths.GENERATE_DIR / "vae_latent_grid.png").is_file()
    assert (paths.GENERATE_DIR / "vae_latent_explorer.html").is_file()
    assert "is not in sqlite" in capsys.readouterr().err  # the unknown training run is said, not fatal


def test_the_same_checkpoint_gives_the_same_sampled_metrics_twice(project: Path) -> None:
    from vae.classifier import load_classifier
    from vae.storage import load_model, load_prepared

    params = load_params()
    model, _ = load_model(paths.MODEL)
    classifier = load_classifier(paths.CLASSIFIER)
    train = load_prepared(paths.PREPARED_TRAIN)
    splits = {"val": load_prepared(paths.PREPARED_VAL), "test": load_prepared(paths.PREPARED_TEST)}
    first, _ = evaluate.evaluate_model(model, classifier, train, splits, params, torch.device("cpu"))
    torch.randn(1000)  # whatever drew from the global generator in between
    second, _ = evaluate.evaluate_model(model, classifier, train, splits, params, torch.device("cpu"))
    assert first == second
    # validation's and test's β-independent metrics (validation's are what a sweep may optimise), test's losses
    per_split = [f"{split}_{name}" for split in ("val", "test") for name in evaluate.SPLIT_METRICS]
    assert set(first) == set(per_split) | set(evaluate.LOSS_NAMES)
    assert first["val_nelbo"] != first["test_nelbo"]  # two splits, two numbers
    other_seed = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"seed": 1})})
    third, _ = evaluate.evaluate_model(model, classifier, train, splits, other_seed, torch.device("cpu"))
    assert third["val_classifier_frechet_distance"] != first["val_classifier_frechet_distance"]  # the seed counts
    assert third["test_iw_log_likelihood"] != first["test_iw_log_likelihood"]


def test_training_never_reads_the_test_set(project: Path) -> None:
    from vae.pipeline import train

    paths.PREPARED_TEST.unlink()  # any read of it would fail the stage
    set_params(Path("params.yaml"), epochs=1, **{"train.batch_size": 32, "mlflow.log_models": False})
    train.main()
    history = paths.TRAIN_HISTORY.read_text().splitlines()[0].split(",")
    assert {"val_loss", "val_reconstruction_loss", "val_kl_loss"} <= set(history)
    assert not [column for column in history if column.startswith("test")]


def test_validation_stays_the_same_images_whatever_train_limit(project: Path) -> None:
    from vae.pipeline import prepare

    val, train = paths.PREPARED_VAL.read_bytes(), paths.PREPARED_TRAIN.read_bytes()
    set_params(Path("params.yaml"), **{"data.train_limit": 10})
    prepare.main()
    assert paths.PREPARED_VAL.read_bytes() == val and paths.PREPARED_TRAIN.read_bytes() != train
    set_params(Path("params.yaml"), **{"data.val_size": 0})
    prepare.main()
    assert not paths.PREPARED_VAL.exists()  # none: a refit on every training image


def test_only_user_errors_become_one_line(capsys: pytest.CaptureFixture) -> None:
    def user_mistake() -> None:
        raise DataError("data/x.pt: not a prepared data file")

    with pytest.raises(SystemExit) as stopped:
        run_command("demo", user_mistake)
    assert stopped.value.code == 1 and capsys.readouterr().err == "demo: error: data/x.pt: not a prepared data file\n"
    assert issubclass(DataError, UserError)

    def bug() -> None:
        open("/nonexistent/file")  # a FileNotFoundError from a bug keeps its traceback

    with pytest.raises(FileNotFoundError):
        run_command("demo", bug)


def test_benchmark_without_data_is_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FASHION_MNIST_DIR": str(tmp_path / "nowhere")}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("benchmark: error: Fashion-MNIST not found in") and "nowhere" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_complete_example_writes_exactly_its_four_files(tmp_path: Path) -> None:
    source = write_fashion_mnist(tmp_path / "idx", n_train=64, n_test=32)
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "vae.example", "--epochs", "1", "--latent-dim", "2", "--beta", "500"]
        + ["--out", str(out), "--data-dir", str(source)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    expected = [
        "vae_fashion_mnist.pth",
        "vae_generated_samples.png",
        "vae_interpolation.png",
        "vae_reconstructions.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == expected
    from vae.storage import load_model

    model, _ = load_model(out / "vae_fashion_mnist.pth")
    assert model.latent_dim == 2
    for name in expected[1:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run(
        [sys.executable, "-m", "vae.example", "--out", str(out), "--data-dir", str(tmp_path / "none")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and missing.stderr.startswith("example: error: Fashion-MNIST not found")


@pytest.mark.parametrize("system_metrics", [True, False])
def test_training_run_records_its_data_and_system_metrics_as_the_param_says(
    project: Path, monkeypatch: pytest.MonkeyPatch, system_metrics: bool
) -> None:
    import hashlib

    import mlflow

    from vae.pipeline import train

    params = yaml.safe_load(Path("params.yaml").read_text())
    params.update(epochs=1)
    params["train"].update(batch_size=32)
    params["mlflow"].update(system_metrics=system_metrics)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # the run lasts seconds
    train.main()

    client = mlflow.MlflowClient()
    run = client.get_run(paths.TRAIN_RUN_ID.read_text().strip())
    recorded = {key for key in run.data.metrics if key.startswith("system/")}
    assert ("system/cpu_utilization_percentage" in recorded) is system_metrics, recorded
    assert run.data.params["mlflow.system_metrics"] == str(system_metrics)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}  # training never reads the test set
    for context, path in (("training", paths.PREPARED_TRAIN), ("validation", paths.PREPARED_VAL)):
        assert inputs[context].name == f"fashion-mnist-{path.stem}"
        assert inputs[context].digest == hashlib.md5(path.read_bytes()).hexdigest()
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_gets_the_model_training_kind(project: Path) -> None:
    import mlflow

    from vae.tracking.runs import setup_experiment
    from vae.tracking.store import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    made_before = client.create_experiment("made-before-the-tag")
    assert "mlflow.experimentKind" not in client.get_experiment(made_before).tags
    assert setup_experiment("made-before-the-tag") == made_before
    assert client.get_experiment(made_before).tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_created_by_another_process_meanwhile_is_used(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two queued experiments on a server both find no experiment, and both create it: the second must use it."""
    import mlflow

    from vae.tracking.runs import setup_experiment
    from vae.tracking.store import tracking_uri

    existing = mlflow.MlflowClient(tracking_uri()).create_experiment("created-meanwhile")
    real_lookup, lookups = mlflow.get_experiment_by_name, []

    def lookup_before_the_other_process_created_it(name: str):
        lookups.append(name)
        return None if len(lookups) == 1 else real_lookup(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", lookup_before_the_other_process_created_it)
    assert setup_experiment("created-meanwhile") == existing
    assert len(lookups) == 2


@pytest.mark.parametrize("log_models", [True, False])
def test_mlflow_log_models_false_logs_the_checkpoint_alone(project: Path, log_models: bool) -> None:
    import mlflow

    from vae.pipeline import train

    params = yaml.safe_load(Path("params.yaml").read_text())
    params.update(epochs=1)
    params["train"].update(batch_size=32)
    params["mlflow"].update(log_models=log_models, log_images_every=0)
    Path("params.yaml").write_text(yaml.safe_dump(params))
    train.main()

    client = mlflow.MlflowClient()
    run = client.get_run(paths.TRAIN_RUN_ID.read_text().strip())
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/vae.pth"]
    models = client.search_logged_models([run.info.experiment_id])
    logged = ["decoder-beta500-latent2", "encoder-beta500-latent2"]  # params.yaml's beta and latent_dim
    assert sorted(m.name for m in models) == (logged if log_models else [])
    versions = client.search_model_versions("name = 'fashion-mnist-vae'")
    assert len(versions) == (1 if log_models else 0)  # nothing to register without the models
