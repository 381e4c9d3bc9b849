"""Mini-batches made by indexing tensors that already hold the whole data set.

The usual ``Dataset`` + ``DataLoader`` turns every image into a tensor one at a
time in Python; here the data set is one uint8 tensor (N, C, 32, 32), moved to
the training device once, and a batch is one indexing operation. The trainer
converts uint8 batches to float on the device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class TensorBatches:
    """Iterate over ``images`` in batches of ``batch_size``, reshuffled every pass.

    Each pass draws a fresh permutation from a generator seeded with ``seed``,
    so the order is reproducible and every image appears exactly once per pass.
    ``images`` (and ``labels``, if given) are moved to ``device`` up front;
    batches are ``images`` alone or ``(images, labels)`` pairs.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        labels: torch.Tensor | None = None,
        shuffle: bool = True,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.images = images.to(device) if device is not None else images
        self.labels = labels.to(self.images.device) if labels is not None else None
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def order(self) -> torch.Tensor:
        """The next pass's image order (N,): a permutation when shuffling, else 0..N-1."""
        if self.shuffle:
            return torch.randperm(len(self.images), generator=self.generator)
        return torch.arange(len(self.images))

    def __iter__(self) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        order = self.order().to(self.images.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            if self.labels is None:
                yield self.images[index]
            else:
                yield self.images[index], self.labels[index]
