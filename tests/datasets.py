"""Tiny data sets in each native format, written by the tests (no download works here).

- :func:`write_cifar10`: torchvision's ``cifar-10-batches-py`` folder, each batch a protocol-2 pickle
  of the dict CIFAR-10's authors wrote (``data`` (N, 3072) uint8, ``labels``, ``batch_label``,
  ``filenames``), as Python pickles it;
- :func:`write_digits_folder`: scikit-learn's 1,797 real 8×8 handwritten digits as PNG class folders;
- :func:`write_mixed_folder`: PNG and JPEG files of mixed sizes and modes, in class folders.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 40, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches of ``per_batch`` random images, a test
    batch of ``n_test`` and ``batches.meta``; labels cycle through the 10 classes. Returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        batch = {
            "batch_label": f"{name} of 6",
            "labels": [int(label) for label in (np.arange(n) + index) % 10],
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "filenames": [f"image_{index}_{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": classes, "num_cases_per_batch": 10000, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_digits_folder(folder: Path, limit: int | None = None) -> Path:
    """scikit-learn's 8×8 handwritten digits (16 gray levels) as 8-bit gray PNGs in ``folder/<digit>/``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images[:limit], digits.target[:limit]
    for index, (image, label) in enumerate(zip(images, labels)):
        target = folder / str(int(label))
        target.mkdir(parents=True, exist_ok=True)
        pixels = (image * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(target / f"{index:04d}.png")
    return folder


def write_mixed_folder(folder: Path, per_class: int = 8, seed: int = 0) -> Path:
    """Class folders ``cat/`` and ``dog/`` of PNG and JPEG files of mixed sizes and modes (RGB, L, RGBA, P)."""
    rng = np.random.default_rng(seed)
    sizes, modes = [(48, 40), (32, 32), (20, 64), (100, 75)], ["RGB", "L", "RGBA", "P"]
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            width, height = sizes[i % len(sizes)]
            image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")
            mode = modes[i % len(modes)]
            image = image.convert(mode) if mode != "P" else image.quantize(16)
            suffix = ".jpg" if mode in ("RGB", "L") and i % 2 == 0 else ".png"
            image.save(folder / name / f"{i}{suffix}")
    return folder
