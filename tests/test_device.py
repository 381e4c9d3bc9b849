"""Which device a stage computes on: the GPU with the most free memory, a named one, or the CPU.

The CUDA queries are replaced by a machine description here; this machine has no GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from project import empty_mlflow_store

from vae import utils
from vae.utils import DeviceError, free_gpu_memory, get_device

GIB = 1 << 30


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator:
    """Pretend the machine has GPUs with the given free memory (GiB), queried through NVML; the GPUs
    this process claims are given up at the end."""
    monkeypatch.setattr(utils, "GPU_CLAIMS_DIR", tmp_path / "claims")

    def install(*free_gib: float, nvml: bool = True, driver_sees: int | None = None) -> None:
        """``driver_sees``: the GPUs NVML counts (default: those CUDA can use)."""
        monkeypatch.setattr(utils, "nvml_gpu_count", lambda: len(free_gib) if driver_sees is None else driver_sees)
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

    yield install
    utils.release_gpu_claims()


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


def test_runs_started_together_spread_over_the_gpus(gpus) -> None:
    """`dvc queue start -j 3` on three GPUs: each stage process claims one; all see the same free memory."""
    gpus(70, 70, 70)
    assert get_device() == torch.device("cuda", 0)  # this process's claim
    utils.release_gpu_claims()
    # other processes' claims: locks of their own, on other open files (flock locks are per open file)
    second, third = FileLock(utils.GPU_CLAIMS_DIR / "0.lock"), FileLock(utils.GPU_CLAIMS_DIR / "1.lock")
    second.acquire(timeout=0)
    try:
        assert get_device() == torch.device("cuda", 1)
        utils.release_gpu_claims()
        third.acquire(timeout=0)
        assert get_device() == torch.device("cuda", 2)
    finally:
        second.release()
        third.release()


def test_when_every_gpu_is_claimed_auto_shares_the_one_with_the_most_free_memory(gpus) -> None:
    gpus(20, 60)
    held = [FileLock(utils.GPU_CLAIMS_DIR / f"{i}.lock") for i in range(2)]
    utils.GPU_CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
    for lock in held:
        lock.acquire(timeout=0)
    try:
        assert get_device() == torch.device("cuda", 1)
    finally:
        for lock in held:
            lock.release()


def test_a_ray_trial_granted_no_gpu_trains_on_the_cpu(gpus) -> None:
    gpus(70, 70)  # Ray 2.60 leaves every GPU visible to a task that asked for none
    assert get_device("auto", granted_gpus=0) == torch.device("cpu")
    assert get_device("auto", granted_gpus=1) == torch.device("cuda", 0)  # Ray narrowed what it sees


def test_gpus_the_driver_sees_but_cuda_cannot_use_are_said_in_one_line(gpus, capsys) -> None:
    gpus(driver_sees=2)  # an NVIDIA driver older than this PyTorch's CUDA needs
    assert get_device() == torch.device("cpu")
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("device: the driver sees 2 GPU(s) that this PyTorch") and "training on the CPU" in line


def test_nvml_s_own_errors_fall_back_to_cuda(gpus, monkeypatch) -> None:
    from pynvml import NVMLError_Unknown

    gpus(10, 50)

    def nvml_fails(i: int) -> int:
        raise NVMLError_Unknown()  # a plain Exception subclass, not a RuntimeError

    monkeypatch.setattr(torch.cuda, "device_memory_used", nvml_fails)
    assert free_gpu_memory(1) == 50 * GIB and get_device() == torch.device("cuda", 1)


@pytest.fixture
def gpu_generators(monkeypatch: pytest.MonkeyPatch):
    """Pretend ``count`` GPUs are visible, each with a random generator state of its own (a byte string)."""

    def install(count: int) -> dict[int, torch.Tensor]:
        states = {i: torch.full((4,), i, dtype=torch.uint8) for i in range(count)}

        def index(device: object = "cuda") -> int:
            i = device if isinstance(device, int) else torch.device(device).index or 0
            if i >= count:
                raise IndexError(f"no GPU {i} of {count}")  # what CUDA's own call raises, in its words
            return i

        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[index(device)].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": states.__setitem__(index(device), s))
        return states

    return install


def test_a_run_saved_on_one_gpu_resumes_on_another_with_that_gpu_s_generator(gpu_generators) -> None:
    from vae.pipeline.resume import restore_rng, rng_state

    shuffler = torch.Generator().manual_seed(0)
    saved = gpu_generators(2)  # trained on cuda:1 of two GPUs
    state = rng_state(shuffler, torch.device("cuda", 1))
    trained_on = saved[1].clone()
    restored = gpu_generators(1)  # resumed where one GPU is visible: cuda:0
    restore_rng(state, shuffler, torch.device("cuda", 0))
    assert torch.equal(restored[0], trained_on)  # the noise goes on as it would have on cuda:1


def test_a_run_on_the_cpu_saves_no_gpu_generator(gpu_generators) -> None:
    from vae.pipeline.resume import rng_state

    gpu_generators(2)
    assert set(rng_state(torch.Generator(), torch.device("cpu"))) == {"torch", "shuffler"}


def test_the_logged_models_are_cpu_copies_and_the_trained_model_stays_put(tmp_path, monkeypatch) -> None:
    """MLflow exports with an example input made on the CPU: handing it the training module (on a GPU
    in a GPU run) fails with a device mismatch after the last epoch. It gets a CPU copy instead."""
    import mlflow
    import mlflow.pytorch

    from vae.model import VAE
    from vae.tracking import logged_models

    handed: list[torch.nn.Module] = []

    class Info:
        registered_model_version = None

    def log_model(module: torch.nn.Module, **kwargs: object) -> Info:
        handed.append(module)
        return Info()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_mlflow_store(tmp_path))  # nothing may land elsewhere
    monkeypatch.setattr(mlflow.pytorch, "log_model", log_model)
    monkeypatch.setattr(mlflow, "log_artifact", lambda *args, **kwargs: None)
    model = VAE(latent_dim=2).train()
    before = {name: p for name, p in model.named_parameters()}
    logged_models.log_models(model, tmp_path / "checkpoint.pth", None, {})

    decoder, encoder = handed
    assert decoder is not model.decoder and encoder.encoder is not model.encoder  # copies, not the training modules
    for module in handed:
        tensors = [*module.parameters(), *module.buffers()]
        assert all(t.device.type == "cpu" for t in tensors) and not module.training
    assert dict(model.named_parameters()) == before and model.training  # the training model is untouched


def test_the_logged_models_say_whose_they_are_and_evaluate_finds_the_decoder(tmp_path, monkeypatch) -> None:
    """MLflow's model lists show names: each says the DVC experiment, the part and the key params."""
    import mlflow

    from vae.model import VAE
    from vae.tracking import logged_models, registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_mlflow_store(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "half-beta")  # as `dvc exp run -n half-beta` sets it
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    with mlflow.start_run() as run:
        logged_models.log_models(VAE(latent_dim=3), tmp_path / "checkpoint.pth", None, {}, beta=0.5)
    client = mlflow.MlflowClient()
    models = client.search_logged_models([run.info.experiment_id])
    parts = {m.name: m.tags.get(registry.PART_TAG) for m in models}
    assert parts == {"half-beta-decoder-beta0p5-latent3": "decoder", "half-beta-encoder-beta0p5-latent3": "encoder"}
    decoder_id = registry.decoder_model_id(run.info.run_id)
    assert client.get_logged_model(decoder_id).name == "half-beta-decoder-beta0p5-latent3"
    loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/half-beta-decoder-beta0p5-latent3", dst_path=tmp_path)
    assert loaded(torch.zeros(2, 3)).shape == (2, 1, 32, 32)


def test_a_gpu_host_serves_the_logged_cpu_model_with_the_readme_s_setting(tmp_path, monkeypatch) -> None:
    """MLflow's pyfunc loader (what `mlflow models serve` runs) picks cuda wherever CUDA is available and
    refuses an exported CPU model there; MLFLOW_DEFAULT_PREDICTION_DEVICE=cpu, as the README serves, loads it."""
    import mlflow
    import numpy as np

    from vae.model import VAE
    from vae.tracking import logged_models, registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_mlflow_store(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    with mlflow.start_run() as run:
        logged_models.log_models(VAE(latent_dim=2), tmp_path / "checkpoint.pth", None, {})
    uri = f"runs:/{run.info.run_id}/{logged_models.logged_model_name(registry.DECODER, None, 2)}"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host
    monkeypatch.delenv("MLFLOW_DEFAULT_PREDICTION_DEVICE", raising=False)
    with pytest.raises(Exception, match="can't be loaded on 'cuda' device"):
        mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path))
    monkeypatch.setenv("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")
    images = mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path)).predict(np.zeros((3, 2), dtype=np.float32))
    assert np.asarray(images).shape == (3, 1, 32, 32)


def test_the_iw_estimate_decodes_in_the_same_chunks_on_a_gpu(monkeypatch) -> None:
    """The chunks fix which noise each image gets: chunks sized by device made the estimate depend on it."""
    from vae import metrics
    from vae.model import VAE

    model, images = VAE(latent_dim=2), torch.rand(120, 1, 32, 32)
    encode = model.encode

    def estimate_as_if_on(device: str) -> tuple[float, list[int]]:
        chunks: list[int] = []

        def recording_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            chunks.append(len(x))
            return encode(x)

        monkeypatch.setattr(model, "encode", recording_encode)
        monkeypatch.setattr(metrics, "model_device", lambda m: torch.device(device))  # where it would compute
        monkeypatch.setattr(metrics, "batch_images", lambda chunk, d: chunk)  # …computed here, on the CPU
        monkeypatch.setattr(metrics, "standard_normal", lambda shape, d, g: torch.randn(shape, generator=g))
        noise = torch.Generator().manual_seed(0)
        return metrics.importance_weighted_log_likelihood(model, images, 10, generator=noise), chunks

    assert estimate_as_if_on("cuda") == estimate_as_if_on("cpu")
