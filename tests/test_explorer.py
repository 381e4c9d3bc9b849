"""The latent explorer page: its sprite decodes like the model, and a real browser shows the model's images."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from project import MlflowServer

from vae.data import CLASS_NAMES, PAD
from vae.explorer import explorer_html, latent_plane, write_explorer
from vae.generator import decode_latents, latent_grid
from vae.model import VAE

# The sprite stores each pixel as uint8: at most half a step (0.5/255) from the model's float output.
SPRITE_TOLERANCE = 0.5 / 255 + 1e-6
CHROMIUM = "/usr/bin/chromium"


def page_data(page: str) -> dict:
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))


def sprite_pixels(data: dict) -> np.ndarray:
    png = base64.b64decode(data["sprite"].removeprefix("data:image/png;base64,"))
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64) / 255


def model_and_means(latent_dim: int, n: int = 200) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(latent_dim)
    model = VAE(latent_dim=latent_dim).eval()
    means = torch.randn(n, latent_dim) * torch.linspace(2.0, 0.5, latent_dim)  # distinct principal directions
    return model, means, torch.arange(n) % 10


@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_the_sprite_holds_the_models_decodes_of_the_shown_plane(latent_dim: int) -> None:
    model, means, labels = model_and_means(latent_dim)
    resolution, plane_range = 12, (-2.5, 2.0)
    page = explorer_html(model, means, labels, CLASS_NAMES, resolution, plane_range, border=PAD)
    data = page_data(page)
    pixels = sprite_pixels(data)
    assert pixels.shape == (resolution * 28, resolution * 28)
    plane = latent_plane(means)
    grid = latent_grid(resolution, plane_range)
    expected = decode_latents(model, plane.codes(grid))[:, 0, 2:-2, 2:-2].numpy()  # the 28 × 28 picture
    for i, j in [(0, 0), (0, resolution - 1), (resolution - 1, 0), (5, 7), (resolution - 1, resolution - 1)]:
        cell = pixels[i * 28 : (i + 1) * 28, j * 28 : (j + 1) * 28]
        np.testing.assert_allclose(cell, expected[i * resolution + j], atol=SPRITE_TOLERANCE)
    # the map's points are the means in the same plane coordinates
    xy = plane.coordinates(means)
    np.testing.assert_allclose(data["x"], xy[:, 0].numpy(), atol=1e-4)
    assert data["label"] == labels.tolist() and data["classes"] == list(CLASS_NAMES)
    assert ("principal directions" in data["note"]) == (latent_dim > 2)


def test_a_colour_models_sprite_is_rgb_and_whole() -> None:
    """CIFAR-10 or a colour folder: 3 channels, no padding to leave out, so each cell is the whole 32 × 32 decode."""
    torch.manual_seed(3)
    model = VAE(latent_dim=2, input_channels=3).eval()
    means, labels, resolution = torch.randn(20, 2), torch.arange(20) % 4, 6
    data = page_data(explorer_html(model, means, labels, ("a", "b", "c", "d"), resolution, (-2.0, 2.0)))
    pixels = sprite_pixels(data)
    assert pixels.shape == (resolution * 32, resolution * 32, 3) and data["tile"] == 32
    expected = decode_latents(model, latent_plane(means).codes(latent_grid(resolution, (-2.0, 2.0))))
    cell = pixels[32:64, 64:96]  # row 1, column 2
    np.testing.assert_allclose(cell, expected[1 * resolution + 2].permute(1, 2, 0).numpy(), atol=SPRITE_TOLERANCE)


def test_a_plane_of_more_than_two_dimensions_keeps_the_rest_at_the_mean() -> None:
    _, means, _ = model_and_means(5)
    plane = latent_plane(means)
    torch.testing.assert_close(plane.codes(torch.zeros(1, 2))[0], means.mean(0))
    torch.testing.assert_close(plane.axes @ plane.axes.T, torch.eye(2), atol=1e-5, rtol=0)
    spread = plane.coordinates(means).var(0)
    assert spread[0] >= spread[1] >= (means - means.mean(0)).var(0).min()  # PC1, then PC2


def test_the_page_needs_no_network(tmp_path: Path) -> None:
    model, means, labels = model_and_means(2, n=10_000)
    path = write_explorer(tmp_path / "explorer.html", model, means, labels, CLASS_NAMES, 64, (-3.0, 3.0))
    page = path.read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # no script, style or image from elsewhere
    assert "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 1  # the sprite, once
    assert path.stat().st_size < 5_000_000


def chromium_or_fail() -> str:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    return CHROMIUM


@pytest.mark.slow
def test_a_browser_shows_the_models_image_under_the_pointer(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    model, means, labels = model_and_means(3, n=2000)
    resolution, plane_range = 48, (-3.0, 3.0)
    path = write_explorer(
        tmp_path / "explorer.html", model, means, labels, CLASS_NAMES, resolution, plane_range, border=PAD
    )
    plane = latent_plane(means)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_or_fail(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(path.as_uri())
        page.wait_for_function("window.explorer && window.explorer.ready")
        box = page.locator("#map").bounding_box()
        shown = []
        for fx, fy in [(0.2, 0.3), (0.75, 0.8)]:
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            state = page.evaluate("({...window.explorer})")
            rgba = page.evaluate(
                "Array.from(document.getElementById('view').getContext('2d').getImageData(0, 0, 224, 224).data)"
            )
            image = np.array(rgba, dtype=np.float64).reshape(224, 224, 4)[4::8, 4::8, 0] / 255  # 8×8 per pixel
            expected_x = plane_range[0] + fx * (plane_range[1] - plane_range[0])
            assert state["x"] == pytest.approx(expected_x, abs=0.02)
            z = plane.codes(torch.tensor([[state["cellX"], state["cellY"]]], dtype=torch.float32))
            decoded = decode_latents(model, z)[0, 0, 2:-2, 2:-2].numpy()
            np.testing.assert_allclose(image, decoded, atol=SPRITE_TOLERANCE)
            offsets = plane.coordinates(means) - torch.tensor([state["x"], state["y"]])
            nearest = int((offsets**2).sum(1).argmin())
            assert state["nearest"] == nearest
            assert CLASS_NAMES[labels[nearest]] in page.locator("#readout").inner_text()
            shown.append(image)
        browser.close()
    assert np.abs(shown[0] - shown[1]).max() > 0.05  # another point, another garment


@pytest.mark.slow
def test_the_page_works_in_mlflows_artifact_view(tmp_path: Path) -> None:
    """Logged to a run, the page opens in `mlflow server`'s UI (a sandboxed frame) and follows the mouse."""
    from playwright.sync_api import sync_playwright

    model, means, labels = model_and_means(2, n=500)
    page_file = write_explorer(tmp_path / "vae_latent_explorer.html", model, means, labels, CLASS_NAMES, 16)
    server = MlflowServer(tmp_path)
    try:
        uri = server.uri
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment("explorer"))
        client.log_artifact(run.info.run_id, str(page_file), "generate")
        url = f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/generate/{page_file.name}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_or_fail(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            frame = page.wait_for_selector("iframe", timeout=60_000).content_frame()
            frame.wait_for_function("window.explorer && window.explorer.ready", timeout=30_000)
            box = frame.locator("#map").bounding_box()
            cells = []
            for fx in (0.2, 0.8):
                page.mouse.move(box["x"] + fx * box["width"], box["y"] + 0.5 * box["height"])
                cells.append(frame.evaluate("window.explorer.j"))
                assert "nearest test image:" in frame.locator("#readout").inner_text()
            browser.close()
        assert cells[0] < cells[1]  # the pointer moved right, so did the decoded grid point
    finally:
        server.stop()
