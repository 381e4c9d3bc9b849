"""The default pipeline's time, stage by stage, and where the evaluate stage's time goes.

Copies the project (the files git would clone) into a temporary folder, makes it a git and DVC
repository and runs each stage alone, in order, as ``dvc repro -s STAGE`` (prepare, train,
classifier, evaluate, generate), timing each from start to exit. Then, in this process, on the
model and data that pipeline made, it times the pieces of the evaluate stage's work on the
validation and test splits (the IW bound, NELBO, latent means, k-NN, Fréchet features), and the IW
bound's decoder passes per second two ways, in this process, with the evaluate stage's allocator
setting: the pipeline's path (``evaluate.precision``, as resolved here, in passes of up to
``IW_PASS`` decodes, one per core) and the fp32 path of before (benchmarks/iw_before.py: blocks of 512
decodes, one at a time). Prints one table with the CPU, its vector instructions and the
precision; ``--json`` prints the same as one JSON object (``stages``: stage → seconds,
``evaluate_split``, ``iw_speedup``).

    FASHION_MNIST_DIR=… python benchmarks/pipeline_times.py [--set epochs=1 …] [--json]

``--set KEY=VALUE`` changes a params.yaml key in the copy (quick runs); without it, the default
pipeline, as `dvc repro` runs it. ``--stages-only`` times the stages and stops: to time an older
checkout's stages, copy this folder's scripts into it and run them there with ``PYTHONPATH`` set to
its root (its ``vae``, not the installed one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from copies import project_copy  # benchmarks/copies.py
from iw_before import iw_as_before  # benchmarks/iw_before.py
from machine import cpu_name  # benchmarks/machine.py: run as scripts, beside it

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "classifier", "evaluate", "generate")


def environment() -> dict[str, str]:
    """This environment, with a relative FASHION_MNIST_DIR made absolute (the copy sits elsewhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["DVC_NO_ANALYTICS"] = "1"
    if env.get("FASHION_MNIST_DIR") and not Path(env["FASHION_MNIST_DIR"]).is_absolute():
        env["FASHION_MNIST_DIR"] = str((REPO / env["FASHION_MNIST_DIR"]).resolve())
    return env


def time_stages(root: Path) -> dict[str, float]:
    seconds = {}
    for stage in STAGES:
        started = time.perf_counter()
        result = subprocess.run(
            ["dvc", "repro", "-s", stage], cwd=root, env=environment(), capture_output=True, text=True
        )
        seconds[stage] = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"benchmark: error: dvc repro -s {stage} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return seconds


def timed(work: Callable[..., object], *args: object, **kwargs: object) -> tuple[object, float]:
    """``work(*args, **kwargs)`` and the seconds it took."""
    started = time.perf_counter()
    result = work(*args, **kwargs)
    return result, time.perf_counter() - started


def evaluate_work(root: Path, iw_images: int) -> tuple[dict[str, float], dict[str, float], str]:
    """Seconds of each piece of the evaluate stage's work on the pipeline's model, validation and test splits
    (as :func:`vae.pipeline.evaluate.evaluate_split` does it), the IW bound's decoder passes per second of
    the pipeline's path and of the fp32 path of before on the first ``iw_images`` test images, and the
    precision evaluate resolved here."""
    from vae import fast_cpu
    from vae.classifier import features, load_classifier
    from vae.config import load_params
    from vae.generator import encode_means
    from vae.metrics import frechet_distance, importance_weighted_log_likelihood, knn_accuracy, negative_elbo
    from vae.pipeline.evaluate import IW_PASS, prior_sample_features
    from vae.storage import load_model, load_prepared
    from vae.trainer import resolve_precision
    from vae.utils import get_device

    params = load_params(root / "params.yaml")
    cfg, device = params.evaluate, get_device(params.train.device)
    precision = resolve_precision(cfg.precision, device)
    model, _ = load_model(root / "models" / "vae.pth", device)
    fast_cpu.enable(model)
    classifier = load_classifier(root / "models" / "classifier.pth", device)
    prepared = root / "data" / "prepared"
    train = load_prepared(prepared / "train.pt")
    splits = [load_prepared(prepared / f"{name}.pt") for name in ("val", "test") if (prepared / f"{name}.pt").exists()]
    pieces = dict.fromkeys(("IW bound", "NELBO", "latent means", "k-NN", "Fréchet features"), 0.0)
    train_means, pieces["latent means"] = timed(encode_means, model, train.images, cfg.batch_size)
    sample_features, pieces["Fréchet features"] = timed(prior_sample_features, model, classifier, params, device)
    iw_options = {"precision": precision, "decodes_per_pass": IW_PASS}
    for split in splits:
        pieces["NELBO"] += timed(negative_elbo, model, split.images, cfg.batch_size, precision)[1]
        noise = torch.Generator().manual_seed(cfg.seed)
        iw = importance_weighted_log_likelihood
        pieces["IW bound"] += timed(iw, model, split.images, cfg.iw_samples, generator=noise, **iw_options)[1]
        means, seconds = timed(encode_means, model, split.images, cfg.batch_size)
        pieces["latent means"] += seconds
        pieces["k-NN"] += timed(knn_accuracy, train_means, train.labels, means, split.labels, k=cfg.knn_k)[1]
        started = time.perf_counter()
        frechet_distance(sample_features, features(classifier, split.images, cfg.batch_size))
        pieces["Fréchet features"] += time.perf_counter() - started
    images = splits[-1].images[:iw_images]
    decodes = len(images) * cfg.iw_samples
    speed = {}
    paths = {
        "before: fp32": lambda noise: iw_as_before(model, images, cfg.iw_samples, noise),
        "pipeline": lambda noise: importance_weighted_log_likelihood(model, images, cfg.iw_samples, generator=noise, **iw_options),
    }
    for path, estimate in paths.items():
        speed[path] = decodes / timed(estimate, torch.Generator().manual_seed(cfg.seed))[1]
    return pieces, speed, precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml change")
    parser.add_argument("--iw-images", type=int, default=2000, help="test images of the IW speed comparison")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--stages-only", action="store_true", help="time the stages alone (an older checkout: PYTHONPATH=its root)"
    )
    args = parser.parse_args()
    from vae.fast_cpu import keep_freed_memory
    from vae.trainer import native_bf16_cpu

    keep_freed_memory()  # as the evaluate stage's entry point does: both IW paths are timed with it
    with tempfile.TemporaryDirectory(prefix="vae-pipeline-bench-") as tmp:
        root = Path(tmp) / "project"
        project_copy(root, {k: yaml.safe_load(v) for k, v in (change.split("=", 1) for change in args.set)})
        stages = time_stages(root)
        if not args.stages_only:
            pieces, speed, precision = evaluate_work(root, args.iw_images)
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16_cpu(),
        "torch": torch.__version__,
    }
    result = {"stages": stages, "machine": machine, "set": args.set}
    if not args.stages_only:
        ratio = speed["pipeline"] / speed["before: fp32"]
        machine["evaluate_precision"] = precision
        result |= {"evaluate_split": pieces, "iw_passes_per_s": speed, "iw_speedup": ratio}
    if args.json:
        print(json.dumps(result))
        return
    bf16 = "native bf16" if machine["native_bf16"] else "no native bf16"
    print(f"{machine['cpu']}, {machine['cores']} cores, {machine['isa']}, {bf16}; torch {machine['torch']}")
    if args.set:
        print(f"params: {' '.join(args.set)}")
    print(f"{'stage':<12}{'seconds':>9}")
    for stage, seconds in stages.items():
        print(f"{stage:<12}{seconds:9.1f}")
    print(f"{'total':<12}{sum(stages.values()):9.1f}")
    if args.stages_only:
        return
    print(f"evaluate.precision resolves to {precision}; evaluate's work, validation + test, timed in this process:")
    for piece, seconds in pieces.items():
        print(f"  {piece:<18}{seconds:7.1f} s")
    from vae.pipeline.evaluate import IW_PASS

    before, now = speed["before: fp32"], speed["pipeline"]
    print(
        f"IW bound on {args.iw_images} test images: {now:,.0f} decoder passes/s ({precision}, up to {IW_PASS:,} "
        f"a pass, one pass per core) against {before:,.0f} (fp32, 512 a pass, as before): {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
