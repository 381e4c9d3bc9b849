"""Training throughput of the sample-quality classifier: its memory layouts, precisions and layers.

:func:`vae.classifier.train_classifier` trains in channels-last (NHWC) layout, under bf16 autocast
where ``classifier.precision`` resolves to bf16 (a CPU with native bf16), and the classifier stage
swaps in :mod:`vae.fast_cpu`'s convolutions (float32 weight gradients under bf16); this measures what
each buys on this machine: PyTorch's default (NCHW, fp32), channels-last fp32, and, where the CPU has
native bf16, channels-last bf16 with ``torch.nn``'s layers and with the stage's. Each trains the same
network (same initial weights, Adam, batch size, images) one epoch per round, taking turns for
``--rounds`` rounds so that a slow spell of a shared machine hits all alike, with the classifier
stage's allocator setting; prints the median images/s of each and the ratios.

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
from vae.fast_cpu import enable, keep_freed_memory
from vae.trainer import native_bf16_cpu

DEFAULT, CHANNELS_LAST = "default (NCHW, fp32)", "channels-last, fp32"
BF16, STAGE = "channels-last, bf16", "bf16, fast_cpu (stage)"
# (layout, precision, vae.fast_cpu's layers); the stage trains in fp32 with them where the CPU lacks native
# bf16, the same arithmetic as CHANNELS_LAST (its layers are torch.nn's outside bf16 autocast)
SETTINGS = {DEFAULT: (torch.contiguous_format, "fp32", False), CHANNELS_LAST: (torch.channels_last, "fp32", False)}
BF16_SETTINGS = {BF16: (torch.channels_last, "bf16", False), STAGE: (torch.channels_last, "bf16", True)}


def images_per_second(
    setting: tuple[torch.memory_format, str, bool], images: torch.Tensor, labels: torch.Tensor, batch: int
) -> float:
    layout, precision, fast_layers = setting
    torch.manual_seed(0)
    model = ImageClassifier()
    if fast_layers:
        enable(model)
    started = time.perf_counter()
    train_classifier(
        model, images, labels, epochs=1, lr=1e-3, batch_size=batch, seed=0, memory_format=layout, precision=precision
    )
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()  # as the classifier stage's entry point does
    train = read_split(resolve_data_dir(), "train", limit=args.images)
    threads, isa, native = torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(), native_bf16_cpu()
    settings = SETTINGS | (BF16_SETTINGS if native else {})
    bf16 = "native bf16" if native else "no native bf16: bf16 not timed"
    print(f"classifier training, {len(train)} images, batch {args.batch_size}, {threads} threads, {isa}, {bf16}")
    speeds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, setting in settings.items():
            speeds[name].append(images_per_second(setting, train.images, train.labels, args.batch_size))
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    for name, median in medians.items():
        print(f"  {name:22} {median:8.0f} images/s")
    print(f"  channels-last / default: {medians[CHANNELS_LAST] / medians[DEFAULT]:.2f}x")
    if BF16 in medians:
        print(f"  bf16 / fp32 (channels-last): {medians[BF16] / medians[CHANNELS_LAST]:.2f}x")
        print(f"  vae.fast_cpu's layers / torch.nn's (bf16): {medians[STAGE] / medians[BF16]:.2f}x")
        print(f"  the stage's path / default: {medians[STAGE] / medians[DEFAULT]:.2f}x")


if __name__ == "__main__":
    run_command("benchmark", main)
