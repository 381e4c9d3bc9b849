"""Stage prepare: read the data set (data.dataset, data.dir), make it 32×32 with data.channels channels, carve
the validation split, save uint8 tensor files.

The only stage that decodes images: later stages read these files and never decode or transform
images again: ``train.pt`` (what training fits), ``val.pt`` (what every choice is made on; absent
when data.val_size is 0) and ``test.pt`` (read by the evaluate stage alone, to report).
"""

from __future__ import annotations

from vae.config import ParamsError, load_params
from vae.data import DataError, read_dataset, split_validation
from vae.faults import Rerun
from vae.pipeline import paths
from vae.storage import save_prepared

# what the prepare stage says after a fault of the machine (vae.faults)
RERUN = Rerun()


def main() -> None:
    params = load_params(paths.PARAMS)
    data = params.data
    train, test, skipped = read_dataset(data.dataset, data.dir, data.channels, data.test_size)
    if skipped:
        shown = ", ".join(str(path) for path in skipped[:3]) + (", …" if len(skipped) > 3 else "")
        print(f"prepare: skipped {len(skipped)} file(s) without an image extension: {shown}")
    splits = {}
    if data.val_size:
        # carved from all the training images before train_limit, so validation stays the same images
        # whatever train_limit an experiment sets, and their validation metrics compare
        try:
            train, splits[paths.PREPARED_VAL] = split_validation(train, data.val_size, data.val_seed)
        except DataError as err:
            raise ParamsError(f"{paths.PARAMS}: {err}") from None
    splits[paths.PREPARED_TRAIN] = train.subset(slice(None, data.train_limit))
    splits[paths.PREPARED_TEST] = test.subset(slice(None, data.test_limit))
    paths.PREPARED_VAL.unlink(missing_ok=True)  # outside DVC (python stages/prepare.py), none from an earlier run
    for output, split in splits.items():
        save_prepared(split, output)
        shape = "×".join(map(str, split.images.shape[1:]))
        print(f"prepare: {output.stem}: {len(split)} images of {shape} in {len(split.class_names)} classes → {output}")
    print(f"prepare: {train.dataset} from {train.source}")
