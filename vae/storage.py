"""Files the pipeline writes and reads back: prepared data sets and model checkpoints.

Everything is written atomically (a temporary file in the same folder, then a
rename), so an interrupted write never leaves a half-written file behind, and
read with ``torch.load(weights_only=True)``, which never unpickles code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vae.data import CLASS_NAMES, FASHION_MNIST, DataError, ImageSplit
from vae.errors import UserError
from vae.faults import name_the_file
from vae.model import IMAGE_SIZE, VAE


class CheckpointError(UserError, ValueError):
    """A model file that cannot be used; the message names the file."""


def update_digest(digest: Any, path: Path | str) -> Any:
    """Feed the bytes of ``path`` to a hashlib ``digest``, 1 MiB at a time; returns the digest."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest


def file_md5(path: Path | str) -> str:
    """MD5 of a file's bytes, as hex: the name DVC gives the file in its cache."""
    return update_digest(hashlib.md5(), path).hexdigest()


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Cut short (a kill, a full disk, a folder that cannot be written), it leaves the previous file or none,
    never half of one, and the temporary file is removed; a disk fault's error names ``path``
    (:func:`vae.faults.name_the_file`), whatever file object the writer held.
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        # mkstemp makes the file private (0600); give it the permissions an ordinary open() would
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb") as written:  # on disk before the rename, so a power cut cannot expose an empty file
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        name_the_file(err, path)
        raise


def remove_stale_temporaries(path: Path | str) -> None:
    """Delete the temporary files that writes of ``path`` left behind when their process was killed."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    """``torch.save`` through :func:`atomic_write`, byte for byte the same for the same ``obj``.

    ``torch.save`` to a *path* names the archive inside the file after that path,
    here a random temporary name, so equal tensors would give different bytes and
    DVC would take every rerun for new data; saved through a file object, the
    archive's name is fixed.
    """

    def save(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            torch.save(obj, handle)

    atomic_write(path, save)


def _torch_load(path: Path, error: type[ValueError], what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except Exception as err:  # torch.load raises many types (UnpicklingError, KeyError, RuntimeError…)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first_line = first_line.split(". ")[0]  # torch appends paragraphs of advice after the cause
        raise error(
            f"{path}: not a readable {what} (truncated, corrupt or not saved by this project: {first_line[:200]})"
        ) from None


# --- prepared data sets -------------------------------------------------------------------------


def save_prepared(split: ImageSplit, path: Path | str) -> None:
    """Save uint8 images (N, C, 32, 32), int64 labels (N,) and what they are as one tensor file.

    The file holds ``images`` and ``labels``, and, for any data but Fashion-MNIST's, ``dataset``,
    ``class_names``, ``source`` and ``source_digest`` (:class:`vae.data.ImageSplit`). Fashion-MNIST's
    files hold the two tensors alone, as they did before other data sets: byte for byte the same
    files, the same MD5s in dvc.lock.
    """
    if split.images.dtype != torch.uint8:
        raise TypeError(f"prepared images must be uint8, got {split.images.dtype}")
    # copies: torch.save writes a view's whole storage, so data.train_limit's slice would save every image
    images, labels = (t.clone(memory_format=torch.contiguous_format) for t in (split.images, split.labels))
    blob: dict[str, Any] = {"images": images, "labels": labels}
    if split.dataset != FASHION_MNIST or split.class_names != CLASS_NAMES:
        blob |= {
            "dataset": split.dataset,
            "class_names": list(split.class_names),
            "source": split.source,
            "source_digest": split.source_digest,
        }
    atomic_torch_save(blob, path)


def load_prepared(path: Path | str) -> ImageSplit:
    """Load a file written by :func:`save_prepared`: uint8 images (N, C, 32, 32) with C = 1 or 3, int64
    labels (N,), and what they are (a file without a description is Fashion-MNIST's).

    Raises:
        DataError: missing, corrupt, or tensors of the wrong shape/dtype; names the file.
    """
    path = Path(path)
    blob = _torch_load(path, DataError, "prepared data file (run the prepare stage: dvc repro prepare)")
    images = blob.get("images") if isinstance(blob, dict) else None
    labels = blob.get("labels") if isinstance(blob, dict) else None
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{path}: prepared data file must hold 'images' and 'labels' tensors")
    shape = tuple(images.shape[1:]) if images.dim() == 4 else ()
    if images.dtype != torch.uint8 or shape not in ((1, IMAGE_SIZE, IMAGE_SIZE), (3, IMAGE_SIZE, IMAGE_SIZE)):
        raise DataError(
            f"{path}: images must be uint8 of shape (N, 1 or 3, {IMAGE_SIZE}, {IMAGE_SIZE}), "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dim() != 1 or len(labels) != len(images) or len(images) == 0:
        raise DataError(f"{path}: {tuple(labels.shape)} labels for {len(images)} images")
    class_names = tuple(blob.get("class_names", CLASS_NAMES))
    if labels.dtype != torch.int64 or int(labels.min()) < 0 or int(labels.max()) >= len(class_names):
        raise DataError(f"{path}: labels must be int64 class indices 0..{len(class_names) - 1}")
    description = {key: blob[key] for key in ("dataset", "source", "source_digest") if key in blob}
    return ImageSplit(images, labels, class_names, **description)


# --- model checkpoints --------------------------------------------------------------------------


def save_model(model: VAE, path: Path | str, **extra: Any) -> None:
    """Save the state dict and the config needed to rebuild the model (plus ``extra`` entries)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"config": model.config, "state_dict": state, **extra}, path)


def load_model(
    path: Path | str,
    device: torch.device | str = "cpu",
    expected_latent_dim: int | None = None,
    expected_channels: int | None = None,
) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the model saved by :func:`save_model`; returns ``(model in eval mode, whole checkpoint)``.

    The weights come back in channels-last layout, which lets oneDNN and cuDNN use
    their faster NHWC kernels (decoding is about twice as fast on a CPU); the
    numbers are the same up to float rounding.

    Raises:
        CheckpointError: not a checkpoint, truncated, or built for another
            ``latent_dim`` than ``expected_latent_dim`` or for images of other than
            ``expected_channels`` channels (the data's); names the file.
    """
    path = Path(path)
    blob = _torch_load(path, CheckpointError, "model checkpoint")
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict) or "state_dict" not in blob:
        raise CheckpointError(f"{path}: not a model checkpoint of this project (no 'config' and 'state_dict')")
    config = blob["config"]
    if expected_latent_dim is not None and config.get("latent_dim") != expected_latent_dim:
        raise CheckpointError(
            f"{path}: model was built for latent_dim={config.get('latent_dim')}, "
            f"params.yaml asks for latent_dim={expected_latent_dim}; retrain it (dvc repro)"
        )
    channels = config.get("input_channels", 1)
    if expected_channels is not None and channels != expected_channels:
        kinds = {1: "gray (1 channel)", 3: "colour (3 channels)"}
        raise CheckpointError(
            f"{path}: model was trained on {kinds.get(channels, f'{channels}-channel')} images, the prepared "
            f"data is {kinds.get(expected_channels, f'{expected_channels}-channel')}; retrain it (dvc repro)"
        )
    try:
        model = VAE(**config)
        model.load_state_dict(blob["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(err).splitlines()[0][:200]})") from None
    return model.to(device, memory_format=torch.channels_last).eval(), blob
