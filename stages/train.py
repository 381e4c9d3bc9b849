"""Stage 2: train the VAE, evaluating on the test set after every epoch, and log it all to MLflow.

Killed or interrupted, it resumes after the last finished epoch when started again.
"""

import sys

from vae import paths
from vae.config import load_params
from vae.resume import STATE_FILE
from vae.stage import run_stage
from vae.storage import load_prepared
from vae.train_run import train_pipeline
from vae.utils import get_device


def main() -> None:
    params = load_params(paths.PARAMS)
    prepared = [paths.PREPARED_TRAIN, paths.PREPARED_TEST]
    train, test = (load_prepared(path) for path in prepared)
    try:
        train_pipeline(params, train, test, get_device(), prepared)
    except KeyboardInterrupt:
        print(
            f"\ntrain: interrupted; every finished epoch is saved in {STATE_FILE}. "
            "Run `dvc repro` (or `python stages/train.py`) to resume.",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    run_stage("train", main)
