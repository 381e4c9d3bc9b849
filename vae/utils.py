"""Device selection and seeding."""

from __future__ import annotations

import random

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
