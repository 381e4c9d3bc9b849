import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from vae.data import DataError, ImageSplit
from vae.model import VAE
from vae.storage import (
    CheckpointError,
    atomic_write,
    load_model,
    load_prepared,
    remove_stale_temporaries,
    save_model,
    save_prepared,
)


def split(n: int = 6) -> ImageSplit:
    return ImageSplit(torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8), torch.arange(n) % 10)


def test_prepared_round_trip(tmp_path: Path) -> None:
    original = split()
    save_prepared(original, tmp_path / "train.pt")
    loaded = load_prepared(tmp_path / "train.pt")
    assert torch.equal(loaded.images, original.images) and torch.equal(loaded.labels, original.labels)
    assert [p.name for p in tmp_path.iterdir()] == ["train.pt"]  # no temporary file left behind


def test_a_prepared_slice_is_saved_alone_not_with_the_images_it_was_cut_from(tmp_path: Path) -> None:
    """data.train_limit keeps the first N images: a slice of all of them. torch.save writes a view's whole
    storage, so train.pt held every image (61.8 MB for train_limit: 300) and DVC cached, pushed and pulled them."""
    everything = split(1000)
    first = ImageSplit(everything.images[:10], everything.labels[:10])
    save_prepared(first, tmp_path / "train.pt")
    assert (tmp_path / "train.pt").stat().st_size < 10 * 32 * 32 + 10 * 8 + 4096  # the 10 images and labels
    loaded = load_prepared(tmp_path / "train.pt")
    assert torch.equal(loaded.images, first.images) and torch.equal(loaded.labels, first.labels)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            {"images": torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "labels": torch.zeros(4, dtype=torch.int64)},
            r"images must be uint8 of shape \(N, 1 or 3, 32, 32\)",
        ),
        ({"images": torch.zeros(4, 1, 32, 32), "labels": torch.zeros(4, dtype=torch.int64)}, "must be uint8"),
        (
            {"images": torch.zeros(4, 1, 32, 32, dtype=torch.uint8), "labels": torch.zeros(3, dtype=torch.int64)},
            "labels for 4 images",
        ),
        ([1, 2, 3], "must hold 'images' and 'labels'"),
    ],
)
def test_prepared_wrong_content_names_the_file(tmp_path: Path, content, message: str) -> None:
    torch.save(content, tmp_path / "test.pt")
    with pytest.raises(DataError, match=rf"test.pt: .*{message}"):
        load_prepared(tmp_path / "test.pt")


def test_prepared_corrupt_and_missing(tmp_path: Path) -> None:
    save_prepared(split(), tmp_path / "train.pt")
    data = (tmp_path / "train.pt").read_bytes()
    (tmp_path / "train.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"train.pt: not a readable prepared data file"):
        load_prepared(tmp_path / "train.pt")
    with pytest.raises(DataError, match=r"absent.pt: prepared data file .*not found"):
        load_prepared(tmp_path / "absent.pt")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = VAE(latent_dim=4)
    save_model(model, tmp_path / "m.pth")
    loaded, blob = load_model(tmp_path / "m.pth", expected_latent_dim=4)
    assert blob["config"] == {"latent_dim": 4, "input_channels": 1}
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loaded.encode(x), model.eval().encode(x))


def test_checkpoint_for_another_latent_dim(tmp_path: Path) -> None:
    save_model(VAE(latent_dim=2), tmp_path / "m.pth")
    with pytest.raises(
        CheckpointError, match=r"m.pth: model was built for latent_dim=2, params.yaml asks for latent_dim=8"
    ):
        load_model(tmp_path / "m.pth", expected_latent_dim=8)


def test_not_a_checkpoint_and_truncated(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth: not a model checkpoint"):
        load_model(tmp_path / "other.pth")
    save_model(VAE(), tmp_path / "m.pth")
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "m.pth").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match=r"m.pth: not a readable model checkpoint"):
        load_model(tmp_path / "m.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text.pth"):
        load_model(tmp_path / "text.pth")


class Exploit:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_never_runs_pickled_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with (tmp_path / "evil.pth").open("wb") as f:
        pickle.dump({"config": {}, "state_dict": Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil.pth"):
        load_model(tmp_path / "evil.pth")
    assert "code ran" not in capsys.readouterr().out


def test_atomic_write_keeps_the_old_file_on_failure_and_respects_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]

    previous = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: tmp.write_text("new"))
    finally:
        os.umask(previous)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # readable by others, like an ordinary open()


def test_stale_temporaries_of_a_killed_write_are_removed_and_nothing_else(tmp_path: Path) -> None:
    state = tmp_path / "train_state.pt"
    state.write_text("good")
    stale, other = tmp_path / ".train_state.pt.x1y2.tmp", tmp_path / ".other.pt.x1y2.tmp"
    stale.write_text("half")
    other.write_text("someone else's")
    remove_stale_temporaries(state)
    assert not stale.exists() and other.exists() and state.read_text() == "good"


def test_interrupts_deferred_delivers_ctrl_c_after_the_block() -> None:
    import signal

    from vae.pipeline.resume import interrupts_deferred

    finished = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True  # not cut short
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_saving_the_same_data_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    """DVC hashes files: a rerun that saves equal tensors must not look like new data to it."""
    split = ImageSplit(torch.arange(2 * 32 * 32, dtype=torch.uint8).view(2, 1, 32, 32), torch.tensor([0, 1]))
    save_prepared(split, tmp_path / "a" / "train.pt")
    save_prepared(split, tmp_path / "b" / "train.pt")
    first = (tmp_path / "a" / "train.pt").read_bytes()
    save_prepared(split, tmp_path / "a" / "train.pt")
    assert (tmp_path / "a" / "train.pt").read_bytes() == first == (tmp_path / "b" / "train.pt").read_bytes()
    torch.manual_seed(0)
    model = VAE(latent_dim=2)
    save_model(model, tmp_path / "m1.pth")
    save_model(model, tmp_path / "m2.pth")
    assert (tmp_path / "m1.pth").read_bytes() == (tmp_path / "m2.pth").read_bytes()
