"""A small image classifier whose features measure sample quality.

It is trained once (the pipeline's ``classifier`` stage) and then only used to
embed images: :func:`features` gives its 128-D penultimate activations, and the
Fréchet distance between the features of generated samples and of test images
is our sample-quality metric. It plays the role Inception plays in FID, but it
is a different network on different images: the numbers are comparable between
our runs only, never with published FID scores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vae.batches import TensorBatches
from vae.errors import UserError
from vae.storage import CheckpointError, _torch_load, atomic_torch_save
from vae.utils import batch_images, evaluating, model_device

FEATURES = 128
# classifier.min_accuracy: auto, by data set: only floors measured here (docs/data.md says on what). The
# 5-epoch classifier reached 0.9146-0.9155 test accuracy on Fashion-MNIST's 55,000 training images
# (two CPUs, fp32); 0.88 leaves room for other CPUs' rounding. No floor is known for the others.
MEASURED_FLOORS = {"fashion-mnist": 0.88}


def accuracy_floor(min_accuracy: float | str, dataset: str) -> float | None:
    """The test accuracy the classifier stage must reach: ``min_accuracy`` when a number; for ``auto``,
    the floor measured for ``dataset`` (:data:`MEASURED_FLOORS`), else None (no floor)."""
    return MEASURED_FLOORS.get(dataset) if min_accuracy == "auto" else float(min_accuracy)


class ClassifierTooWeakError(UserError, RuntimeError):
    """The classifier missed its accuracy floor; its features would not measure sample quality."""


class ImageClassifier(nn.Module):
    """(B, C, 32, 32) images in [0, 1] → (B, num_classes) class logits; ``features`` gives (B, 128)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        # stride-2 convolutions rather than pooling: a quarter of the work, accuracy enough for features;
        # batch norm lifts 5 epochs from ~0.90 to ~0.91 test accuracy at the same cost
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),  # 16×16
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),  # 8×8
            nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),  # 4×4
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, FEATURES),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(FEATURES, num_classes)

    @property
    def config(self) -> dict[str, int]:
        """The constructor arguments: ``ImageClassifier(**classifier.config)`` rebuilds it."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(
    model: ImageClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    memory_format: torch.memory_format = torch.channels_last,
    precision: str = "fp32",
) -> list[float]:
    """Train with Adam and cross-entropy; returns the mean training loss of each epoch.

    ``memory_format``: the weights' layout while training. Channels-last trains 1.16-1.43x the images/s
    of PyTorch's default (``torch.contiguous_format``) on a 2-core AVX-512 CPU, in float32 alike.
    ``precision`` "bf16": the forward pass under bf16 autocast (float32 weights and optimiser), 0.95-1.3x
    the images/s of "fp32" on a CPU with native bf16, run to run (benchmarks/classifier_throughput.py
    measures both; docs/performance.md).
    """
    device = model_device(model)
    model.to(memory_format=memory_format)
    # torch.optim.Adam's default (foreach), not make_optimizer's fused one: fused would train ~7% faster but
    # round differently, moving the committed classifier and its Fréchet distances (0.9155 -> 0.9121 test
    # accuracy, FD 244.9 -> 256.9 on val in one fp32 run)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = TensorBatches(images, batch_size, labels=labels, seed=seed, device=device)
    losses = []
    model.train()
    for _ in range(epochs):
        total, seen = torch.zeros((), device=device), 0
        for x, y in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = nn.functional.cross_entropy(model(batch_images(x, device)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(y)
            seen += len(y)
        losses.append(float(total) / seen)
    return losses


@torch.inference_mode()
def accuracy(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    device = model_device(model)
    correct = 0
    with evaluating(model):
        for batch, batch_labels in zip(images.split(batch_size), labels.split(batch_size)):
            predicted = model(batch_images(batch, device)).argmax(1).cpu()
            correct += int((predicted == batch_labels).sum())
    return correct / len(images)


@torch.inference_mode()
def features(model: ImageClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate activations (N, 128) on the CPU of images (N, C, 32, 32), float in [0, 1] or uint8."""
    device = model_device(model)
    with evaluating(model):
        return torch.cat([model.features(batch_images(batch, device)).cpu() for batch in images.split(batch_size)])


def save_classifier(model: ImageClassifier, path: Path | str) -> None:
    """Save the weights and the config that rebuilds the network (:attr:`ImageClassifier.config`)."""
    atomic_torch_save({"config": model.config, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, path)


def save_no_classifier(path: Path | str, in_channels: int) -> None:
    """Record that data of one class has no classifier: a checkpoint with a config and no weights, which
    :func:`load_classifier` gives back as None."""
    atomic_torch_save({"config": {"num_classes": 1, "in_channels": in_channels}, "state_dict": None}, path)


def load_classifier(
    path: Path | str, device: torch.device | str = "cpu", expected_channels: int | None = None
) -> ImageClassifier | None:
    """Raises :class:`vae.storage.CheckpointError` naming the file when it is not a classifier checkpoint, or
    one for images of other than ``expected_channels`` channels (a checkpoint without a config is a
    Fashion-MNIST one: 10 classes, 1 channel). None: the data had one class, there is no classifier
    (:func:`save_no_classifier`)."""
    blob = _torch_load(path, CheckpointError, "classifier checkpoint (run: dvc repro classifier)")
    config = blob.get("config", {"num_classes": 10, "in_channels": 1}) if isinstance(blob, dict) else {}
    channels = config.get("in_channels")
    if expected_channels is not None and channels != expected_channels:
        raise CheckpointError(
            f"{path}: classifier was trained on {channels}-channel images, the prepared data has "
            f"{expected_channels}; retrain it (dvc repro classifier)"
        )
    if config.get("num_classes", 10) < 2 and isinstance(blob, dict) and blob.get("state_dict") is None:
        return None
    try:
        model = ImageClassifier(**config)
        model.load_state_dict(blob["state_dict"])
    except (TypeError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a classifier checkpoint ({str(err).splitlines()[0][:160]})") from None
    return model.to(device, memory_format=torch.channels_last).eval()
