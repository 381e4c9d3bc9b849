"""Device selection, seeding, batches as float images, and switching a model to eval mode for a while."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def get_device() -> torch.device:
    """CUDA when a GPU is usable, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and every GPU) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device holding the model's parameters."""
    return next(model.parameters()).device


def batch_images(batch: torch.Tensor | tuple | list, device: torch.device) -> torch.Tensor:
    """The images of a batch as floats in [0, 1] on ``device``: (B, C, H, W)."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode for the block, then back in the mode it was in (training or not)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def standard_normal(
    shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """N(0, I) noise of ``shape`` on ``device``: from PyTorch's global generator there, or from a
    CPU ``generator`` (then moved), which makes the draw depend on its seed alone, on any device."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator).to(device)
