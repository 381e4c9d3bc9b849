"""Training throughput of the sample-quality classifier in its two memory layouts.

:func:`vae.classifier.train_classifier` trains in channels-last (NHWC) layout; this measures
what that buys over PyTorch's default (NCHW) on this machine. Both train the same network
(same initial weights, Adam, batch size, images) one epoch per round, taking turns for
``--rounds`` rounds so that a slow spell of a shared machine hits both alike; prints the
median images/s of each and the ratio.

    FASHION_MNIST_DIR=… python benchmarks/classifier_throughput.py [--images 12000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vae.classifier import ImageClassifier, train_classifier
from vae.data import read_split, resolve_data_dir
from vae.errors import run_command

LAYOUTS = {"default (NCHW)": torch.contiguous_format, "channels-last (NHWC)": torch.channels_last}


def images_per_second(layout: torch.memory_format, images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    torch.manual_seed(0)
    model = ImageClassifier()
    started = time.perf_counter()
    train_classifier(model, images, labels, epochs=1, lr=1e-3, batch_size=batch, seed=0, memory_format=layout)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    train = read_split(resolve_data_dir(), "train", limit=args.images)
    threads, isa = torch.get_num_threads(), torch.backends.cpu.get_cpu_capability()
    print(f"classifier training, {len(train)} images, batch {args.batch_size}, {threads} threads, {isa}")
    speeds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for _ in range(args.rounds):
        for name, layout in LAYOUTS.items():
            speeds[name].append(images_per_second(layout, train.images, train.labels, args.batch_size))
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    for name, median in medians.items():
        print(f"  {name:22} {median:8.0f} images/s")
    ratio = medians["channels-last (NHWC)"] / medians["default (NCHW)"]
    print(f"  channels-last / default: {ratio:.2f}x")


if __name__ == "__main__":
    run_command("benchmark", main)
