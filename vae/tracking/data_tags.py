"""Which data a run was trained on, as tags of its MLflow run: what compare and promote tell data apart by.

Every training, evaluate and generate run (and every sweep trial) is tagged ``dataset`` (data.dataset),
``input_channels`` and, for a folder of your own, ``dataset_source`` (the folder) and
``dataset_digest`` (an MD5 of its files). Runs from before these tags are Fashion-MNIST's, gray.
Needs neither torch nor MLflow: ``python -m vae.tracking.promote`` starts without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

DATASET_TAG = "dataset"
CHANNELS_TAG = "input_channels"
SOURCE_TAG = "dataset_source"
DIGEST_TAG = "dataset_digest"
UNTAGGED = "fashion-mnist"  # runs logged before the tags existed


def data_tags(dataset: str, channels: int, source: str = "", digest: str = "") -> dict[str, str]:
    """The tags of a run trained on ``dataset`` (``channels`` channels); ``source`` and ``digest`` for a folder."""
    tags = {DATASET_TAG: dataset, CHANNELS_TAG: str(channels)}
    if digest:
        tags |= {SOURCE_TAG: source, DIGEST_TAG: digest}
    return tags


def data_identity(tags: Mapping[str, str]) -> str:
    """What a run's tags say it was trained on: the data set's name, and for a folder its path (two folders
    are different data; a folder with a picture added is the same data, grown)."""
    name = tags.get(DATASET_TAG, UNTAGGED)
    source = tags.get(SOURCE_TAG)
    return f"{name} ({source})" if source else name


def mixed_data(labelled: Sequence[tuple[str, Mapping[str, str]]]) -> str | None:
    """Why trainings ``(label, tags)`` may not be ranked together, naming two on different data; None when
    all were trained on the same data."""
    first_label, first_tags = labelled[0] if labelled else ("", {})
    for label, tags in labelled[1:]:
        if data_identity(tags) != data_identity(first_tags):
            return (
                f"cannot rank trainings on different data together: {first_label} was trained on "
                f"{data_identity(first_tags)}, {label} on {data_identity(tags)}"
            )
    return None
