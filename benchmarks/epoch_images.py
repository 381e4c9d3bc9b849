"""The per-epoch pictures' cost: logging samples, reconstructions and the latent grid against one training epoch.

    python benchmarks/epoch_images.py [--images 60000] [--repeats 5]

Trains one epoch of the default run (params.yaml: batch size, precision, device;
the test split evaluated after it, as the train stage does), then times
:meth:`vae.tracking.epoch_images.EpochImages.log` ``--repeats`` times into a
fresh SQLite store, and prints the median and its share of the epoch. The goal
is under 2%. Reads Fashion-MNIST from FASHION_MNIST_DIR (or torchvision's download).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import mlflow

from vae.config import load_params
from vae.data import read_split, resolve_data_dir
from vae.errors import run_command
from vae.pipeline.train import start_training
from vae.tracking.epoch_images import EpochImages
from vae.utils import get_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60_000, help="training images of the epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed EpochImages.log calls")
    args = parser.parse_args()

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    source = resolve_data_dir()
    train, test = read_split(source, "train", args.images), read_split(source, "test")
    device = get_device(params.train.device)
    training = start_training(params.model_copy(update={"epochs": 1}), train, test, device)
    print(f"CPU: {platform.machine()}, {os.cpu_count()} cores; device {device} ({training.precision})")

    started = time.perf_counter()
    for epoch in training.epochs:
        training.train_epoch(epoch)
    epoch_seconds = time.perf_counter() - started

    images = EpochImages.for_run(params, test.images)
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        mlflow.set_experiment("epoch-images")
        with mlflow.start_run():
            timings = []
            for step in range(1, args.repeats + 1):
                started = time.perf_counter()
                images.log(training.model, step)
                timings.append(time.perf_counter() - started)
    median = statistics.median(timings)
    print(f"one epoch of {len(train)} images (and the test split): {epoch_seconds:.2f} s")
    print(f"the epoch's pictures ({', '.join(images.render(training.model))}): median {1000 * median:.0f} ms")
    print(f"share of the epoch: {100 * median / epoch_seconds:.2f}% (goal: under 2%)")


if __name__ == "__main__":
    run_command("benchmark", main)
