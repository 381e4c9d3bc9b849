"""The one contract every source meets: an :class:`ImageSplit` of 32×32 images, and how splits are carved.

A source (:mod:`vae.data.idx`, :mod:`vae.data.cifar`, :mod:`vae.data.folder`) reads its native
files into uint8 images (N, C, 32, 32), C = 1 (gray) or 3 (RGB), with int64 labels (N,) indexing
``class_names``. Everything after the prepare stage reads that and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import TensorDataset

from vae.errors import UserError

IMAGE_SIZE = 32  # the encoder's input size, for every source
FASHION_MNIST = "fashion-mnist"  # the default data set
# Fashion-MNIST's, the default data set's classes (a prepared file without class names holds these)
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
# ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B) in Pillow's fixed point (convert("L"): weights in 1/65536)
LUMA = (19595, 38470, 7471)


class DataError(UserError, ValueError):
    """Data files that are missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class ImageSplit:
    """One split of a data set.

    ``images``: (N, C, 32, 32), uint8 in [0, 255] (or float32 in [0, 1]); C = 1 (gray) or 3 (RGB).
    ``labels``: (N,) int64 indices into ``class_names``. ``dataset`` names the source
    (``fashion-mnist``, ``mnist``, ``kmnist``, ``cifar10``, ``folder``); ``source`` is where its files
    were read (a folder, "" when unknown) and ``source_digest`` an MD5 of those files' bytes where the
    source can change (a folder of your own; "" for the published data sets).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...] = CLASS_NAMES
    dataset: str = FASHION_MNIST
    source: str = ""
    source_digest: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        """C: 1 for gray images, 3 for RGB."""
        return int(self.images.shape[1])

    @property
    def pixels(self) -> int:
        """C·32·32, the values of one image: what the loss's per-pixel BCE is averaged over."""
        return int(np.prod(self.images.shape[1:]))

    def tensor_dataset(self) -> TensorDataset:
        """A ``TensorDataset`` of ``(image, label)`` pairs, ready for a ``DataLoader``."""
        return TensorDataset(self.images, self.labels)

    def with_images(self, images: torch.Tensor) -> ImageSplit:
        """The same split with ``images`` instead (converted, scaled), the labels and description kept."""
        return replace(self, images=images)

    def subset(self, index: torch.Tensor | slice) -> ImageSplit:
        """The images (and labels) at ``index``; the rest of the description stays."""
        return replace(self, images=self.images[index], labels=self.labels[index])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] → float32 in [0, 1], as ``transforms.ToTensor`` scales."""
    return images.float().div_(255.0)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) with ``channels`` channels: gray repeated into RGB, or RGB to gray by
    ITU-R 601-2 luma, pixel for pixel what Pillow's ``convert("L")`` gives."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=torch.int32).view(1, 3, 1, 1)
        return (((images.int() * weights).sum(1, keepdim=True) + (1 << 15)) >> 16).to(torch.uint8)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def stratified_split(
    labels: torch.Tensor, size: int, seed: int, what: str, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(the rest, the carved part)`` of a stratified, seeded split taking ``size`` of ``labels``:
    each class keeps its share (to the image), the same ``seed`` picks the same images on every machine,
    and both parts keep the original order.

    Raises:
        DataError: ``size`` leaves no image of some class on one side; ``what`` names the setting, ``kind``
            the images carved ("validation", "test").
    """
    from sklearn.model_selection import train_test_split  # MLflow's dependency: imported only when splitting

    n_classes = len(torch.unique(labels))
    if not n_classes <= size <= len(labels) - n_classes:
        raise DataError(
            f"{what} = {size}: a stratified split of {len(labels)} images in {n_classes} classes "
            f"needs between {n_classes} and {len(labels) - n_classes} {kind} images"
        )
    rest, carved = train_test_split(np.arange(len(labels)), test_size=size, stratify=labels.numpy(), random_state=seed)
    return torch.from_numpy(np.sort(rest)), torch.from_numpy(np.sort(carved))


def split_validation(split: ImageSplit, size: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Carve ``size`` images out of ``split`` for validation: ``(the rest, validation)``.

    Stratified by class and seeded (:func:`stratified_split`); no image is in both.

    Raises:
        DataError: ``size`` leaves no image of some class on one side.
    """
    try:
        rest, val = stratified_split(split.labels, size, seed, "data.val_size", "validation")
    except DataError as err:
        raise DataError(f"{err} (0: no validation split)") from None
    return split.subset(rest), split.subset(val)
