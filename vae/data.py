"""Fashion-MNIST as tensors padded from 28×28 to 32×32.

Where the files come from, in order:

1. the ``directory`` argument;
2. the ``FASHION_MNIST_DIR`` environment variable. A relative value is relative
   to the project root (:func:`vae.config.project_root`: the folder DVC runs the
   pipeline from, else the working directory), so the README's
   ``export FASHION_MNIST_DIR=../shared/data/fashion-mnist``, set in the
   project root, names the same folder in queued experiments, which DVC runs
   in a temporary copy of the repository;
3. the default folder ``data/fashion-mnist`` in the project root, downloaded
   there through torchvision (about 30 MB from its mirrors) when the files are
   missing.

A folder holds the four standard IDX files, gzip'd (``*.gz``) or not, either
directly or in torchvision's ``FashionMNIST/raw`` layout.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from vae.config import project_root
from vae.errors import UserError

ENV_VAR = "FASHION_MNIST_DIR"
DEFAULT_DIR = Path("data") / "fashion-mnist"
PAD = 2  # 28 + 2·2 = 32, the encoder's input size
RAW_SIZE = 28
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC = 0x0803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x0801  # unsigned bytes, 1 dimension


class DataError(UserError, ValueError):
    """Data files that are missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class FashionMNISTSplit:
    """One split. ``images``: (N, 1, 32, 32) float32 in [0, 1] (or uint8 in [0, 255]); ``labels``: (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        return len(self.labels)

    def dataset(self) -> TensorDataset:
        """A ``TensorDataset`` of ``(image, label)`` pairs, ready for a ``DataLoader``."""
        return TensorDataset(self.images, self.labels)


def read_idx(path: Path | str, magic: int, limit: int | None = None) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (gzip'd when its name ends in ``.gz``).

    Checks the magic number and that the body holds exactly what the header
    promises. ``limit`` keeps the first ``limit`` records. Returns a uint8
    tensor of the header's shape, e.g. (N, 28, 28) for images.

    Raises:
        DataError: unreadable, wrong magic number or truncated; names the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = raw[:4].hex() if len(raw) >= 4 else "nothing"
        raise DataError(
            f"{path}: not an IDX file of the expected kind (magic number 0x{magic:08x} expected, found 0x{found})"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX body has {len(raw) - header} bytes, header shape {shape} needs {expected - header}"
            + (" (file truncated)" if len(raw) < expected else "")
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    if limit is not None:
        array = array[:limit]
    return torch.from_numpy(array.copy())


def _find_file(directory: Path, name: str) -> Path | None:
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _missing(directory: Path) -> list[str]:
    return [name for names in SPLIT_FILES.values() for name in names if _find_file(directory, name) is None]


def _missing_data_error(directory: Path, missing: list[str], why: str) -> DataError:
    return DataError(
        f"Fashion-MNIST not found in {directory.resolve()} ({why}): missing {', '.join(missing)} "
        f"(plain or .gz). Point {ENV_VAR} at a folder holding the four IDX files, pass the folder "
        f"explicitly, or go online so torchvision can download them into {DEFAULT_DIR}."
    )


def _download(directory: Path) -> None:
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(root=str(directory), train=train, download=True)


def resolve_data_dir(directory: Path | str | None = None, download: bool = True) -> Path:
    """The folder holding the four Fashion-MNIST files, by the rules in the module docstring.

    Raises:
        DataError: the files are not there and cannot be downloaded; says what
            was looked for, where, and how to supply it.
    """
    given = directory if directory is not None else os.environ.get(ENV_VAR)
    if given:
        folder = Path(given).expanduser()
        if directory is not None:
            why = "the folder given"
        elif folder.is_absolute():
            why = f"from {ENV_VAR}"
        else:
            folder = project_root() / folder
            why = f"from {ENV_VAR}={given}, relative to the project root {project_root()}"
        missing = _missing(folder)
        if missing:
            raise _missing_data_error(folder, missing, why)
        return folder
    folder = project_root() / DEFAULT_DIR  # one download per project, also for queued experiments
    missing = _missing(folder)
    if missing and download:
        print(f"data: Fashion-MNIST not in {folder}: downloading it with torchvision", flush=True)
        try:
            _download(folder)
        except Exception as err:  # torchvision raises RuntimeError/URLError/OSError when offline
            raise _missing_data_error(folder, missing, f"download failed: {err}") from None
        missing = _missing(folder)
    if missing:
        raise _missing_data_error(folder, missing, "the default folder")
    return folder


def pad_images(images: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) → (N, 1, 32, 32), zero padding of 2 pixels on every side (``transforms.Pad(2)``)."""
    return F.pad(images.unsqueeze(1), (PAD, PAD, PAD, PAD))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] → float32 in [0, 1], as ``transforms.ToTensor`` scales."""
    return images.float().div_(255.0)


def read_split(directory: Path | str, split: str = "train", limit: int | None = None) -> FashionMNISTSplit:
    """Read one split from ``directory`` as uint8 images (N, 1, 32, 32) and int64 labels (N,)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    directory = Path(directory)
    image_name, label_name = SPLIT_FILES[split]
    image_path, label_path = _find_file(directory, image_name), _find_file(directory, label_name)
    if image_path is None or label_path is None:
        raise _missing_data_error(directory, _missing(directory), "the folder given")
    images = read_idx(image_path, _IMAGES_MAGIC, limit)
    labels = read_idx(label_path, _LABELS_MAGIC, limit)
    if images.dim() != 3 or tuple(images.shape[1:]) != (RAW_SIZE, RAW_SIZE):
        raise DataError(f"{image_path}: images must be {RAW_SIZE}×{RAW_SIZE}, found shape {tuple(images.shape)}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise DataError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path.name}")
    if int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(f"{label_path}: label {int(labels.max())} outside 0..{len(CLASS_NAMES) - 1}")
    return FashionMNISTSplit(pad_images(images), labels.long())


def split_validation(split: FashionMNISTSplit, size: int, seed: int) -> tuple[FashionMNISTSplit, FashionMNISTSplit]:
    """Carve ``size`` images out of ``split`` for validation: ``(the rest, validation)``.

    Stratified by class (each class keeps its share, to the image) and seeded, so
    the same ``seed`` picks the same images on every machine; both parts keep the
    images' original order, and no image is in both.

    Raises:
        DataError: ``size`` leaves no image of some class on one side.
    """
    from sklearn.model_selection import train_test_split  # MLflow's dependency: imported only when splitting

    n_classes = len(torch.unique(split.labels))
    if not n_classes <= size <= len(split) - n_classes:
        raise DataError(
            f"data.val_size = {size}: a stratified split of {len(split)} images in {n_classes} classes "
            f"needs between {n_classes} and {len(split) - n_classes} validation images (0: no validation split)"
        )
    rest, val = train_test_split(
        np.arange(len(split)), test_size=size, stratify=split.labels.numpy(), random_state=seed
    )
    rest, val = torch.from_numpy(np.sort(rest)), torch.from_numpy(np.sort(val))
    return (
        FashionMNISTSplit(split.images[rest], split.labels[rest], split.class_names),
        FashionMNISTSplit(split.images[val], split.labels[val], split.class_names),
    )


def load_fashion_mnist(
    split: str = "train",
    directory: Path | str | None = None,
    limit: int | None = None,
    download: bool = True,
) -> FashionMNISTSplit:
    """Fashion-MNIST ``split`` ("train" or "test") as float images (N, 1, 32, 32) in [0, 1].

    ``limit`` keeps the first ``limit`` images (quick runs and tests).
    See the module docstring for where the files are looked for.
    """
    raw = read_split(resolve_data_dir(directory, download), split, limit)
    return FashionMNISTSplit(to_float(raw.images), raw.labels)
