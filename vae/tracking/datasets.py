"""The prepared data a run read, recorded as MLflow datasets (name, schema, source, digest)."""

from __future__ import annotations

import warnings
from pathlib import Path

from vae.data import ImageSplit
from vae.storage import file_md5
from vae.tracking.data_tags import data_tags


def split_tags(split: ImageSplit) -> dict[str, str]:
    """The tags of a run that read ``split`` (:func:`vae.tracking.data_tags.data_tags`)."""
    return data_tags(split.dataset, split.channels, split.source, split.source_digest)


def log_dataset(split: ImageSplit, path: Path, context: str) -> None:
    """Record in the active run that it read the prepared ``split`` from ``path``, as ``context``.

    ``context`` is ``"training"``, ``"validation"`` or ``"testing"``. MLflow keeps the dataset's
    name, after its source and split (``fashion-mnist-train``, ``cifar10-val``, ``folder-test``), its
    schema and shape (images (N, C, 32, 32) uint8, labels (N,)), its source (the folder the images
    were read from, else the prepared file) and a digest of the whole prepared file (MLflow's own
    digest reads only the first rows): runs on different data never share a digest. A folder's own
    digest (of its files) is the runs' ``dataset_digest`` tag (:mod:`vae.tracking.data_tags`).
    """
    import mlflow

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path matches both
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            split.images.numpy(),
            targets=split.labels.numpy(),
            source=split.source or str(path.resolve()),
            name=f"{split.dataset}-{path.stem}",
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
