"""End to end, each test with a DVC project of its own: queued experiments on two workers, progress in a
log file while training runs, the library example. The README's relative FASHION_MNIST_DIR, as written."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from project import IMAGES, by_stage, children, commit_data_and_classifier, mlflow_runs, new_project, run, run_queue

pytestmark = pytest.mark.slow


def test_parallel_queue_loses_no_run(clone_home: Path, env: dict[str, str]) -> None:
    """Four queued experiments on two workers, starting from no mlflow.db at all."""
    root = new_project(clone_home / "parallel", env, epochs=2)
    commit_data_and_classifier(root, env)
    assert not (root / "mlflow.db").exists()
    betas = ["1.0", "10.0", "100.0", "500.0"]
    run(["dvc", "exp", "run", "--queue", "--set-param", "beta=1,10,100,500"], root, env)  # DVC's grid syntax
    status = run_queue(root, env, jobs=2)
    assert status.count("Success") == 4, status

    runs, client = mlflow_runs(f"sqlite:///{root / 'mlflow.db'}")
    training = by_stage(runs, "train")
    assert sorted(r.data.params["beta"] for r in training) == sorted(betas)  # exactly four: none lost, none twice
    assert len(runs) == 3 * len(betas)
    for run_ in training:
        assert run_.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_.info.run_id, "val_loss")] == [1, 2]
        [evaluate], [generate] = children(runs, run_, "evaluate"), children(runs, run_, "generate")
        logged = {a.path for a in client.list_artifacts(evaluate.info.run_id, "evaluate")}
        logged |= {a.path for a in client.list_artifacts(generate.info.run_id, "generate")}
        assert set(IMAGES) <= logged
        assert evaluate.data.params["beta"] == run_.data.params["beta"]
        assert client.list_artifacts(run_.info.run_id, "checkpoint")
    assert len(client.search_logged_models([runs[0].info.experiment_id])) == 2 * len(betas)  # decoder, encoder
    for name in ("fashion-mnist-vae", "fashion-mnist-vae-encoder"):  # registered by four processes at once
        versions = client.search_model_versions(f"name = '{name}'")
        assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
        assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in training)


def test_progress_reaches_a_log_file_while_training_runs(clone_home: Path, env: dict[str, str]) -> None:
    """`nohup dvc repro > run.log &`: each epoch's line is in the file while training still runs, not at the end."""
    root = new_project(clone_home / "progress", env, epochs=5, log_models=False)
    log = root / "run.log"
    process = subprocess.Popen("dvc repro train > run.log 2>&1", shell=True, cwd=root, env=env)
    try:
        deadline = time.monotonic() + 300
        while not log.exists() or "epoch 1/5" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch line within 300 s"
            time.sleep(0.02)
        # the model is written after the last epoch: a block-buffered stage shows its first epoch only then
        assert not (root / "models/vae.pth").exists(), log.read_text()
        assert "Running stage 'train'" in log.read_text()
    finally:
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert all(f"epoch {n}/5" in text for n in range(1, 6)) and "prepare: fashion-mnist from" in text


def test_the_library_example_reads_the_readme_s_relative_data_dir(clone_home: Path, env: dict[str, str]) -> None:
    root = new_project(clone_home / "example", env)
    command = ["python", "-m", "vae.example", "--epochs", "1", "--limit", "128", "--out", "results"]
    output = run(command, root, env)
    assert "example: wrote" in output
    assert sorted(p.name for p in (root / "results").iterdir()) == [
        "vae_fashion_mnist.pth",
        "vae_generated_samples.png",
        "vae_interpolation.png",
        "vae_reconstructions.png",
    ]
