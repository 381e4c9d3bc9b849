"""Image data sets as 32×32 uint8 tensors: Fashion-MNIST (the default), MNIST, KMNIST, CIFAR-10, or your own folder.

One small module per source, one contract (:mod:`vae.data.splits`): each reads its native
files into :class:`ImageSplit`\\ s of uint8 images (N, C, 32, 32), C = 1 or 3, and int64 labels.

- :mod:`vae.data.idx`: ``fashion-mnist``, ``mnist``, ``kmnist`` (IDX files, 28×28 padded to 32×32);
- :mod:`vae.data.cifar`: ``cifar10`` (torchvision's ``cifar-10-batches-py`` pickles, 3×32×32);
- :mod:`vae.data.folder`: ``folder``, images in ``ImageFolder``'s ``DIR/CLASS/*.png`` layout.

:func:`read_dataset` is the one entry point the prepare stage uses; docs/data.md says the layouts.
"""

from __future__ import annotations

from pathlib import Path

from vae.config import DATASETS  # data.dataset's choices: the readers below, in the order docs list them
from vae.data import cifar, folder
from vae.data.idx import (
    DEFAULT_DIR,
    ENV_VAR,
    IDX_DATASETS,
    PAD,
    SPLIT_FILES,
    given_folder,
    load_fashion_mnist,
    locate,
    pad_images,
    read_idx,
    read_split,
    resolve_data_dir,
)
from vae.data.splits import (
    CLASS_NAMES,
    FASHION_MNIST,
    IMAGE_SIZE,
    DataError,
    ImageSplit,
    split_validation,
    stratified_split,
    to_channels,
    to_float,
)

assert DATASETS == (*IDX_DATASETS, cifar.NAME, folder.NAME), "a data set of params.yaml without its reader"

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "DEFAULT_DIR",
    "ENV_VAR",
    "FASHION_MNIST",
    "IMAGE_SIZE",
    "PAD",
    "SPLIT_FILES",
    "DataError",
    "ImageSplit",
    "border",
    "load_fashion_mnist",
    "pad_images",
    "read_dataset",
    "read_idx",
    "read_split",
    "resolve_data_dir",
    "split_validation",
    "stratified_split",
    "to_channels",
    "to_float",
]


def border(dataset: str) -> int:
    """Pixels of padding around each image of ``dataset``: 2 for the 28×28 IDX sets, else 0."""
    return PAD if dataset in IDX_DATASETS else 0


def read_dataset(
    dataset: str,
    directory: Path | str | None = None,
    channels: str | int = "auto",
    test_size: int | None = None,
    download: bool = True,
) -> tuple[ImageSplit, ImageSplit, list[Path]]:
    """The training and test splits of ``dataset`` (one of :data:`DATASETS`) read from ``directory``
    (``data.dir``; relative to the project root), with ``channels`` channels (``auto``: the data's
    own; 1 or 3: converted), and the files a folder skipped for their extension.

    ``test_size`` carves a folder's test split when it has no ``train/`` and ``test/`` (None: one in
    seven). Built-in data sets missing from ``directory`` are downloaded there when ``download``.

    Raises:
        DataError: an unknown name (the choices listed), missing or unreadable files (named).
    """
    if dataset not in DATASETS:
        raise DataError(f"data.dataset = {dataset!r} is not a data set here: choose one of {', '.join(DATASETS)}")
    given = directory if directory is not None else DEFAULT_DIR
    root, _ = given_folder(given, "data.dir")
    skipped: list[Path] = []
    if dataset in IDX_DATASETS:
        source = locate(IDX_DATASETS[dataset], given, download)
        train, test = (read_split(source, split, spec=IDX_DATASETS[dataset]) for split in ("train", "test"))
    elif dataset == cifar.NAME:
        train, test = cifar.read(root, download)
    else:
        train, test, skipped = folder.read(root, test_size)
    if channels != "auto":  # one conversion for every source: gray repeated into RGB, or RGB to luma
        train, test = (split.with_images(to_channels(split.images, int(channels))) for split in (train, test))
    return train, test, skipped
