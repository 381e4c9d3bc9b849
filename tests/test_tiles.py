"""vae.tiles: torchvision's make_grid, pixel for pixel, in processes that never import torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torchvision.utils import make_grid

from vae.tiles import tile


@pytest.mark.parametrize(
    ("shape", "per_row", "padding", "pad_value"),
    [
        ((16, 1, 32, 32), 8, 2, 1.0),  # the reconstructions: two rows of eight
        ((10, 1, 5, 7), 4, 2, 1.0),  # a last row left part empty, images wider than tall
        ((9, 1, 28, 28), 3, 0, 0.0),  # the explorer's sprite: no gaps
        ((2, 1, 4, 4), 8, 3, 0.5),  # fewer images than a row holds
        ((6, 3, 4, 4), 2, 1, 0.2),  # colour
    ],
)
def test_tile_equals_make_grid(shape: tuple[int, ...], per_row: int, padding: int, pad_value: float) -> None:
    images = torch.rand(shape)
    expected = make_grid(images, nrow=per_row, padding=padding, pad_value=pad_value)
    tiled = tile(images, per_row, padding, pad_value)
    assert tiled.shape == (shape[1], *expected.shape[1:])
    assert torch.equal(tiled, expected[: shape[1]])


def test_stage_start_up_imports_nothing_it_does_not_use() -> None:
    """Importing torchvision imports torch._dynamo, seconds of every stage process's start (vae.tiles);
    matplotlib, 0.45 s of the train stage's, which draws no figure (vae.generator imports it to draw)."""
    modules = [
        "vae.pipeline.prepare",
        "vae.pipeline.train",
        "vae.pipeline.classifier",
        "vae.pipeline.evaluate",
        "vae.pipeline.generate",
        "vae.sweep.tune",
        "vae.sweep.trial",
        "vae.compare.page",
        "vae.explorer",
    ]
    loaded = "sorted(m for m in sys.modules if m.startswith(('torchvision', 'torch._dynamo')))"
    train_loaded = "sorted(m for m in sys.modules if m.startswith('matplotlib'))"
    code = f"import sys, vae.pipeline.train; print({train_loaded}); import {', '.join(modules)}; print({loaded})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["[]", "[]"]
