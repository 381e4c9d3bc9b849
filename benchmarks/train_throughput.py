"""Training throughput: the usual torchvision + DataLoader loop against this project's training path.

Both paths train the same model (same initial weights) with the same optimizer,
loss, batch size and images, on the same device. Each lives in its own worker
process (so its peak memory is its own), and the two take turns running
``--rounds`` rounds of ``--steps`` timed steps each after ``--warmup`` untimed
steps, so that a slow spell of a shared machine hits both alike. Prints the
median images/s of each, the ratio b/a, and the peak memory.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--images 60000] [--batch-size 128] [--precision fp32]
                                          [--no-fast-cpu] [--channels 1 3]

Each of ``--channels`` (default 1 and 3) is measured as its own pair: at 3 channels both paths train
``VAE(input_channels=3)`` on the same images made RGB (the usual loop with torchvision's
``Grayscale(num_output_channels=3)``, the project path with :func:`vae.data.to_channels`, as prepare
does), the figures of a CIFAR-10 or colour-folder training beside Fashion-MNIST's.

(a) "usual": torchvision ``FashionMNIST`` with ``Pad(2)`` + ``ToTensor()`` per image,
    ``DataLoader(batch_size, shuffle=True, num_workers=0)``, the model with
    ``torch.nn``'s own convolution classes, ``torch.optim.Adam``,
    ``vae_loss_function`` on the sigmoid output, ``.item()`` every step.
(b) "project": what the train stage does: the prepared uint8 tensor on the
    device, :class:`vae.batches.TensorBatches`, :func:`vae.trainer.configure_performance`,
    :func:`vae.trainer.make_optimizer` (fused Adam),
    :func:`vae.trainer.train_one_epoch` (no per-image work, no per-step sync),
    the :mod:`vae.fast_cpu` convolutions and allocator setting (``--no-fast-cpu``
    leaves them out, to measure what they buy) and ``train.precision`` (default
    auto: bf16 on CPUs with AVX512-BF16 or AMX).

It prints which vector instructions the CPU offers: the figures of a CPU with
AVX-512 and native bf16 say little about one with AVX2 alone.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import multiprocessing as mp
import resource
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/machine.py: run as scripts, beside it

from vae import fast_cpu
from vae.config import PRECISIONS
from vae.data import SPLIT_FILES, read_split, resolve_data_dir, to_channels
from vae.errors import run_command
from vae.loss import vae_loss_function
from vae.model import VAE
from vae.trainer import native_bf16_cpu, resolve_precision
from vae.utils import get_device

_state: dict = {}  # the worker process's model, optimizer and batches between rounds


def _torchvision_root(source: Path, workdir: Path) -> Path:
    """torchvision's FashionMNIST wants the four uncompressed files under <root>/FashionMNIST/raw."""
    raw = workdir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in (name for names in SPLIT_FILES.values() for name in names):
        plain, packed = source / name, source / f"{name}.gz"
        if plain.is_file():
            shutil.copy(plain, raw / name)
        else:
            with gzip.open(packed, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return workdir


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def _model(args: dict, device: torch.device) -> VAE:
    model = VAE(latent_dim=2, input_channels=args["channels"]).to(device)
    model.load_state_dict(torch.load(args["weights"], weights_only=True))
    return model


def _setup_usual(args: dict) -> None:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    device = torch.device(args["device"])
    torch.manual_seed(0)
    dataset = datasets.FashionMNIST(
        args["tv_root"],
        train=True,
        download=False,
        transform=transforms.Compose(
            [transforms.Pad(2), transforms.Grayscale(num_output_channels=args["channels"]), transforms.ToTensor()]
        ),
    )
    loader = DataLoader(Subset(dataset, range(args["images"])), batch_size=args["batch_size"], shuffle=True)
    model = _model(args, device)  # plain torch.nn, the same weights
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stream = itertools.chain.from_iterable(itertools.repeat(loader))  # endless, reshuffled each pass

    def steps(n: int) -> tuple[int, float]:
        images, loss_value = 0, float("nan")
        for x, _ in itertools.islice(stream, n):
            x = x.to(device)
            reconstruction, mu, logvar = model(x)
            loss, _, _ = vae_loss_function(reconstruction, x, mu, logvar, beta=500.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
            images += len(x)
        return images, loss_value

    _state.update(device=device, steps=steps)


def _setup_project(args: dict) -> None:
    from vae.batches import TensorBatches
    from vae.trainer import configure_performance, make_optimizer, train_one_epoch

    device = torch.device(args["device"])
    torch.manual_seed(0)
    images = to_channels(read_split(args["source"], "train", args["images"]).images, args["channels"])
    model = configure_performance(device, _model(args, device))
    if args["fast_cpu"]:
        fast_cpu.keep_freed_memory()  # as the train stage's entry point does
        fast_cpu.enable(model)
    optimizer = make_optimizer(model, lr=1e-3)
    stream = itertools.chain.from_iterable(
        itertools.repeat(TensorBatches(images, args["batch_size"], seed=0, device=device))
    )

    def steps(n: int) -> tuple[int, float]:
        batches = list(itertools.islice(stream, n))  # indexing views; the work happens in training
        result = train_one_epoch(
            model, batches, optimizer, device, beta=500.0, progress=False, precision=args["precision"]
        )
        return sum(len(b) for b in batches), result.loss

    _state.update(device=device, steps=steps)


def _setup(path: str, args: dict) -> None:
    {"usual": _setup_usual, "project": _setup_project}[path](args)
    _state["steps"](args["warmup"])


def _round(steps: int) -> dict:
    device = _state["device"]
    _sync(device)
    start = time.perf_counter()
    images, loss = _state["steps"](steps)
    _sync(device)
    return {"images_per_s": images / (time.perf_counter() - start), "loss": loss, "peak_mb": _peak_memory_mb(device)}


def _initial_weights(folder: Path, channels: int = 1) -> Path:
    """The weights both paths start from (seed 0) for ``channels``-channel images, saved in ``folder``."""
    weights = folder / f"init-{channels}.pt"
    torch.manual_seed(0)
    torch.save(VAE(latent_dim=2, input_channels=channels).state_dict(), weights)
    return weights


def project_images_per_s(
    source: Path, device: str, precision: str, batch_size: int, images: int, steps: int, warmup: int
) -> float:
    """Images/s of path (b) alone, in this process, over one round of ``steps`` after ``warmup``: what
    ``benchmarks/gpu_check.py`` reports for the train stage (no baseline to compare, so no worker process)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = {"device": device, "images": images, "batch_size": batch_size, "warmup": warmup}
        args |= {"precision": precision, "fast_cpu": True, "weights": str(_initial_weights(Path(tmp))), "channels": 1}
        _setup("project", args | {"source": str(source)})
        return _round(steps)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (as train.device: a GPU when there is one), cpu or cuda")
    parser.add_argument("--images", type=int, default=60_000, help="training images to draw batches from")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="timed optimisation steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path, taken in turns")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps before the first round")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="of path (b), as train.precision (default: auto)"
    )
    parser.add_argument("--no-fast-cpu", action="store_true", help="path (b) without vae.fast_cpu")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: FASHION_MNIST_DIR, data/...)")
    parser.add_argument("--channels", type=int, nargs="+", choices=(1, 3), default=[1, 3], help="image channels")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    cli = parser.parse_args()
    cli.device = str(get_device(cli.device))  # after parsing: --device cpu must not initialise CUDA

    source = resolve_data_dir(cli.data)
    cli.precision = resolve_precision(cli.precision, torch.device(cli.device))
    name = torch.cuda.get_device_name() if cli.device.startswith("cuda") else cpu_name()
    print(f"device: {cli.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"CPU: {_cpu_features()}")
    print(
        f"{cli.images} images, batch size {cli.batch_size}, {cli.rounds} rounds of {cli.steps} timed steps "
        f"per path after {cli.warmup} warm-up steps"
    )
    report = {}
    for channels in cli.channels:
        report[channels] = _measure(cli, source, channels)
    if cli.json:
        print(json.dumps({"by_channels": report, "args": vars(cli)}))


def _measure(cli: argparse.Namespace, source: Path, channels: int) -> dict:
    """Both paths in turns at ``channels``-channel images; prints their figures and returns them."""
    results: dict[str, list[dict]] = {"usual": [], "project": []}
    with tempfile.TemporaryDirectory() as tmp:
        args = {
            "device": cli.device,
            "images": cli.images,
            "batch_size": cli.batch_size,
            "warmup": cli.warmup,
            "precision": cli.precision,
            "fast_cpu": not cli.no_fast_cpu,
            "weights": str(_initial_weights(Path(tmp), channels)),
            "channels": channels,
            "source": str(source),
            "tv_root": str(_torchvision_root(source, Path(tmp))),
        }
        spawn = mp.get_context("spawn")  # fresh processes: own peak memory, nothing shared
        pools = {
            path: ProcessPoolExecutor(1, mp_context=spawn, initializer=_setup, initargs=(path, args))
            for path in results
        }
        try:
            for _ in range(cli.rounds):
                for path, pool in pools.items():
                    results[path].append(pool.submit(_round, cli.steps).result())
        finally:
            for pool in pools.values():
                pool.shutdown()

    speed = {path: statistics.median(r["images_per_s"] for r in rounds) for path, rounds in results.items()}
    peak = {path: rounds[-1]["peak_mb"] for path, rounds in results.items()}
    memory = "GPU memory allocated" if cli.device.startswith("cuda") else "process RSS"
    print(f"{channels}×32×32 images:")
    project = f"(b) project path, {cli.precision}{', no fast_cpu' if cli.no_fast_cpu else ''}"
    for path, label in (("usual", "(a) usual loop"), ("project", project)):
        print(f"  {label + ':':36s} {speed[path]:10.0f} images/s   peak {memory} {peak[path]:8.1f} MiB")
    print(f"  ratio b/a: {speed['project'] / speed['usual']:.2f}x")
    return {"images_per_s": speed, "peak_mb": peak, "rounds": results}


def _cpu_features() -> str:
    """What PyTorch's CPU kernels can use here: the vector ISA, and whether bf16 is native (AVX512-BF16, AMX)."""
    native = "yes" if native_bf16_cpu() else "no (emulated, slower)"
    return f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native}"


if __name__ == "__main__":
    run_command("benchmark", main)
