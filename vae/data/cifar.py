"""CIFAR-10: 32×32 RGB images in torchvision's ``cifar-10-batches-py`` folder of pickled batches.

The folder (``data.dir``, or its parent, as torchvision's ``root``) holds ``data_batch_1`` …
``data_batch_5`` (50,000 training images), ``test_batch`` (10,000) and ``batches.meta`` (the
class names), each a Python pickle of a dict as the data set's authors wrote it: ``data``, a
(N, 3072) uint8 array of the red, green then blue planes row by row, and ``labels``. Nothing is
padded: the images are 32×32 already. Missing, torchvision downloads them (170 MB) into ``data.dir``.

The batches are unpickled with an unpickler that builds dicts, lists, strings and NumPy arrays
and nothing else, so a file that is not a CIFAR batch cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from vae.data.splits import DataError, ImageSplit

NAME = "cifar10"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# what a pickled NumPy array needs to be rebuilt (NumPy 1 and 2 name its module differently)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a CIFAR batch holds no {module}.{name}")


def _load(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            # latin1: the batches are Python 2 pickles, whose byte strings Python 3 reads as text
            blob = _ArraysOnly(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: CIFAR-10 batch {path.name} is missing") from None
    except Exception as err:  # pickle raises many types on a file that is not one
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(err).__name__}: {err})") from None
    if not isinstance(blob, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (a {type(blob).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in blob.items()}


def locate(directory: Path, download: bool = True) -> Path:
    """The ``cifar-10-batches-py`` folder: ``directory`` itself or the one inside it; downloaded there
    through torchvision when neither holds a batch.

    Raises:
        DataError: no such folder and no download; names where it was looked for.
    """
    for folder in (directory, directory / FOLDER):
        if (folder / TEST_BATCHES[0]).exists() or (folder / TRAIN_BATCHES[0]).exists():
            return folder
    if download:
        from torchvision.datasets import CIFAR10

        print(f"data: CIFAR-10 not in {directory}: downloading it with torchvision", flush=True)
        try:
            CIFAR10(root=str(directory), download=True)
        except Exception as err:  # offline: URLError, RuntimeError, OSError
            raise DataError(
                f"CIFAR-10 not found in {directory} (no {FOLDER} folder of batches) and the download failed: {err}"
            ) from None
        return directory / FOLDER
    raise DataError(f"CIFAR-10 not found in {directory}: no {FOLDER} folder of batches (data_batch_1 …, test_batch)")


def read_batches(folder: Path, names: tuple[str, ...], class_names: tuple[str, ...]) -> ImageSplit:
    """The images (N, 3, 32, 32) uint8 and labels (N,) of the batches ``names`` in ``folder``, in order.

    Raises:
        DataError: a batch missing (named), unreadable or malformed; names the file.
    """
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = _load(path)
        data, batch_labels = batch.get("data"), batch.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", None)
            raise DataError(f"{path}: 'data' must be a (N, 3072) uint8 array, found {type(data).__name__} {shape}")
        if batch_labels is None or len(batch_labels) != len(data):
            raise DataError(f"{path}: {0 if batch_labels is None else len(batch_labels)} labels for {len(data)} images")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(np.asarray(batch_labels, dtype=np.int64)))
        if len(labels[-1]) and not 0 <= int(labels[-1].min()) <= int(labels[-1].max()) < len(class_names):
            raise DataError(f"{path}: labels must be 0..{len(class_names) - 1}")
    return ImageSplit(torch.cat(images), torch.cat(labels), class_names, NAME, str(folder.resolve()))


def read(directory: Path, download: bool = True) -> tuple[ImageSplit, ImageSplit]:
    """CIFAR-10's training (50,000) and test (10,000) images from ``directory``, as :func:`read_batches`."""
    folder = locate(directory, download)
    meta = folder / "batches.meta"
    class_names = tuple(_load(meta).get("label_names", CLASS_NAMES)) if meta.exists() else CLASS_NAMES
    return read_batches(folder, TRAIN_BATCHES, class_names), read_batches(folder, TEST_BATCHES, class_names)
