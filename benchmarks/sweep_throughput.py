"""Sweep throughput: N trials one after another in one process, against the same N trials through the sweep.

Run from a project whose prepare and classifier stages ran (``dvc repro classifier``):

    python benchmarks/sweep_throughput.py [--trials 4] [--epochs 1] [--cpu 1] [--gpu 0] [--iw-samples 100]
    python benchmarks/sweep_throughput.py --trials 8 --epochs 10 --gpu 0.25 --cpu 2     # a GPU machine

The trials differ only in train.seed, so each does the same work.
(a) "one after another": this process trains and evaluates each trial in turn with
    :func:`vae.pipeline.train.start_training` and :func:`vae.pipeline.evaluate.evaluate_model`,
    every core (or the GPU) to itself, with no tracking.
(b) "sweep": ``python -m vae.sweep``'s :func:`vae.sweep.tune.run_sweep` on Ray on this
    machine, ``--cpu``/``--gpu`` per trial, with all its MLflow logging (to a temporary store)
    and Ray's start-up included.
Prints trials per hour and training images per second summed over trials, for each, and the
ratio; and the CPU's vector instructions, since the figures depend on them.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from vae.errors import run_command
from vae.pipeline.evaluate import evaluate_model
from vae.pipeline.train import start_training
from vae.sweep.spec import load_sweep
from vae.utils import get_device


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    return ", ".join(flag for flag in wanted if f" {flag}" in flags) or "no AVX2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--cpu", type=float, default=1.0, help="CPUs per sweep trial")
    parser.add_argument("--gpu", type=float, default=0.0, help="GPU share per sweep trial (0.25: four per GPU)")
    parser.add_argument("--iw-samples", type=int, help="evaluate.iw_samples of every trial (default: params.yaml's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        spec = {
            "space": {"train.seed": list(range(args.trials))},
            "epochs": args.epochs,
            "resources": {"cpu": args.cpu, "gpu": args.gpu},
            "max_failures": 0,
        }
        sweep_file = Path(folder) / "throughput.yaml"
        sweep_file.write_text(yaml.safe_dump(spec))
        sweep = load_sweep(sweep_file)
        if args.iw_samples:
            sweep.base["evaluate"]["iw_samples"] = args.iw_samples
        sweep.base["mlflow"]["system_metrics"] = False
        from vae.sweep import tune as sweeping  # Ray: the sweep extra

        train, val, classifier = sweeping.load_setup_data()
        device = get_device(sweep.params({}).train.device)
        images = len(train) * args.epochs * args.trials
        print(f"CPU: {platform.machine()}, {os.cpu_count()} cores ({cpu_flags()}); device {device}")
        print(f"{args.trials} trials of {args.epochs} epoch(s) on {len(train)} images, then the evaluation")

        started = time.perf_counter()
        for seed in range(args.trials):
            params = sweep.params({"train.seed": seed})
            training = start_training(params, train, val, device)
            for epoch in training.epochs:
                training.train_epoch(epoch)
            evaluate_model(training.model, classifier.to(device), train, {"val": val}, params, device)
        sequential = time.perf_counter() - started

        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        started = time.perf_counter()
        sweeping.run_sweep(sweep, None, Path(folder) / "ray_results")
        swept = time.perf_counter() - started

    print()
    print(f"{'':22}{'seconds':>9}{'trials/hour':>13}{'images/s':>10}")
    for name, seconds in (("(a) one after another", sequential), ("(b) sweep", swept)):
        print(f"{name:22}{seconds:9.1f}{3600 * args.trials / seconds:13.1f}{images / seconds:10.0f}")
    print(f"sweep / one after another: {sequential / swept:.2f}x the trials per hour")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")


if __name__ == "__main__":
    run_command("benchmark", main)
