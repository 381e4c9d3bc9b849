"""The stages' result files: metrics as JSON, per-epoch history as CSV (what ``dvc metrics`` and ``dvc plots`` read)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from vae.storage import atomic_write


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
