"""Resumable training: a checkpoint of everything training needs, written atomically after every epoch.

The state holds the model and optimizer, the random generators (PyTorch's
global CPU one and the training GPU's, which draw the reparameterisation noise,
and the batch shuffler's), the finished epoch, the history so far and the MLflow run id. A
run started again with the same inputs picks up after the last finished epoch
and ends with the same numbers as an uninterrupted run; a run with other
inputs (any train param, the data) starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vae.storage import atomic_torch_save, remove_stale_temporaries, update_digest

STATE_FILE = Path("checkpoints") / "train_state.pt"


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block ends, then deliver it.

    For the end-of-epoch writes: a KeyboardInterrupt in the middle of an MLflow
    write leaves its SQLite store locked, and the run's own "failed" status
    update then dies with a traceback. A no-op outside the main thread, where
    Python delivers no signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)  # to the handler that was there before


@dataclass
class TrainState:
    fingerprint: str
    epoch: int  # the last finished epoch (1-based)
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    history: dict[str, list[float]]
    run_id: str
    scheduler: dict[str, Any] | None = None  # the lr schedule's state, where there is one


def fingerprint(settings: dict[str, Any], files: list[Path]) -> str:
    """A digest of the settings and the bytes of ``files``: equal digests mean the same training run."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        update_digest(digest, path)
    return digest.hexdigest()


def rng_state(shuffler: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The generators a resumed run needs: PyTorch's CPU one, the shuffler's and, when training on a GPU,
    that GPU's (the reparameterisation noise is drawn there); not every visible GPU's by index, which
    would not fit a machine or ``CUDA_VISIBLE_DEVICES`` with fewer GPUs at resume."""
    state = {"torch": torch.get_rng_state(), "shuffler": shuffler.get_state()}
    if device.type == "cuda":
        state["device"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], shuffler: torch.Generator, device: torch.device) -> None:
    """Put back what :func:`rng_state` saved; the training device's generator goes to ``device``, the GPU
    this run trains on, whichever index it had before."""
    torch.set_rng_state(state["torch"])
    shuffler.set_state(state["shuffler"])
    if device.type == "cuda" and "device" in state:
        torch.cuda.set_rng_state(state["device"], device)


def save_state(state: TrainState, path: Path = STATE_FILE) -> None:
    """Write the state atomically: a kill at any moment leaves the previous state or the new one."""
    atomic_torch_save(state.__dict__, path)


def load_state(expected_fingerprint: str, path: Path = STATE_FILE) -> tuple[TrainState | None, str]:
    """The saved state when it belongs to this run, else None; plus a line saying which and why."""
    remove_stale_temporaries(path)  # a run killed while saving leaves one; the previous state is intact
    if not path.exists():
        return None, "starting from epoch 1"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = TrainState(**blob)
    except Exception as err:  # unreadable: training from scratch loses nothing that was finished
        return None, f"ignoring unreadable {path} ({type(err).__name__}); starting from epoch 1"
    if state.fingerprint != expected_fingerprint:
        return None, f"{path} is from a run with other params or data; starting from epoch 1"
    return state, f"resuming after epoch {state.epoch} from {path}"


def saved_epoch(path: Path = STATE_FILE) -> int:
    """The last epoch the state at ``path`` holds; 0 when there is none (or it cannot be read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # missing or unreadable: a rerun starts from epoch 1
        return 0


def clear_state(path: Path = STATE_FILE) -> None:
    path.unlink(missing_ok=True)
