"""Fashion-MNIST, MNIST and KMNIST: 28×28 gray images in IDX files, padded to 32×32.

The three share one format: four IDX files, gzip'd (``*.gz``) or not, either directly in a
folder or in torchvision's ``<Name>/raw`` layout below it (``FashionMNIST/raw``, ``MNIST/raw``,
``KMNIST/raw``), so a folder that torchvision downloaded into (its ``root``) works as it is.

Where the files come from, in order:

1. for Fashion-MNIST alone, the ``FASHION_MNIST_DIR`` environment variable, when set. A relative
   value is relative to the project root (:func:`vae.config.project_root`: the folder DVC runs the
   pipeline from, else the working directory), so the README's
   ``export FASHION_MNIST_DIR=../shared/data/fashion-mnist``, set in the project root, names the
   same folder in queued experiments, which DVC runs in a temporary copy of the repository;
2. the folder given (``data.dir`` in params.yaml, relative to the project root);
3. downloaded there through torchvision when the files are missing (Fashion-MNIST: about 30 MB).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vae.config import project_root
from vae.data.splits import CLASS_NAMES, FASHION_MNIST, DataError, ImageSplit, to_float

ENV_VAR = "FASHION_MNIST_DIR"
DEFAULT_DIR = Path("data") / "raw"  # data.dir's default: the folder torchvision downloads into
PAD = 2  # 28 + 2·2 = 32, the encoder's input size
RAW_SIZE = 28
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_IMAGES_MAGIC = 0x0803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x0801  # unsigned bytes, 1 dimension


@dataclass(frozen=True)
class IdxDataset:
    """One of the IDX data sets: its name in params.yaml, torchvision's class (and ``<Name>/raw`` folder)."""

    name: str
    title: str  # as its authors write it, in messages
    torchvision_name: str
    class_names: tuple[str, ...]
    env_var: str | None = None  # an environment variable naming its folder, which then wins over data.dir


FASHION_MNIST_IDX = IdxDataset(FASHION_MNIST, "Fashion-MNIST", "FashionMNIST", CLASS_NAMES, ENV_VAR)
IDX_DATASETS = {
    spec.name: spec
    for spec in (
        FASHION_MNIST_IDX,
        IdxDataset("mnist", "MNIST", "MNIST", tuple(f"{d} - {w}" for d, w in enumerate(DIGITS))),
        # Kuzushiji-MNIST: one cursive hiragana per class, named as torchvision's KMNIST.classes
        IdxDataset("kmnist", "KMNIST", "KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    )
}


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


def _find_file(directory: Path, name: str, spec: IdxDataset = FASHION_MNIST_IDX) -> Path | None:
    for folder in (directory, directory / spec.torchvision_name / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _missing(directory: Path, spec: IdxDataset = FASHION_MNIST_IDX) -> list[str]:
    return [name for names in SPLIT_FILES.values() for name in names if _find_file(directory, name, spec) is None]


def _missing_data_error(
    directory: Path, missing: list[str], why: str, spec: IdxDataset = FASHION_MNIST_IDX, from_env: bool = False
) -> DataError:
    remedy = (
        f"Point {spec.env_var} at a folder holding the four IDX files, or unset it to use data.dir"
        if from_env
        else "Point data.dir at a folder holding the four IDX files, or go online so torchvision can download "
        "them there"
    )
    return DataError(
        f"{spec.title} not found in {directory.resolve()} ({why}): missing {', '.join(missing)} "
        f"(plain or .gz, there or in {spec.torchvision_name}/raw). {remedy}."
    )


def _download(directory: Path, spec: IdxDataset = FASHION_MNIST_IDX) -> None:
    import torchvision.datasets

    dataset = getattr(torchvision.datasets, spec.torchvision_name)
    for train in (True, False):
        dataset(root=str(directory), train=train, download=True)


def given_folder(given: Path | str, why: str) -> tuple[Path, str]:
    """A folder the user named (``data.dir``, an environment variable), and ``why`` it is looked in, saying
    so when a relative one is read against the project root."""
    folder = Path(given).expanduser()
    if folder.is_absolute():
        return folder, why
    return project_root() / folder, f"{why}={given}, relative to the project root {project_root()}"


def locate(spec: IdxDataset, directory: Path | str | None, download: bool = True) -> Path:
    """The folder holding ``spec``'s four files: its environment variable when set, else ``directory``
    (relative to the project root; default ``data/raw``), where torchvision downloads them when missing.

    Raises:
        DataError: the files are not there and cannot be downloaded; says what was looked for, where,
            and how to supply it.
    """
    if spec.env_var and os.environ.get(spec.env_var):
        folder, why = given_folder(os.environ[spec.env_var], f"from {spec.env_var}")
        if missing := _missing(folder, spec):
            raise _missing_data_error(folder, missing, why, spec, from_env=True)
        return folder
    folder, why = given_folder(directory if directory is not None else DEFAULT_DIR, "data.dir")
    missing = _missing(folder, spec)
    if missing and download:
        print(f"data: {spec.title} not in {folder}: downloading it with torchvision", flush=True)
        try:
            _download(folder, spec)
        except Exception as err:  # torchvision raises RuntimeError/URLError/OSError when offline
            raise _missing_data_error(folder, missing, f"{why}; download failed: {err}", spec) from None
        missing = _missing(folder, spec)
    if missing:
        raise _missing_data_error(folder, missing, why, spec)
    return folder


def resolve_data_dir(directory: Path | str | None = None, download: bool = True) -> Path:
    """The folder holding the four Fashion-MNIST files: ``directory`` when given, else as :func:`locate`.

    Raises:
        DataError: the files are not there and cannot be downloaded.
    """
    if directory is None:
        return locate(FASHION_MNIST_IDX, None, download)
    folder = Path(directory)
    if missing := _missing(folder):
        raise _missing_data_error(folder, missing, "the folder given")
    return folder


def pad_images(images: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) → (N, 1, 32, 32), zero padding of 2 pixels on every side (``transforms.Pad(2)``)."""
    return F.pad(images.unsqueeze(1), (PAD, PAD, PAD, PAD))


def read_split(
    directory: Path | str, split: str = "train", limit: int | None = None, spec: IdxDataset = FASHION_MNIST_IDX
) -> ImageSplit:
    """Read one split of ``spec`` (default Fashion-MNIST) from ``directory`` as uint8 images (N, 1, 32, 32)
    and int64 labels (N,)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    directory = Path(directory)
    image_name, label_name = SPLIT_FILES[split]
    image_path, label_path = _find_file(directory, image_name, spec), _find_file(directory, label_name, spec)
    if image_path is None or label_path is None:
        raise _missing_data_error(directory, _missing(directory, spec), "the folder given", spec)
    images = read_idx(image_path, _IMAGES_MAGIC, limit)
    labels = read_idx(label_path, _LABELS_MAGIC, limit)
    if images.dim() != 3 or tuple(images.shape[1:]) != (RAW_SIZE, RAW_SIZE):
        raise DataError(f"{image_path}: images must be {RAW_SIZE}×{RAW_SIZE}, found shape {tuple(images.shape)}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise DataError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path.name}")
    if len(labels) and int(labels.max()) >= len(spec.class_names):
        raise DataError(f"{label_path}: label {int(labels.max())} outside 0..{len(spec.class_names) - 1}")
    return ImageSplit(pad_images(images), labels.long(), spec.class_names, spec.name, str(directory.resolve()))


def load_fashion_mnist(
    split: str = "train",
    directory: Path | str | None = None,
    limit: int | None = None,
    download: bool = True,
) -> ImageSplit:
    """Fashion-MNIST ``split`` ("train" or "test") as float images (N, 1, 32, 32) in [0, 1].

    ``limit`` keeps the first ``limit`` images (quick runs and tests).
    See the module docstring for where the files are looked for.
    """
    raw = read_split(resolve_data_dir(directory, download), split, limit)
    return ImageSplit(to_float(raw.images), raw.labels)
