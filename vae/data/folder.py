"""A folder of your own images, in torchvision's ``ImageFolder`` layout: ``DIR/CLASS/*.png|jpg|…``.

- **Classes** are the sub-folders of ``DIR``, sorted by name (``DIR/CLASS/`` may hold sub-folders of
  its own; their images belong to ``CLASS``). A file whose name has none of torchvision's image
  extensions (:data:`EXTENSIONS`) is skipped, as ``ImageFolder`` skips it, and counted in a line;
  one with an image extension that does not decode stops prepare with its path.
- **Splits**: ``DIR/train/CLASS/…`` and ``DIR/test/CLASS/…`` when both exist; else a stratified
  test split of ``data.test_size`` images (default one in seven, Fashion-MNIST's ratio), carved
  with a fixed seed (:data:`TEST_SEED`), so it is the same images on every machine.
- **Size**: any. Each image is made 32×32 once, here, as torchvision's ``Resize(32)`` then
  ``CenterCrop(32)`` do it: the shorter side scaled to 32 pixels (bilinear, antialiased), then the
  centre 32×32 kept.
- **Mode**: any Pillow reads. Gray images (modes ``1``, ``L``, ``LA``, ``I``, ``I;16``) stay
  gray; the rest become RGB (an alpha channel is dropped, a palette looked up). The folder's
  channels are 1 when every image is gray, else 3 (``data.channels: auto``; 1 or 3 converts, in
  :func:`vae.data.read_dataset`, as for every source).

The split's ``source_digest`` is an MD5 of every image's path (relative to ``DIR``) and bytes:
the folder's identity, recorded with the MLflow runs trained on it.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import torch

from vae.data.splits import IMAGE_SIZE, DataError, ImageSplit, stratified_split

NAME = "folder"
# torchvision.datasets.folder.IMG_EXTENSIONS, spelled out: importing torchvision costs 1.5 s
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
TEST_SEED = 0
TEST_FRACTION = 1 / 7  # Fashion-MNIST's: 10,000 of 70,000


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def find_classes(directory: Path) -> tuple[str, ...]:
    """The class names: ``directory``'s sub-folders, sorted (hidden ones left out, as git and DVC leave them).

    Raises:
        DataError: the folder is missing, or holds no sub-folder; names it and says the layout.
    """
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder (data.dir; expected {directory}/CLASS/IMAGE.png)")
    classes = tuple(sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        loose = any(_is_image(p) for p in directory.iterdir())
        hint = f"; one class? put them in a sub-folder, e.g. {directory}/all/" if loose else ""
        raise DataError(f"{directory}: no class folders (expected {directory}/CLASS/IMAGE.png{hint})")
    return classes


def list_images(directory: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int], list[Path]]:
    """Every image file under ``directory/CLASS/`` (sorted), its class index, and the files skipped.

    Raises:
        DataError: a class folder without images; names it.
    """
    files, labels, skipped = [], [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (directory / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in found if _is_image(p)]
        skipped += [p for p in found if not _is_image(p)]
        if not images:
            raise DataError(f"{directory / name}: no images ({', '.join(EXTENSIONS)}) in this class folder")
        files += images
        labels += [index] * len(images)
    return files, labels, skipped


def _shrink(image: object) -> object:
    """``image`` (a PIL image) made 32×32 as ``Resize(32)`` then ``CenterCrop(32)`` on it would."""
    from PIL import Image

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short != IMAGE_SIZE:
        scaled = int(IMAGE_SIZE * long / short)  # torchvision's rounding of the longer side
        size = (IMAGE_SIZE, scaled) if width <= height else (scaled, IMAGE_SIZE)
        image = image.resize(size, Image.Resampling.BILINEAR)
        width, height = image.size
    top, left = int(round((height - IMAGE_SIZE) / 2.0)), int(round((width - IMAGE_SIZE) / 2.0))
    return image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))


def decode(data: bytes, path: Path) -> np.ndarray:
    """One image file's bytes as 32×32 pixels: (32, 32) uint8 when gray, (32, 32, 3) when colour.

    Raises:
        DataError: not an image Pillow can read; names ``path``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float gray: to 8 bits
                pixels = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I") and pixels.max() > 255 else 255.0
                image = Image.fromarray(np.clip(pixels * 255.0 / top, 0, 255).round().astype(np.uint8), "L")
            elif image.mode in GRAY_MODES:
                image = image.convert("L")
            else:
                image = image.convert("RGB")
            return np.array(_shrink(image))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (Pillow recognises no image format in it)") from None
    except (OSError, ValueError, SyntaxError) as err:  # a known format, cut short or damaged
        raise DataError(f"{path}: a damaged image Pillow cannot decode ({err})") from None


def read_images(directory: Path, classes: tuple[str, ...]) -> tuple[list[np.ndarray], list[int], str, list[Path]]:
    """The decoded 32×32 images under ``directory`` (:func:`decode`), their labels, the digest of their
    files (paths relative to ``directory``, and bytes) and the files skipped."""
    files, labels, skipped = list_images(directory, classes)
    digest = hashlib.md5()
    pixels = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0" + len(data).to_bytes(8, "big"))
        digest.update(data)
        pixels.append(decode(data, path))
    return pixels, labels, digest.hexdigest(), skipped


def _stack(pixels: list[np.ndarray]) -> torch.Tensor:
    """Images (32, 32) or (32, 32, 3) as one uint8 tensor (N, C, 32, 32): C = 1 when every image is gray,
    else 3, the gray ones repeated into R, G and B (what ``data.channels: auto`` asks for)."""
    if all(image.ndim == 2 for image in pixels):
        return torch.from_numpy(np.stack(pixels)[:, None])
    colour = [np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image for image in pixels]
    return torch.from_numpy(np.stack(colour)).permute(0, 3, 1, 2).contiguous()


def read(directory: Path, test_size: int | None = None) -> tuple[ImageSplit, ImageSplit, list[Path]]:
    """The training and test splits of the folder ``directory`` (see the module docstring) in the data's
    own channels (1 when every image is gray, else 3), and the files skipped for their extension.

    Raises:
        DataError: a missing or empty folder, a class without images, a file that is not an image,
            a ``test_size`` no stratified split allows; each names the culprit.
    """
    train_dir, test_dir = directory / "train", directory / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        classes = find_classes(train_dir)
        test_classes = find_classes(test_dir)
        if unknown := sorted(set(test_classes) - set(classes)):
            raise DataError(f"{test_dir}: classes {', '.join(unknown)} have no training images in {train_dir}")
        train_pixels, train_labels, train_digest, skipped = read_images(train_dir, classes)
        test_pixels, test_labels, test_digest, skipped_test = read_images(test_dir, test_classes)
        test_labels = [classes.index(test_classes[label]) for label in test_labels]
        pixels, labels = train_pixels + test_pixels, train_labels + test_labels
        digest = hashlib.md5(f"{train_digest}{test_digest}".encode()).hexdigest()
        skipped += skipped_test
        rest, test = torch.arange(len(train_pixels)), torch.arange(len(train_pixels), len(pixels))
    else:
        classes = find_classes(directory)
        pixels, labels, digest, skipped = read_images(directory, classes)
        size = test_size if test_size is not None else max(len(classes), math.ceil(len(pixels) * TEST_FRACTION))
        rest, test = stratified_split(torch.tensor(labels), size, TEST_SEED, "data.test_size", "test")
    whole = ImageSplit(
        _stack(pixels), torch.tensor(labels, dtype=torch.int64), classes, NAME, str(directory.resolve()), digest
    )
    return whole.subset(rest), whole.subset(test), skipped
