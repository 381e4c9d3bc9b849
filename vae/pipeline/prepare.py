"""Stage prepare: find Fashion-MNIST, pad it to 32×32 and save both splits as uint8 tensor files.

Later stages read these files and never decode IDX or transform images again.
"""

from __future__ import annotations

from vae.config import load_params
from vae.data import read_split, resolve_data_dir
from vae.pipeline import paths
from vae.storage import save_prepared


def main() -> None:
    params = load_params(paths.PARAMS)
    source = resolve_data_dir()
    limits = {"train": params.data.train_limit, "test": params.data.test_limit}
    outputs = {"train": paths.PREPARED_TRAIN, "test": paths.PREPARED_TEST}
    for split, limit in limits.items():
        data = read_split(source, split, limit)
        save_prepared(data, outputs[split])
        print(f"prepare: {split}: {len(data)} images of shape {tuple(data.images.shape[1:])} → {outputs[split]}")
    print(f"prepare: source {source.resolve()}")
