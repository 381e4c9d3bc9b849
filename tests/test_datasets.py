"""Every source of vae.data reads its native format into the one contract, and channels reach every model.

The files are tiny ones the tests write in each native format (tests/datasets.py): IDX in
torchvision's raw layouts, CIFAR-10's pickled batches, folders of PNG and JPEG files of mixed sizes
and modes, and scikit-learn's real 8×8 digits as a folder.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_fashion_mnist
from datasets import write_cifar10, write_digits_folder, write_mixed_folder
from PIL import Image

from vae import fast_cpu
from vae.classifier import ImageClassifier, accuracy_floor, features, load_classifier, save_classifier
from vae.data import DATASETS, DataError, ImageSplit, read_dataset, to_channels
from vae.data.folder import TEST_SEED
from vae.generator import grid_picture
from vae.loss import vae_loss_from_logits
from vae.model import VAE
from vae.storage import CheckpointError, load_model, load_prepared, save_model, save_prepared
from vae.trainer import configure_performance
from vae.utils import batch_images


@pytest.mark.parametrize(("dataset", "layout"), [("mnist", "MNIST/raw"), ("kmnist", "KMNIST/raw"), ("mnist", "")])
def test_mnist_and_kmnist_read_torchvisions_raw_layout_or_the_files_directly(
    tmp_path: Path, dataset: str, layout: str
) -> None:
    write_fashion_mnist(tmp_path / layout, n_train=40, n_test=20)
    train, test, _ = read_dataset(dataset, tmp_path)
    assert train.images.shape == (40, 1, 32, 32) and test.images.shape == (20, 1, 32, 32)
    assert train.images[:, :, :2].sum() == 0 and train.images[:, :, :, -2:].sum() == 0  # 28 → 32, padded
    assert train.dataset == dataset and len(train.class_names) == 10
    assert train.class_names[0] == ("0 - zero" if dataset == "mnist" else "o")  # torchvision's .classes


def test_cifar10_reads_the_pickled_batches_as_their_authors_wrote_them(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=6, n_test=10)
    train, test, _ = read_dataset("cifar10", tmp_path)  # the parent of cifar-10-batches-py, as torchvision's root
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert train.dataset == "cifar10" and train.class_names[:2] == ("airplane", "automobile")
    batch = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_2").read_bytes(), encoding="latin1")
    # row 3072: the red plane, then green, then blue, each 32 rows of 32: (3, 32, 32) as it is
    assert torch.equal(train.images[6], torch.from_numpy(batch["data"][0].reshape(3, 32, 32)))
    assert train.labels[6:12].tolist() == batch["labels"]
    same, _, _ = read_dataset("cifar10", tmp_path / "cifar-10-batches-py")  # or the folder itself
    assert torch.equal(same.images, train.images)


def test_a_cifar_batch_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR-10 batch"):
        read_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_a_folder_of_mixed_sizes_and_modes_is_colour_32x32_and_split_by_class(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path / "pets", per_class=14)
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("skipped, as ImageFolder skips it")
    train, test, skipped = read_dataset("folder", tmp_path / "pets")
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8  # some are RGB: auto is 3
    assert train.class_names == ("cat", "dog") and [p.name for p in skipped] == ["notes.txt"]
    assert len(test) == 4 and test.labels.bincount().tolist() == [2, 2]  # one in seven, stratified
    assert len(train) + len(test) == 28 and train.source_digest == test.source_digest != ""
    again, _, _ = read_dataset("folder", tmp_path / "pets")  # a fixed seed: the same split everywhere
    assert torch.equal(again.images, train.images) and TEST_SEED == 0


def test_a_folder_image_is_made_32x32_as_torchvisions_resize_and_centre_crop(tmp_path: Path) -> None:
    from torchvision import transforms

    folder = tmp_path / "one" / "only"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, size=(75, 100, 3), dtype=np.uint8), "RGB")
    picture.save(folder / "a.png")
    picture.save(folder / "b.png")
    train, test, _ = read_dataset("folder", tmp_path / "one", test_size=1)
    expected = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.PILToTensor()])
    assert torch.equal(train.images[0], expected(picture))


def test_gray_digits_are_one_channel_and_channels_convert_by_luma(tmp_path: Path) -> None:
    write_digits_folder(tmp_path / "digits", limit=140)
    train, test, _ = read_dataset("folder", tmp_path / "digits")
    assert train.images.shape[1] == 1 and len(train.class_names) == 10  # every image gray: auto is 1
    rgb, _, _ = read_dataset("folder", tmp_path / "digits", channels=3)
    assert rgb.images.shape[1] == 3 and torch.equal(rgb.images[:, 1:2], train.images)
    colour, _, _ = read_dataset("folder", write_mixed_folder(tmp_path / "pets"), channels=1)
    pil = Image.fromarray(colour.images[0, 0].numpy())  # the luma of the colour image, as convert("L") gives
    source, _, _ = read_dataset("folder", tmp_path / "pets")
    expected = Image.fromarray(source.images[0].permute(1, 2, 0).numpy(), "RGB").convert("L")
    assert np.array_equal(np.asarray(pil), np.asarray(expected))
    assert torch.equal(to_channels(to_channels(train.images, 3), 1), train.images)


def test_a_folder_with_train_and_test_uses_them(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path / "data" / "train", per_class=5)
    write_mixed_folder(tmp_path / "data" / "test", per_class=2, seed=1)
    train, test, _ = read_dataset("folder", tmp_path / "data")
    assert (len(train), len(test)) == (10, 4) and test.labels.tolist() == [0, 0, 1, 1]


def test_the_data_sets_of_params_yaml_are_the_readers() -> None:
    assert DATASETS == ("fashion-mnist", "mnist", "kmnist", "cifar10", "folder")
    with pytest.raises(DataError, match="choose one of fashion-mnist, mnist, kmnist, cifar10, folder"):
        read_dataset("imagenet")


def test_a_prepared_colour_split_keeps_what_it_is_and_fashion_mnist_files_keep_their_bytes(tmp_path: Path) -> None:
    images, labels = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), torch.arange(6) % 3
    split = ImageSplit(images, labels, ("a", "b", "c"), "folder", "/data/pets", "f" * 32)
    save_prepared(split, tmp_path / "rgb.pt")
    back = load_prepared(tmp_path / "rgb.pt")
    assert (back.dataset, back.source, back.source_digest) == ("folder", "/data/pets", "f" * 32)
    assert torch.equal(back.images, images) and back.class_names == ("a", "b", "c") and back.channels == 3
    gray = ImageSplit(images[:, :1].contiguous(), labels)
    save_prepared(gray, tmp_path / "gray.pt")
    assert set(torch.load(tmp_path / "gray.pt", weights_only=True)) == {"images", "labels"}  # as before
    assert load_prepared(tmp_path / "gray.pt").dataset == "fashion-mnist"


def test_a_checkpoint_of_the_other_channel_count_is_one_line(tmp_path: Path) -> None:
    save_model(VAE(latent_dim=2, input_channels=3), tmp_path / "vae.pth")
    model, blob = load_model(tmp_path / "vae.pth", expected_channels=3)
    assert model.input_channels == 3 and blob["config"]["input_channels"] == 3
    with pytest.raises(CheckpointError, match=r"trained on colour \(3 channels\) images, the prepared data is gray"):
        load_model(tmp_path / "vae.pth", expected_channels=1)


def test_the_cpu_fast_path_computes_the_plain_models_loss_at_three_channels() -> None:
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    plain = VAE(latent_dim=2, input_channels=3)
    fast = fast_cpu.enable(configure_performance(cpu, VAE(latent_dim=2, input_channels=3)))
    fast.load_state_dict(plain.state_dict())
    x = batch_images(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), cpu)
    results = []
    for model in (plain, fast):
        torch.manual_seed(1)
        logits, mu, logvar = model.forward_logits(x)
        assert logits.shape == (16, 3, 32, 32)
        results.append(vae_loss_from_logits(logits, x, mu, logvar, beta=500.0))
    torch.testing.assert_close(results[1].total, results[0].total, rtol=1e-5, atol=1e-5)


def test_the_classifier_takes_the_datas_channels_and_classes(tmp_path: Path) -> None:
    classifier = ImageClassifier(num_classes=4, in_channels=3)
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert features(classifier, torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)).shape == (5, 128)
    save_classifier(classifier, tmp_path / "c.pth")
    assert load_classifier(tmp_path / "c.pth", expected_channels=3).config == {"num_classes": 4, "in_channels": 3}
    with pytest.raises(CheckpointError, match="3-channel images, the prepared data has 1"):
        load_classifier(tmp_path / "c.pth", expected_channels=1)
    # only a floor measured is a floor: Fashion-MNIST's; the others have none unless one is set
    assert accuracy_floor("auto", "fashion-mnist") == 0.88
    assert accuracy_floor("auto", "cifar10") is None and accuracy_floor(0.5, "cifar10") == 0.5


def test_colour_pictures_are_rgb_and_gray_ones_stay_gray() -> None:
    assert grid_picture(torch.rand(4, 3, 32, 32), 2).shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    assert grid_picture(torch.rand(4, 1, 32, 32), 2).shape == (70, 70)


def test_a_colour_models_epoch_pictures_and_served_signature_are_three_channel(tmp_path: Path) -> None:
    """What MLflow shows of a CIFAR-10 training: RGB pictures every epoch, and a decoder whose signature
    says (N, 3, 32, 32), as `mlflow models serve` enforces it."""
    import mlflow

    from vae.config import load_params
    from vae.tracking.epoch_images import EpochImages
    from vae.tracking.logged_models import log_models

    model = VAE(latent_dim=2, input_channels=3).eval()
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    pictures = EpochImages.for_run(params, torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)).render(model)
    assert all(picture.ndim == 3 and picture.shape[2] == 3 for picture in pictures.values())
    save_model(model, tmp_path / "vae.pth")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        log_models(model, tmp_path / "vae.pth", None, {})
    [decoder] = [m for m in mlflow.search_logged_models(output_format="list") if "decoder" in m.name]
    assert decoder.source_run_id == run.info.run_id
    outputs = mlflow.models.get_model_info(decoder.model_uri).signature.outputs.to_dict()
    assert tuple(outputs[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 32)
