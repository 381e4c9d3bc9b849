"""What every stage script shares: one-line errors for user mistakes, result files."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vae.classifier import ClassifierTooWeakError
from vae.config import ParamsError
from vae.data import DataError
from vae.storage import CheckpointError, atomic_write
from vae.tracking import TrackingError
from vae.trainer import NonFiniteLossError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError,
    DataError,
    CheckpointError,
    NonFiniteLossError,
    FileNotFoundError,
    TrackingError,
    ClassifierTooWeakError,
)


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a user mistake ends it with one line on stderr and exit status 1."""
    try:
        main()
    except USER_ERRORS as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(1)


def write_json(data: Mapping[str, float], path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(dict(data), indent=2) + "\n"))


def write_history_csv(history: Mapping[str, Sequence[float]], path: Path) -> None:
    """One row per epoch (numbered from 1) and one column per metric: what ``dvc plots`` draws."""
    keys = list(history)
    epochs = len(history[keys[0]]) if keys else 0

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", *keys])
            for i in range(epochs):
                writer.writerow([i + 1, *(f"{history[k][i]:.6g}" for k in keys)])

    atomic_write(path, write)
