"""``python -m vae.sweep SWEEP.yaml``: a search over params.yaml keys on Ray Tune, tracked in MLflow.

    python -m vae.sweep sweeps/beta_latent.yaml                    # Ray on this machine
    RAY_ADDRESS=head-node:6379 python -m vae.sweep sweeps/beta_latent.yaml  # an existing Ray cluster
    python -m vae.sweep sweeps/beta_latent.yaml --run-best         # then reproduce the best with DVC

Needs the prepared data and the classifier (`dvc repro classifier`). Every trial
trains and evaluates as the DVC stages do and is an MLflow child run of one
sweep run; the end prints the trials best first and the `dvc exp run -S … -n …`
command that makes the best a versioned DVC experiment. The logic lives in
:mod:`vae.sweep.tune`, :mod:`vae.sweep.trial` and :mod:`vae.sweep.spec`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vae.errors import run_command
from vae.faults import Rerun
from vae.tracking.store import sqlite_file


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vae.sweep", description=__doc__.split("\n")[0].strip("`: "))
    parser.add_argument("sweep", type=Path, help="the sweep file, e.g. sweeps/beta_latent.yaml")
    parser.add_argument("--address", help="a Ray cluster to join (default: RAY_ADDRESS, else Ray on this machine)")
    parser.add_argument(
        "--storage", type=Path, help="where Tune keeps trial checkpoints; shared by every node (default: ray_results/)"
    )
    parser.add_argument("--run-best", action="store_true", help="run the printed `dvc exp run` command at the end")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)

    def run() -> None:
        from vae.sweep.spec import SweepError, load_sweep  # after parsing: --help answers without torch

        sweep = load_sweep(args.sweep)  # every bad input fails here or in the checks, before any trial
        from vae.sweep import cluster

        address = cluster.ray_address(args.address)
        if address is None:
            cluster.keep_local_ray_on_loopback()  # before Ray is imported
        try:
            import optuna  # noqa: F401  (search: optuna)
            import ray.tune  # noqa: F401
        except ImportError as err:
            raise SweepError(
                f"Ray Tune or Optuna is not installed ({err}): pip install -c constraints.txt -e '.[sweep]'"
            ) from None
        from vae.sweep import tune as sweeping  # which imports Ray only inside its functions

        storage = (args.storage or sweeping.default_storage()).resolve()
        sweeping.run_sweep(sweep, address, storage, args.run_best)

    # run again, the same command continues the sweep where the fault stopped it, as after a kill
    again = Rerun(command=f"python -m vae.sweep {args.sweep}", batch_param="train.batch_size", store=sqlite_file)
    run_command("sweep", run, again)


if __name__ == "__main__":
    main()
