"""Stage prepare: find Fashion-MNIST, pad it to 32×32, carve the validation split, save uint8 tensor files.

Later stages read these files and never decode IDX or transform images again:
``train.pt`` (what training fits), ``val.pt`` (what every choice is made on; absent
when data.val_size is 0) and ``test.pt`` (read by the evaluate stage alone, to report).
"""

from __future__ import annotations

from vae.config import ParamsError, load_params
from vae.data import DataError, FashionMNISTSplit, read_split, resolve_data_dir, split_validation
from vae.pipeline import paths
from vae.storage import save_prepared


def main() -> None:
    params = load_params(paths.PARAMS)
    source = resolve_data_dir()
    train = read_split(source, "train")
    splits = {}
    if params.data.val_size:
        # carved from all 60,000 before train_limit, so validation stays the same images whatever
        # train_limit an experiment sets, and their validation metrics compare
        try:
            train, splits[paths.PREPARED_VAL] = split_validation(train, params.data.val_size, params.data.val_seed)
        except DataError as err:
            raise ParamsError(f"{paths.PARAMS}: {err}") from None
    limit = params.data.train_limit
    splits[paths.PREPARED_TRAIN] = FashionMNISTSplit(train.images[:limit], train.labels[:limit])
    splits[paths.PREPARED_TEST] = read_split(source, "test", params.data.test_limit)
    paths.PREPARED_VAL.unlink(missing_ok=True)  # outside DVC (python stages/prepare.py), none from an earlier run
    for output, data in splits.items():
        save_prepared(data, output)
        print(f"prepare: {output.stem}: {len(data)} images of shape {tuple(data.images.shape[1:])} → {output}")
    print(f"prepare: source {source.resolve()}")
