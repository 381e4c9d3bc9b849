"""Device selection, seeding, batches as float images, and eval mode for a while."""

from __future__ import annotations

import random
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from vae.errors import UserError


class DeviceError(UserError, ValueError):
    """A device was asked for that this machine does not have; the message names it."""


def _nvml_errors() -> tuple[type[BaseException], ...]:
    """NVML's own errors (``NVMLError_*``, plain Exception subclasses) where nvidia-ml-py is installed."""
    try:
        from pynvml import NVMLError
    except ImportError:
        return ()
    return (NVMLError,)


def free_gpu_memory(index: int) -> int:
    """Free memory of CUDA device ``index`` in bytes.

    From NVML (what nvidia-smi shows; ``nvidia-ml-py`` is a dependency), which
    opens no CUDA context; else, where NVML fails, from CUDA itself, which opens
    one on that device.
    """
    try:
        return torch.cuda.get_device_properties(index).total_memory - torch.cuda.device_memory_used(index)
    except (ImportError, RuntimeError, OSError, *_nvml_errors()):
        return torch.cuda.mem_get_info(index)[0]


def nvml_gpu_count() -> int:
    """The GPUs NVML (the driver) sees, whether or not this PyTorch build can use them; 0 without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except (ImportError, OSError, *_nvml_errors()):
        return 0


def nvml_driver_version() -> str:
    """The NVIDIA driver's version, as NVML reports it; "unknown" without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except (ImportError, OSError, *_nvml_errors()):
        return "unknown"


# Where processes claim GPUs: a lock file per GPU, held for the life of the process that picked it
GPU_CLAIMS_DIR = Path(tempfile.gettempdir()) / "vae-gpu-claims"
_claims: dict[str, FileLock] = {}


def _claim(index: int) -> bool:
    """Claim GPU ``index`` for this process (by its UUID, the same whatever CUDA_VISIBLE_DEVICES
    numbers it): False when another live process holds it. The OS drops a dead process's claim."""
    key = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
    if key in _claims:
        return True
    GPU_CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
    lock = FileLock(GPU_CLAIMS_DIR / f"{key}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    _claims[key] = lock
    return True


def release_gpu_claims() -> None:
    """Give up the GPUs this process claimed (they are given up at its exit anyway)."""
    while _claims:
        _claims.popitem()[1].release()


def get_device(preference: str = "auto", granted_gpus: int | None = None) -> torch.device:
    """The device to compute on: the one rule of every stage, sweep trial and benchmark.

    ``"auto"``: a GPU no other process of this project has claimed, the one with
    the most free memory (the lowest index on a tie), so that concurrent runs
    (``dvc queue start -j N``) spread over a machine's GPUs instead of all
    landing on ``cuda:0`` (free memory alone cannot tell: runs that start
    together all see every GPU empty); the most free one when all are claimed;
    the CPU when no GPU is usable, said on stderr when the driver sees GPUs that
    this PyTorch build cannot use. ``CUDA_VISIBLE_DEVICES`` limits the choice
    as usual. ``granted_gpus``: the GPUs a scheduler gave this process (Ray's
    ``ray.get_gpu_ids()``); with none granted, "auto" is the CPU. ``"cpu"``,
    ``"cuda"`` (the first GPU) and ``"cuda:N"`` name a device.

    Raises:
        DeviceError: a CUDA device was named that this machine does not have.
    """
    if preference == "cpu" or (preference == "auto" and granted_gpus == 0):
        return torch.device("cpu")
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if preference == "auto":
        if not count:
            if unusable := nvml_gpu_count():
                print(
                    f"device: the driver sees {unusable} GPU(s) that this PyTorch "
                    f"(CUDA {torch.version.cuda}) cannot use: training on the CPU; update the NVIDIA driver "
                    "(README, Set up)",
                    file=sys.stderr,
                )
            return torch.device("cpu")
        free = [free_gpu_memory(i) for i in range(count)]
        by_free = sorted(range(count), key=lambda i: (-free[i], i))
        return torch.device("cuda", next((i for i in by_free if _claim(i)), by_free[0]))
    index = torch.device(preference).index or 0
    if index >= count:
        have = f"{count} CUDA device(s) visible" if available else "no usable CUDA GPU"
        raise DeviceError(f"device {preference!r} is not on this machine ({have}); use auto or cpu")
    return torch.device("cuda", index)


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and every GPU) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device holding the model's parameters."""
    return next(model.parameters()).device


def batch_images(batch: torch.Tensor | tuple | list, device: torch.device) -> torch.Tensor:
    """The images of a batch as floats in [0, 1] on ``device``: (B, C, H, W)."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode for the block, then back in the mode it was in (training or not)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def standard_normal(
    shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """N(0, I) noise of ``shape`` on ``device``: from PyTorch's global generator there, or from a
    CPU ``generator`` (then moved), which makes the draw depend on its seed alone, on any device."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator).to(device)
