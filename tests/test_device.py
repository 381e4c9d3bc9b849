"""Which device a stage computes on: the GPU with the most free memory, a named one, or the CPU.

The CUDA queries are replaced by a machine description here; this machine has no GPU.
"""

from __future__ import annotations

import pytest
import torch

from vae.utils import DeviceError, free_gpu_memory, get_device

GIB = 1 << 30


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """Pretend the machine has GPUs with the given free memory (GiB), queried through NVML."""

    def install(*free_gib: float, nvml: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(free_gib))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_gib))

        class Properties:
            total_memory = 80 * GIB

        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Properties())
        if nvml:
            used = {i: int((80 - free) * GIB) for i, free in enumerate(free_gib)}
            monkeypatch.setattr(torch.cuda, "device_memory_used", lambda i: used[i])
        else:

            def no_nvml(i: int) -> int:
                raise ModuleNotFoundError("pynvml does not seem to be installed")

            monkeypatch.setattr(torch.cuda, "device_memory_used", no_nvml)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (int(free_gib[i] * GIB), 80 * GIB))

    return install


def test_auto_picks_the_gpu_with_the_most_free_memory(gpus) -> None:
    gpus(10, 70, 40)
    assert get_device() == torch.device("cuda", 1)
    assert free_gpu_memory(2) == 40 * GIB


def test_auto_asks_cuda_itself_without_nvml(gpus) -> None:
    gpus(10, 20, 75, nvml=False)
    assert get_device("auto") == torch.device("cuda", 2)


def test_a_tie_goes_to_the_lowest_index(gpus) -> None:
    gpus(30, 50, 50)
    assert get_device() == torch.device("cuda", 1)


def test_no_gpu_means_the_cpu_and_cpu_is_always_there(gpus) -> None:
    gpus()
    assert get_device() == torch.device("cpu")
    gpus(80)
    assert get_device("cpu") == torch.device("cpu")


def test_a_named_gpu_is_used_as_named(gpus) -> None:
    gpus(10, 70)
    assert get_device("cuda") == torch.device("cuda", 0)
    assert get_device("cuda:0") == torch.device("cuda", 0)  # even with less free memory


@pytest.mark.parametrize(
    ("free", "asked", "message"),
    [
        ((70, 70), "cuda:2", "device 'cuda:2' is not on this machine (2 CUDA device(s) visible); use auto or cpu"),
        ((), "cuda", "device 'cuda' is not on this machine (no usable CUDA GPU); use auto or cpu"),
    ],
)
def test_a_gpu_the_machine_lacks_is_one_line(gpus, free: tuple, asked: str, message: str) -> None:
    gpus(*free)
    with pytest.raises(DeviceError) as raised:
        get_device(asked)
    assert str(raised.value) == message
