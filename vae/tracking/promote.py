"""``python -m vae.tracking.promote``: the alias ``champion`` on the best registered model by a β-independent metric.

    python -m vae.tracking.promote                          # by eval_val_iw_log_likelihood, higher is better
    python -m vae.tracking.promote --metric eval_val_nelbo  # lower is better

It chooses on the validation split; a test-set metric is refused (the test set only reports). Versions trained
on different data are not ranked together: ``--dataset cifar10`` ranks those of one.

Prints the candidates, best first, and the outcome; a second run with nothing
new changes nothing. Then ``mlflow.pytorch.load_model("models:/fashion-mnist-vae@champion")``
decodes, and ``mlflow models serve -m "models:/fashion-mnist-vae@champion"`` serves it.
The logic lives in :mod:`vae.tracking.registry`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vae.config import PARAMS_FILE, load_params
from vae.errors import run_command
from vae.faults import Rerun
from vae.tracking.registry import ALIAS, DEFAULT_METRIC, RegistryError, format_promotion, promote, ranking_metrics
from vae.tracking.store import check_tracking_store, sqlite_file


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vae.tracking.promote", description=__doc__.split("\n")[0].strip("`: ")
    )
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"what to rank by: {ranking_metrics()}")
    parser.add_argument("--name", help="the registered model (default: mlflow.registered_model in params.yaml)")
    parser.add_argument("--alias", default=ALIAS, help=f"the alias to move (default: {ALIAS})")
    parser.add_argument(
        "--dataset", help="rank only the versions trained on this data set (needed when they differ), e.g. cifar10"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)

    def run() -> None:
        import mlflow

        name = args.name or load_params(PARAMS_FILE).mlflow.registered_model
        if not name:
            raise RegistryError(f"{PARAMS_FILE}: mlflow.registered_model is null; pass --name")
        mlflow.set_tracking_uri(check_tracking_store())
        print(format_promotion(promote(name, args.metric, args.alias, args.dataset), args.alias))

    run_command("promote", run, Rerun(command="python -m vae.tracking.promote", store=sqlite_file))


if __name__ == "__main__":
    main()
