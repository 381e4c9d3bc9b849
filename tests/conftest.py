"""Shared fixtures: tiny IDX files written by the tests, and the real data when FASHION_MNIST_DIR is set."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vae.data import ENV_VAR, SPLIT_FILES


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x08 = unsigned byte, then the dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 32, gz: bool = True, seed: int = 0) -> Path:
    """Write the four Fashion-MNIST files with random content: images (N, 28, 28), labels 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = SPLIT_FILES[split]
        payloads = {
            images_name: idx_bytes(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)),
            labels_name: idx_bytes(np.arange(n, dtype=np.uint8) % 10),
        }
        for name, payload in payloads.items():
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(payload)
            else:
                (folder / name).write_bytes(payload)
    return folder


@pytest.fixture
def tiny_idx_dir(tmp_path: Path) -> Path:
    return write_fashion_mnist(tmp_path / "fmnist")


@pytest.fixture
def real_data_dir() -> Path:
    """The real Fashion-MNIST folder from FASHION_MNIST_DIR; skips the test when it is not set."""
    value = os.environ.get(ENV_VAR)
    if not value:
        pytest.skip(f"{ENV_VAR} is not set")
    return Path(value)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
