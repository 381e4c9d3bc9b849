"""Images tiled into one picture: what ``torchvision.utils.make_grid`` does, without importing torchvision.

Importing torchvision imports ``torch._dynamo``: 1.4–1.9 s of every process that draws
pictures (the train, evaluate and generate stages, each sweep trial's worker), for a few
lines of indexing. ``benchmarks/stage_startup.py`` measures it (the train stage's imports:
6.6 s with torchvision, 5.2 s without, on a 2-core machine); ``tests/test_tiles.py`` checks
the pictures equal make_grid's, pixel for pixel, and that no stage imports torchvision.
"""

from __future__ import annotations

import math

import torch


def tile(images: torch.Tensor, per_row: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Images (N, C, H, W) laid out ``per_row`` to a row, left to right then top to bottom, with
    ``padding`` pixels of ``pad_value`` around and between them: (C, H', W'), where
    H' = rows·(H + padding) + padding. Channel for channel what ``make_grid(images, nrow=per_row,
    padding=padding, pad_value=pad_value)`` gives (which turns one channel into three and leaves a
    single image bare)."""
    count, channels, height, width = images.shape
    per_row = min(per_row, count)
    rows = math.ceil(count / per_row)
    step_y, step_x = height + padding, width + padding
    grid = images.new_full((channels, rows * step_y + padding, per_row * step_x + padding), pad_value)
    for index, image in enumerate(images):
        row, column = divmod(index, per_row)
        top, left = row * step_y + padding, column * step_x + padding
        grid[:, top : top + height, left : left + width] = image
    return grid
