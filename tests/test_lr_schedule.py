"""train.lr_schedule: PyTorch's schedulers stepped per batch, their state in the checkpoint, constant unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from project import prepared_project

from vae.config import load_params
from vae.pipeline import paths, train
from vae.pipeline.train import start_training
from vae.storage import load_prepared

EPOCHS, BATCH = 3, 32  # 96 training images: 3 steps an epoch, 9 in all


def lrs_of_a_run(kind: str, **settings: object) -> tuple[list[float], int]:
    """The lr of every optimizer step of a real training run with ``kind``, and the steps it took."""
    params = load_params()
    params = params.model_copy(
        update={"epochs": EPOCHS, "train": params.train.model_copy(update={"lr_schedule": kind, **settings})}
    )
    data = load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_TEST)
    training = start_training(params, *data, torch.device("cpu"))
    seen: list[float] = []
    training.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"])
    )
    for epoch in training.epochs:
        training.train_epoch(epoch)
    return seen, EPOCHS * len(training.train_batches)


def reference(kind: str, steps: int, lr: float, lr_min: float = 1e-5) -> list[float]:
    """PyTorch's own scheduler of ``kind``, alone over ``steps`` steps: the lr of each."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    if kind == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr_min)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.25)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    changes = {"epochs": EPOCHS, "train.batch_size": BATCH, "mlflow.system_metrics": False}
    # 96 training images and no validation split: 3 batches of 32 per epoch
    return prepared_project(tmp_path, monkeypatch, **changes, **{"mlflow.registered_model": None, "data.val_size": 0})


@pytest.mark.parametrize(("kind", "settings"), [("cosine", {"lr_min": 1e-5}), ("onecycle", {"lr_warmup": 0.25})])
def test_every_step_s_lr_is_pytorch_s_schedule(project: Path, kind: str, settings: dict) -> None:
    seen, steps = lrs_of_a_run(kind, **settings)
    assert steps == 9 and len(seen) == steps  # stepped per batch, over every epoch's batches
    assert seen == pytest.approx(reference(kind, steps, lr=0.001), rel=1e-12)
    assert len(set(seen)) > 3  # the lr did change


def test_constant_is_no_scheduler_at_all(project: Path) -> None:
    seen, _ = lrs_of_a_run("constant")
    assert set(seen) == {0.001}
    params = load_params()
    data = load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_TEST)
    assert start_training(params, *data, torch.device("cpu")).scheduler is None  # today's arithmetic, unchanged


def test_the_lr_of_each_epoch_is_an_mlflow_metric(project: Path) -> None:
    from project import set_params

    set_params(paths.PARAMS, **{"train.lr_schedule": "cosine"})
    train.main()
    history = mlflow.MlflowClient().get_metric_history(paths.TRAIN_RUN_ID.read_text().strip(), "lr")
    lrs = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    assert lrs == pytest.approx(
        reference("cosine", 9, 0.001, lr_min=0.0)[3::3] + [0.0], abs=1e-12
    )  # after steps 3, 6, 9
    assert lrs[0] > lrs[1] > lrs[2]


def test_killed_mid_schedule_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from project import set_params

    set_params(paths.PARAMS, **{"train.lr_schedule": "onecycle"})
    train.main()
    uninterrupted = torch.load(paths.MODEL, weights_only=True)["state_dict"]
    metrics = json.loads(paths.TRAIN_METRICS.read_text())

    save_state = train.save_state

    def killed_after_epoch_2(state: object, path: Path) -> None:
        save_state(state, path)
        if state.epoch == 2:
            raise SystemExit("killed")

    monkeypatch.setattr(train, "save_state", killed_after_epoch_2)
    with pytest.raises(SystemExit):
        train.main()
    monkeypatch.setattr(train, "save_state", save_state)
    train.main()  # resumes after epoch 2: the schedule's step count comes from the checkpoint
    resumed = torch.load(paths.MODEL, weights_only=True)["state_dict"]
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    assert json.loads(paths.TRAIN_METRICS.read_text()) == metrics
