"""Watch it learn: the training run's samples, reconstructions and latent grid after every epoch, in MLflow."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from project import prepared_project, set_params

from vae.config import load_params
from vae.generator import decode_latents
from vae.model import VAE
from vae.pipeline import paths, train
from vae.storage import load_prepared
from vae.tracking.epoch_images import KEYS, SAMPLES, SAMPLES_PER_ROW, EpochImages

REPO = Path(__file__).resolve().parents[1]
CELL = 32 + 2  # a tile and its border, in pixels


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with prepared tiny data and 3-epoch params, as cwd, with a store of its own."""
    changes = {"epochs": 3, "train.batch_size": 32, "mlflow.system_metrics": False, "mlflow.registered_model": None}
    return prepared_project(tmp_path, monkeypatch, **changes)


def pictures(run_id: str, folder: Path) -> dict[str, dict[int, list[np.ndarray]]]:
    """Every picture the run logged, by key and step (a list: a step logged twice shows as two)."""
    local = Path(mlflow.MlflowClient().download_artifacts(run_id, "images", str(folder)))
    found: dict[str, dict[int, list[np.ndarray]]] = {}
    for path in sorted(local.glob("*.png")):
        key, step = re.fullmatch(r"(.+?)\+step\+(\d+)\+.*", path.stem).groups()
        found.setdefault(key, {}).setdefault(int(step), []).append(np.asarray(Image.open(path)))
    return found


def test_each_epoch_shows_the_decodes_of_the_same_codes_at_that_epoch_s_weights(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    weights: dict[int, dict[str, torch.Tensor]] = {}
    save_state = train.save_state

    def keep_weights(state: object, path: Path) -> None:  # each epoch's weights, as the checkpoint has them
        weights[state.epoch] = copy.deepcopy(state.model)
        save_state(state, path)

    monkeypatch.setattr(train, "save_state", keep_weights)
    train.main()
    run_id = paths.TRAIN_RUN_ID.read_text().strip()
    logged = pictures(run_id, tmp_path / "images")

    assert set(logged) == set(KEYS)  # latent_dim 2: the latent grid too
    for key in KEYS:
        assert sorted(logged[key]) == [1, 2, 3] and all(len(p) == 1 for p in logged[key].values()), key
    codes = EpochImages.for_run(load_params(), load_prepared(paths.PREPARED_TEST).images).codes
    assert codes.shape == (SAMPLES, 2)
    for epoch in (1, 2, 3):
        model = VAE(latent_dim=2)
        model.load_state_dict(weights[epoch])
        expected = decode_latents(model, codes)[:, 0].numpy() * 255  # (64, 32, 32)
        [picture] = logged["samples"][epoch]
        for k in range(SAMPLES):
            row, col = divmod(k, SAMPLES_PER_ROW)
            tile = picture[2 + row * CELL : 2 + row * CELL + 32, 2 + col * CELL : 2 + col * CELL + 32]
            np.testing.assert_allclose(tile, expected[k], atol=0.5 + 1e-3)  # the 8-bit rounding
        [reconstructions] = logged["reconstructions"][epoch]
        assert reconstructions.shape == (2 + 2 * CELL, 2 + 8 * CELL)  # originals over reconstructions
        [grid] = logged["latent_grid"][epoch]
        assert grid.shape == (2 + 10 * CELL,) * 2  # generate.grid_size
    assert np.abs(logged["samples"][1][0].astype(int) - logged["samples"][3][0]).max() > 0  # the model learnt


def test_a_resumed_run_logs_the_missing_epoch_s_pictures_once(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Killed after epoch 2's checkpoint but before its pictures: the resumed run logs them, then epoch 3's."""
    log = EpochImages.log

    def dies_at_epoch_2(self: EpochImages, model: VAE, epoch: int) -> None:
        if epoch == 2:
            raise SystemExit("killed")
        log(self, model, epoch)

    monkeypatch.setattr(EpochImages, "log", dies_at_epoch_2)
    with pytest.raises(SystemExit):
        train.main()
    run_id = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name("fashion-mnist-vae").experiment_id])[0]
    assert set(pictures(run_id.info.run_id, tmp_path / "killed")["samples"]) == {1}

    monkeypatch.setattr(EpochImages, "log", log)
    train.main()
    assert paths.TRAIN_RUN_ID.read_text().strip() == run_id.info.run_id  # the same run, continued
    logged = pictures(run_id.info.run_id, tmp_path / "images")
    for key in KEYS:
        assert {step: len(p) for step, p in logged[key].items()} == {1: 1, 2: 1, 3: 1}, key


def test_log_images_every_sets_how_often_and_zero_turns_it_off(project: Path, tmp_path: Path) -> None:
    set_params(paths.PARAMS, **{"mlflow.log_images_every": 2, "latent_dim": 3})
    train.main()
    client = mlflow.MlflowClient()
    run_id = paths.TRAIN_RUN_ID.read_text().strip()
    logged = pictures(run_id, tmp_path / "a")
    assert set(logged["samples"]) == {2}
    assert set(logged) == {"samples", "reconstructions"}  # no grid for latent_dim 3

    set_params(paths.PARAMS, **{"mlflow.log_images_every": 0})
    train.main()
    run_id = paths.TRAIN_RUN_ID.read_text().strip()
    assert not client.list_artifacts(run_id, "images")
    assert "loss" in client.get_run(run_id).data.metrics  # the run itself is as before


def test_the_pictures_leave_the_training_numbers_unchanged(project: Path) -> None:
    """The codes come from a generator of their own: turning the pictures off changes no number."""
    import json

    train.main()
    with_pictures = json.loads(paths.TRAIN_METRICS.read_text())
    set_params(paths.PARAMS, **{"mlflow.log_images_every": 0})
    train.main()
    assert json.loads(paths.TRAIN_METRICS.read_text()) == with_pictures


@pytest.mark.slow
def test_mlflow_s_ui_shows_the_run_s_pictures_and_its_step_slider_changes_them(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real browser on `mlflow server`: the training run's page charts `samples`; stepping 1 → 3 changes it."""
    from playwright.sync_api import sync_playwright
    from project import MlflowServer
    from test_explorer import chromium_or_fail

    server = MlflowServer(tmp_path)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        train.main()
        run = mlflow.MlflowClient().get_run(paths.TRAIN_RUN_ID.read_text().strip())
        page_url = f"{server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_or_fail(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(page_url + "?workflowType=machine_learning")
            # only the pictures' card: the UI renders cards below the fold only once scrolled to
            page.get_by_placeholder("Search metric charts").fill("samples")
            card = page.locator(
                '[data-testid="experiment-view-compare-runs-card"]', has=page.locator('h4[title="samples"]')
            )
            slider = card.locator('[role="slider"]')
            slider.wait_for(timeout=60_000)
            assert slider.get_attribute("aria-valuemax") == "3"
            slider.focus()
            shown = {}
            for step in (1, 2, 3):
                slider.press("ArrowRight")  # the UI opens at step 0, which no run logs
                picture = card.locator("img")
                picture.wait_for(timeout=30_000)
                shows_step = f"img => img.src.includes('step%2B{step}%2B') && img.complete && img.naturalWidth > 0"
                page.wait_for_function(shows_step, arg=picture.element_handle(), timeout=30_000)
                assert card.locator('input[type="number"]').input_value() == str(step)
                shown[step] = picture.evaluate(
                    """img => { const c = document.createElement('canvas');
                                c.width = img.naturalWidth; c.height = img.naturalHeight;
                                const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                                return Array.from(g.getImageData(0, 0, c.width, c.height).data); }"""
                )
            browser.close()
    finally:
        server.stop()
    assert len(shown[1]) > 0 and shown[1] != shown[3]  # another step, another picture
