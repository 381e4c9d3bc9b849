"""What every stage shares: one line on stderr for a user's mistake, and the JSON and CSV result files."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vae.errors import UserError
from vae.storage import atomic_write


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a user's mistake (:class:`~vae.errors.UserError`) ends it with one line
    on stderr and exit status 1. Any other exception is a bug and keeps its traceback.

    Output is line-buffered: Python block-buffers stdout into a file or pipe, which would hold
    every per-epoch line of ``dvc repro > run.log`` (or ``| tee``, or a CI log) until the stage ends.
    """
    sys.stdout.reconfigure(line_buffering=True)
    try:
        main()
    except UserError as err:
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
