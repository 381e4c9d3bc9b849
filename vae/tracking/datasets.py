"""The prepared data a run read, recorded as MLflow datasets (name, schema, source, digest)."""

from __future__ import annotations

import warnings
from pathlib import Path

from vae.data import FashionMNISTSplit
from vae.storage import file_md5


def log_dataset(split: FashionMNISTSplit, path: Path, context: str) -> None:
    """Record in the active run that it read the prepared ``split`` from ``path``, as ``context``.

    ``context`` is ``"training"``, ``"validation"`` or ``"testing"``. MLflow keeps the dataset's
    name, schema and shape (images (N, 1, 32, 32) uint8, labels (N,)), its
    source file and a digest of the whole file (MLflow's own digest reads only
    the first rows): runs on different data never share a digest.
    """
    import mlflow

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path matches both
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            split.images.numpy(),
            targets=split.labels.numpy(),
            source=str(path.resolve()),
            name=f"fashion-mnist-{path.stem}",
            digest=file_md5(path),
        )
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as err:
        # two queued experiments logging the same data at once race on a server's dataset table
        # (PostgreSQL: "duplicate key value violates unique constraint dataset_pk"); the row the other
        # one wrote is the same dataset, so once it exists, linking to it succeeds
        if "duplicate key" not in str(err) and "UNIQUE constraint" not in str(err):
            raise
        mlflow.log_input(dataset, context=context)
