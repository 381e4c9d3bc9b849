from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from vae.data import load_fashion_mnist
from vae.model import VAE
from vae.trainer import NonFiniteLossError, evaluate_vae, train_one_epoch, train_vae_model, vae_loss_function
from vae.utils import set_seed

CPU = torch.device("cpu")


def test_one_epoch_on_real_images_lowers_the_loss(real_data_dir: Path) -> None:
    set_seed(0)
    data = load_fashion_mnist("train", directory=real_data_dir, limit=512)
    loader = DataLoader(data.tensor_dataset(), batch_size=32, shuffle=True)
    vae = VAE(latent_dim=2)
    first_x = next(iter(loader))[0]
    with torch.no_grad():
        recon, mu, logvar = vae(first_x)
        first_loss = vae_loss_function(recon, first_x, mu, logvar, beta=500).total.item()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    history = train_vae_model(vae, loader, optimizer, CPU, epochs=1, beta=500, progress=False)
    assert set(history) == {"loss", "reconstruction_loss", "kl_loss"}
    assert len(history["loss"]) == 1
    after = evaluate_vae(vae, loader, CPU, beta=500)
    assert after.loss < first_loss * 0.8


def test_history_has_validation_keys_and_callback_sees_each_epoch() -> None:
    images = torch.rand(40, 1, 32, 32)
    loader = DataLoader(TensorDataset(images, torch.zeros(40)), batch_size=8)
    vae = VAE(latent_dim=2)
    seen: list[tuple[int, dict]] = []
    history = train_vae_model(
        vae,
        loader,
        torch.optim.Adam(vae.parameters()),
        CPU,
        epochs=3,
        beta=10,
        val_loader=DataLoader(images[:16], batch_size=8),
        on_epoch_end=lambda e, m: seen.append((e, m)),
        progress=False,
    )
    assert [e for e, _ in seen] == [1, 2, 3]
    keys = {"loss", "reconstruction_loss", "kl_loss", "val_loss", "val_reconstruction_loss", "val_kl_loss"}
    assert set(history) == keys and all(len(v) == 3 for v in history.values())
    assert seen[-1][1]["val_loss"] == history["val_loss"][-1]
    for epoch in range(3):
        assert history["loss"][epoch] == pytest.approx(
            10 * history["reconstruction_loss"][epoch] + history["kl_loss"][epoch], rel=1e-5
        )


def test_uint8_batches_train_like_float_batches() -> None:
    images = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8)
    results = []
    for batch in (images, images.float() / 255):
        set_seed(3)
        vae = VAE(latent_dim=2)
        results.append(
            train_vae_model(vae, [batch], torch.optim.SGD(vae.parameters(), lr=1e-3), CPU, epochs=1, progress=False)[
                "loss"
            ][0]
        )
    assert results[0] == pytest.approx(results[1], rel=1e-6)


def test_evaluate_returns_named_triple_without_gradients() -> None:
    vae = VAE(latent_dim=2)
    result = evaluate_vae(vae, [torch.rand(4, 1, 32, 32)], CPU, beta=2.0)
    loss, bce, kld = result
    assert result.loss == loss and loss == pytest.approx(2.0 * bce + kld, rel=1e-5)
    assert vae.training  # evaluation restores the mode it found
    assert all(p.grad is None for p in vae.parameters())


def test_non_finite_loss_stops_training_with_a_clear_error() -> None:
    vae = VAE(latent_dim=2)
    batches = [torch.rand(4, 1, 32, 32), torch.full((4, 1, 32, 32), float("nan"))]
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2"):
        train_vae_model(vae, batches, torch.optim.Adam(vae.parameters()), CPU, epochs=2, progress=False)


@pytest.mark.parametrize("kwargs, match", [({"epochs": 0}, "epochs"), ({"beta": float("nan")}, "beta")])
def test_bad_arguments_are_rejected(kwargs, match) -> None:
    vae = VAE()
    with pytest.raises(ValueError, match=match):
        train_vae_model(vae, [torch.rand(2, 1, 32, 32)], torch.optim.Adam(vae.parameters()), CPU, **kwargs)


def test_beta_schedule_sets_each_epochs_beta() -> None:
    images = torch.rand(16, 1, 32, 32)
    vae = VAE(latent_dim=2)
    betas = {1: 100.0, 2: 10.0, 3: 1.0}
    history = train_vae_model(
        vae, [images], torch.optim.Adam(vae.parameters()), CPU, epochs=3, beta=betas.__getitem__, progress=False
    )
    for epoch, beta in betas.items():
        i = epoch - 1
        assert history["loss"][i] == pytest.approx(beta * history["reconstruction_loss"][i] + history["kl_loss"][i])


class _TensorsFromHostData(TorchDispatchMode):
    """Counts the tensors made from Python numbers or lists: on a GPU, each is a copy from the host that
    waits for the device (what ``torch.cuda.set_sync_debug_mode`` reports), so a training step must make none."""

    MAKERS = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default", "aten.scalar_tensor.default"}

    def __init__(self) -> None:
        super().__init__()
        self.made = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (PyTorch's signature)
        self.made += str(func) in self.MAKERS
        return func(*args, **(kwargs or {}))


def test_a_training_step_copies_nothing_from_the_host() -> None:
    images = torch.rand(64, 1, 32, 32)
    vae = VAE(latent_dim=2)
    optimizer = torch.optim.Adam(vae.parameters())
    batches = [images[i : i + 8] for i in range(0, 64, 8)]
    train_one_epoch(vae, batches[:1], optimizer, CPU, progress=False)  # Adam makes its state at its first step
    with _TensorsFromHostData() as one:
        train_one_epoch(vae, batches[:1], optimizer, CPU, progress=False, refresh_every=1000)
    with _TensorsFromHostData() as eight:
        train_one_epoch(vae, batches, optimizer, CPU, progress=False, refresh_every=1000)
    assert eight.made == one.made  # the epoch's set-up may make some, its steps none
    print(f"tensors made from host data: {one.made} in a 1-step epoch, {eight.made} in an 8-step one")
