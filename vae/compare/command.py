"""``python -m vae.compare EXP_OR_RUN …``: one self-contained HTML page comparing trainings.

    python -m vae.compare beta-10 beta-100 beta-500             # DVC experiments, by name
    python -m vae.compare 3f2a… 9c41…                           # training runs, by id
    python -m vae.compare SWEEP_PARENT_RUN_ID --out sweep.html --log  # a sweep's trials, logged to MLflow

Reads the tracking store the stages write to (MLFLOW_TRACKING_URI, else the project's
mlflow.db). The page needs no server and no network to open.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from vae.errors import run_command
from vae.faults import Rerun
from vae.tracking.store import sqlite_file


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vae.compare", description=__doc__.split("\n")[0].strip("`: "))
    parser.add_argument("names", nargs="+", help="DVC experiment names, training run ids or a sweep's parent run id")
    parser.add_argument("--out", type=Path, default=Path("compare.html"), help="the page (default: compare.html)")
    parser.add_argument("--log", action="store_true", help="also log the page to MLflow, in a run of its own")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)

    # three small downloads per training: MLflow's progress bars would bury the page's path
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def run() -> None:
        from vae.compare.page import write_page  # after parsing: --help answers without MLflow

        write_page(args.names, args.out, log=args.log)

    run_command("compare", run, Rerun(command="python -m vae.compare " + " ".join(args.names), store=sqlite_file))


if __name__ == "__main__":
    main()
