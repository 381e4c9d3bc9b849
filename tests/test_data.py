import gzip
from pathlib import Path

import pytest
import torch
from conftest import idx_bytes, write_fashion_mnist

from vae.data import (
    CLASS_NAMES,
    ENV_VAR,
    DataError,
    ImageSplit,
    load_fashion_mnist,
    read_split,
    resolve_data_dir,
    split_validation,
)


def test_gzip_and_plain_files_read_identically(tmp_path: Path) -> None:
    gz = write_fashion_mnist(tmp_path / "gz", gz=True)
    plain = write_fashion_mnist(tmp_path / "plain", gz=False)
    for split in ("train", "test"):
        a, b = read_split(gz, split), read_split(plain, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_padding_shape_range_and_limit(tiny_idx_dir: Path) -> None:
    data = load_fashion_mnist("train", directory=tiny_idx_dir, limit=10)
    assert data.images.shape == (10, 1, 32, 32) and data.images.dtype == torch.float32
    assert data.labels.shape == (10,) and data.labels.dtype == torch.int64
    assert 0 <= data.images.min() and data.images.max() <= 1
    assert data.images[:, :, :2].abs().sum() == 0 and data.images[:, :, :, -2:].abs().sum() == 0
    raw = read_split(tiny_idx_dir, "train", limit=10)
    torch.testing.assert_close(data.images[:, :, 2:30, 2:30], raw.images[:, :, 2:30, 2:30].float() / 255)
    assert data.class_names == CLASS_NAMES and len(CLASS_NAMES) == 10


def test_padding_matches_torchvision_transforms(tiny_idx_dir: Path) -> None:
    from PIL import Image
    from torchvision import transforms

    raw = read_split(tiny_idx_dir, "test", limit=3)
    ours = load_fashion_mnist("test", directory=tiny_idx_dir, limit=3).images
    pipeline = transforms.Compose([transforms.Pad(2), transforms.ToTensor()])
    for i in range(3):
        pil = Image.fromarray(raw.images[i, 0, 2:30, 2:30].numpy(), mode="L")
        torch.testing.assert_close(ours[i], pipeline(pil))


def test_env_var_is_used(tiny_idx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tiny_idx_dir))
    assert resolve_data_dir() == tiny_idx_dir
    assert len(load_fashion_mnist("test")) == 32


def test_a_relative_env_var_is_relative_to_the_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_fashion_mnist(tmp_path / "shared" / "data" / "fashion-mnist")
    project = tmp_path / "main"
    (project / ".dvc" / "tmp" / "exps" / "run").mkdir(parents=True)
    monkeypatch.setenv(ENV_VAR, "../shared/data/fashion-mnist")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(project)  # `dvc repro`, `python -m vae.example`: the working directory
    assert resolve_data_dir().resolve() == data.resolve()
    # a queued experiment: DVC runs the stage in a temporary copy and names the project in DVC_ROOT
    monkeypatch.chdir(project / ".dvc" / "tmp" / "exps" / "run")
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert resolve_data_dir().resolve() == data.resolve()
    monkeypatch.setenv(ENV_VAR, "../elsewhere")
    with pytest.raises(DataError, match=r"from FASHION_MNIST_DIR=\.\./elsewhere, relative to the project root .*main"):
        resolve_data_dir()


def test_wrong_magic_names_the_file(tiny_idx_dir: Path) -> None:
    path = tiny_idx_dir / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + bytes(100))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*magic"):
        read_split(tiny_idx_dir, "train")


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    folder = write_fashion_mnist(tmp_path / "d", gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*truncated"):
        read_split(folder, "test")


def test_corrupt_gzip_names_the_file(tiny_idx_dir: Path) -> None:
    path = tiny_idx_dir / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        read_split(tiny_idx_dir, "test")


def test_wrong_image_shape_names_the_file(tiny_idx_dir: Path) -> None:
    import numpy as np

    (tiny_idx_dir / "t10k-images-idx3-ubyte.gz").unlink()
    (tiny_idx_dir / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((32, 30, 30), dtype=np.uint8)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*28×28"):
        read_split(tiny_idx_dir, "test")


def test_missing_data_error_lists_files_and_remedies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        load_fashion_mnist("train")
    message = str(err.value)
    assert "nowhere" in message and "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert ENV_VAR in message and "data.dir" in message


def test_offline_default_folder_says_download_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vae.data.idx

    def offline(directory: Path, spec: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vae.data.idx, "_download", offline)
    with pytest.raises(DataError, match=r"download failed.*missing train-images-idx3-ubyte"):
        resolve_data_dir()


def test_torchvision_layout_is_found(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert len(read_split(tmp_path, "train")) == 64


def test_real_data_sizes(real_data_dir: Path) -> None:
    test = read_split(real_data_dir, "test")
    assert test.images.shape == (10_000, 1, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def _numbered(n: int) -> ImageSplit:
    """``n`` images whose first pixels spell their index, labels 0..9 in turn: each image is unique."""
    images = torch.zeros(n, 1, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = torch.arange(n) % 256, torch.arange(n) // 256
    return ImageSplit(images, torch.arange(n) % 10)


def _index(split: ImageSplit) -> list[int]:
    return (split.images[:, 0, 0, 0].long() + 256 * split.images[:, 0, 0, 1].long()).tolist()


def test_the_validation_split_is_disjoint_stratified_ordered_and_seeded() -> None:
    data = _numbered(1000)
    rest, val = split_validation(data, 200, seed=0)
    assert sorted(_index(rest) + _index(val)) == list(range(1000))  # every image on exactly one side
    assert _index(val) == sorted(_index(val)) and _index(rest) == sorted(_index(rest))  # the original order
    assert torch.bincount(val.labels).tolist() == [20] * 10  # each class its share
    assert torch.equal(val.labels, data.labels[_index(val)])  # labels stay with their images
    again, other = split_validation(data, 200, seed=0)[1], split_validation(data, 200, seed=1)[1]
    assert _index(again) == _index(val) and _index(other) != _index(val)


@pytest.mark.parametrize("size", [5, 995, 1000])
def test_a_validation_size_no_stratified_split_allows_is_named(size: int) -> None:
    with pytest.raises(DataError, match=rf"^data.val_size = {size}: a stratified split of 1000 images in 10 classes"):
        split_validation(_numbered(1000), size, seed=0)


def test_the_real_validation_split(real_data_dir: Path) -> None:
    rest, val = split_validation(read_split(real_data_dir, "train"), 5000, seed=0)
    assert len(rest) == 55_000 and torch.bincount(val.labels).tolist() == [500] * 10
