"""One-shot check of a machine's GPU path: every step a user takes, timed, in one table.

    python benchmarks/gpu_check.py            # on a CUDA machine: the full check, at most ~10 minutes
    python benchmarks/gpu_check.py --small    # the same steps on little data (a CPU runs this by default)

In a temporary copy of this project, with the data of ``FASHION_MNIST_DIR`` (or ``--data``):

1. ``dvc repro -s STAGE`` for each stage of the default pipeline, timed one by one, and the
   training run's own time (MLflow's start to end of the train stage's run);
2. train images/s of the train stage's path (``benchmarks/train_throughput.py``'s path (b), in this
   process), fp32 and bf16, batch 128 and 512;
3. host-device syncs in one training epoch (``torch.cuda.set_sync_debug_mode``; on a CPU, the
   tensors made from host data, which are those copies on a GPU);
4. logging the decoder and encoder to MLflow, then ``mlflow models serve`` (as the README serves)
   answering one request;
5. a 16-config sweep (``python -m vae.sweep``) with ``resources: {gpu: 0.25}``: wall time and
   trials per hour;
6. the spread between two runs of the train stage with the same seed.

The GPU targets are printed beside the figures; CPU figures are labelled as such, never as GPU ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python benchmarks/gpu_check.py` from a checkout
sys.path.insert(0, str(REPO / "benchmarks"))  # and its sibling train_throughput.py

from copies import project_copy  # noqa: E402 (benchmarks/copies.py)

from vae.data import resolve_data_dir  # noqa: E402
from vae.errors import run_command  # noqa: E402
from vae.utils import get_device  # noqa: E402

STAGES = ["prepare", "train", "classifier", "evaluate", "generate"]
# the first GPU run's targets (issue 28), for an H100/H200-class GPU
TARGETS = {"train_s": ("< 15 s", 15.0), "images_per_s_512": (">= 200,000", 200_000.0), "sweep_s": ("< 120 s", 120.0)}


def sh(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> tuple[str, float]:
    """Run ``command``; its stdout and wall time in seconds. A failure stops the check with its output."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"gpu_check: {' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result.stdout, time.perf_counter() - started


# --small: the same steps on a few hundred images, one epoch (a CPU's default)
SMALL = {
    "epochs": 1,
    "data.val_size": 256,
    "data.train_limit": 512,
    "data.test_limit": 256,
    "classifier.epochs": 1,
    "classifier.min_accuracy": 0.0,
    "evaluate.iw_samples": 4,
    "evaluate.fd_samples": 256,
    "mlflow.log_images_every": 0,
}


def training_run_seconds(root: Path) -> float:
    """The train stage's MLflow run, start to end: the training itself, without the process's start-up."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run((root / "outputs" / "train_run_id.txt").read_text().strip())
    return (run.info.end_time - run.info.start_time) / 1000


def throughput(env: dict[str, str], device: str, precision: str, batch: int, small: bool) -> float:
    """Train images/s of the train stage's path, measured in this process by benchmarks/train_throughput.py."""
    from train_throughput import project_images_per_s

    steps, warmup, images = (5, 2, 512) if small else (200, 50, 60_000)
    return project_images_per_s(Path(env["FASHION_MNIST_DIR"]), device, precision, batch, images, steps, warmup)


def syncs_in_one_epoch(root: Path, device: torch.device) -> tuple[int, int]:
    """(syncs, steps) of one training epoch of the train stage's path on the prepared data."""
    import warnings

    from torch.utils._python_dispatch import TorchDispatchMode

    from vae.batches import TensorBatches
    from vae.model import VAE
    from vae.storage import load_prepared
    from vae.trainer import make_optimizer, train_one_epoch

    train = load_prepared(root / "data" / "prepared" / "train.pt")
    model = VAE(latent_dim=2).to(device)
    optimizer = make_optimizer(model, 1e-3)
    batches = TensorBatches(train.images, 128, seed=0, device=device)
    train_one_epoch(model, batches, optimizer, device, progress=False)  # warm-up: Adam's state, kernels

    class HostCopies(TorchDispatchMode):  # on a CPU: the tensors made from host data (copies on a GPU)
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            self.count += str(func) in ("aten.lift_fresh.default", "aten.scalar_tensor.default")
            return func(*args, **(kwargs or {}))

    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(model, batches, optimizer, device, progress=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught), len(batches)
    with HostCopies() as copies:
        train_one_epoch(model, batches, optimizer, device, progress=False)
    return copies.count, len(batches)


def log_and_serve(root: Path, env: dict[str, str]) -> tuple[float, float]:
    """Seconds to log both models of the trained checkpoint, and for `mlflow models serve` to answer."""
    import mlflow

    from vae.storage import load_model
    from vae.tracking.logged_models import log_models, logged_model_name
    from vae.tracking.registry import DECODER

    model, _ = load_model(root / "models" / "vae.pth", get_device("auto"))
    mlflow.set_tracking_uri(f"sqlite:///{root / 'check.db'}")
    started = time.perf_counter()
    with mlflow.start_run() as run:
        log_models(model, root / "models" / "vae.pth", None, {})
    logged = time.perf_counter() - started

    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'check.db'}"}
    serve_env = env | store | {"MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}  # the README's serving line
    # mlflow models serve downloads the model into a temporary folder and never removes it: TMPDIR puts
    # that folder inside this check's own, which is removed when the check ends
    downloads = root.parent / "serve-downloads"
    downloads.mkdir(exist_ok=True)
    serve_env["TMPDIR"] = str(downloads)
    uri = f"runs:/{run.info.run_id}/{logged_model_name(DECODER, None, model.latent_dim)}"
    command = ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    started = time.perf_counter()
    server = subprocess.Popen(command, cwd=root, env=serve_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": [[0.0, 0.0]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert len(json.load(response)["predictions"]) == 1
                return logged, time.perf_counter() - started
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 180:
                    raise SystemExit("gpu_check: mlflow models serve did not answer within 180 s") from None
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=60)


def sweep(root: Path, env: dict[str, str], small: bool, gpu: bool) -> tuple[int, float]:
    """(trials, seconds) of a sweep of 16 configs (2 with --small) through `python -m vae.sweep`."""
    betas, latents = ([100, 500], [2]) if small else ([100, 250, 500, 1000], [2, 4, 8, 16])
    spec = {"space": {"beta": betas, "latent_dim": latents}, "resources": {"cpu": 1, "gpu": 0.25 if gpu else 0}}
    (root / "sweeps" / "gpu_check.yaml").write_text(yaml.safe_dump(spec))
    _, seconds = sh([sys.executable, "-m", "vae.sweep", "sweeps/gpu_check.yaml"], root, env, timeout=1800)
    return len(betas) * len(latents), seconds


def same_seed_spread(root: Path, env: dict[str, str], first: dict[str, float]) -> float:
    """The largest relative difference of metrics/train.json between the first train-stage run (``first``)
    and one more with the same seed."""
    sh(["dvc", "repro", "-f", "-s", "train"], root, env)
    again = json.loads((root / "metrics" / "train.json").read_text())
    return max(abs(first[k] - again[k]) / max(abs(first[k]), 1e-12) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="little data and 1 epoch (the default without CUDA)")
    parser.add_argument("--data", help="Fashion-MNIST folder (default: FASHION_MNIST_DIR, data/fashion-mnist)")
    cli = parser.parse_args()
    device = get_device("auto")
    gpu = device.type == "cuda"
    small = cli.small or not gpu
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["FASHION_MNIST_DIR"] = str(resolve_data_dir(cli.data).resolve())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    rows: list[tuple[str, str, str]] = []

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        root = project_copy(Path(folder) / "project", SMALL if small else {})
        for stage in STAGES:
            _, seconds = sh(["dvc", "repro", "-s", stage], root, env)
            rows.append((f"dvc repro -s {stage}", f"{seconds:.1f} s", ""))
        first_training = json.loads((root / "metrics" / "train.json").read_text())
        epochs = yaml.safe_load((root / "params.yaml").read_text())["epochs"]
        trained = f"{training_run_seconds(root):.1f} s"
        rows.append((f"train: {epochs} epochs (MLflow run)", trained, TARGETS["train_s"][0]))
        for precision in ("fp32", "bf16"):
            for batch in (128, 512):
                speed = throughput(env, str(device), precision, batch, small)
                target = TARGETS["images_per_s_512"][0] if batch == 512 else ""
                rows.append((f"train images/s, {precision}, batch {batch}", f"{speed:,.0f}", target))
        syncs, steps = syncs_in_one_epoch(root, device)
        what = "syncs" if gpu else "host-data tensors (GPU copies)"
        rows.append((f"{what} in one epoch of {steps} steps", str(syncs), "~steps/20 + 1"))
        logged, served = log_and_serve(root, env)
        rows.append(("log decoder + encoder to MLflow", f"{logged:.1f} s", ""))
        rows.append(("mlflow models serve: first answer", f"{served:.1f} s", ""))
        trials, seconds = sweep(root, env, small, gpu)
        target = TARGETS["sweep_s"][0] if trials == 16 else ""
        rows.append((f"sweep of {trials} configs, gpu {0.25 if gpu else 0} each", f"{seconds:.1f} s", target))
        rows.append(("  trials per hour", f"{trials * 3600 / seconds:,.0f}", ""))
        spread = same_seed_spread(root, env, first_training)
        rows.append(("same-seed spread (train.json, relative)", f"{spread:.2e}", ""))

    name = torch.cuda.get_device_name(device) if gpu else "CPU figures, not a GPU's"
    driver = ""
    if gpu:
        from vae.utils import nvml_driver_version

        driver = f", driver {nvml_driver_version()}"
    print(f"gpu_check: {device} ({name}{driver}), torch {torch.__version__}, {'small' if small else 'full'} sizes")
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'measured':>14}  target (H100/H200)")
    for step, measured, target in rows:
        print(f"{step:<{width}}  {measured:>14}  {target}".rstrip())


if __name__ == "__main__":
    run_command("gpu_check", main)
