"""The project's training path computes the same thing as the usual torchvision + DataLoader loop."""

from pathlib import Path

import pytest
import torch
from conftest import write_fashion_mnist
from torch.utils.data import DataLoader

from vae import fast_cpu
from vae.batches import TensorBatches
from vae.data import read_split
from vae.loss import vae_loss_from_logits
from vae.model import VAE
from vae.trainer import configure_performance, evaluate_vae, make_optimizer, train_vae_model, vae_loss_function
from vae.utils import batch_images, set_seed

CPU = torch.device("cpu")


def test_same_first_batch_loss_as_the_usual_loop(tmp_path: Path) -> None:
    from torchvision import datasets, transforms

    folder = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=64, n_test=16, gz=False)
    usual = datasets.FashionMNIST(
        str(tmp_path),
        train=True,
        download=False,
        transform=transforms.Compose([transforms.Pad(2), transforms.ToTensor()]),
    )
    usual_x = next(iter(DataLoader(usual, batch_size=32, shuffle=False)))[0]
    ours = TensorBatches(read_split(folder, "train").images, 32, shuffle=False)
    ours_x = batch_images(next(iter(ours)), CPU)
    assert torch.equal(usual_x, ours_x)  # same pixels, bit for bit

    torch.manual_seed(0)
    model = VAE(latent_dim=2)  # the usual loop's stock PyTorch layers
    fast = fast_cpu.enable(configure_performance(CPU, VAE(latent_dim=2)))  # the train stage's
    fast.load_state_dict(model.state_dict())

    torch.manual_seed(1)
    reconstruction, mu, logvar = model(usual_x)
    expected = vae_loss_function(reconstruction, usual_x, mu, logvar, beta=500.0)
    torch.manual_seed(1)
    logits, mu, logvar = fast.forward_logits(ours_x)
    got = vae_loss_from_logits(logits, ours_x, mu, logvar, beta=500.0)
    torch.testing.assert_close(got.total, expected.total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.bce, expected.bce, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.kld, expected.kld, rtol=0, atol=1e-5)


def test_fast_path_training_lowers_the_loss(real_data_dir: Path) -> None:
    set_seed(0)
    images = read_split(real_data_dir, "train", limit=512).images
    model = fast_cpu.enable(configure_performance(CPU, VAE(latent_dim=2)))
    batches = TensorBatches(images, 32, seed=0)
    before = evaluate_vae(model, TensorBatches(images, 256, shuffle=False), CPU, beta=500.0).loss
    history = train_vae_model(model, batches, make_optimizer(model, 1e-3), CPU, epochs=1, progress=False)
    after = evaluate_vae(model, TensorBatches(images, 256, shuffle=False), CPU, beta=500.0).loss
    assert history["loss"][0] < before and after < 0.8 * before


def test_channels_last_changes_nothing_but_layout() -> None:
    torch.manual_seed(0)
    plain = VAE(latent_dim=3)
    fast = configure_performance(CPU, VAE(latent_dim=3))
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(8, 1, 32, 32)
    torch.testing.assert_close(fast.encode(x), plain.encode(x), rtol=1e-5, atol=1e-6)
    assert fast.encoder.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_fused_adam_matches_plain_adam(steps: int = 3) -> None:
    torch.manual_seed(0)
    a, b = VAE(), VAE()
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=1e-3), make_optimizer(b, 1e-3)
    x = torch.rand(4, 1, 32, 32)
    for step in range(steps):
        for model, opt in ((a, opt_a), (b, opt_b)):
            torch.manual_seed(step)
            logits, mu, logvar = model.forward_logits(x)
            loss = vae_loss_from_logits(logits, x, mu, logvar).total
            opt.zero_grad()
            loss.backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_bf16_training_tracks_fp32_and_keeps_float32_weights() -> None:
    """bf16 autocast changes the rounding, not the result: epoch losses within 2% of fp32."""
    images = (torch.rand(256, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    histories = {}
    for precision in ("fp32", "bf16"):
        set_seed(0)
        model = fast_cpu.enable(configure_performance(CPU, VAE(latent_dim=2)))
        batches = TensorBatches(images, 32, seed=0)
        histories[precision] = train_vae_model(
            model, batches, make_optimizer(model, 1e-3), CPU, epochs=2, progress=False, precision=precision
        )
        assert all(p.dtype == torch.float32 for p in model.parameters())
    for key, fp32 in histories["fp32"].items():
        torch.testing.assert_close(histories["bf16"][key], fp32, rtol=0.02, atol=1e-3, msg=key)
    assert histories["bf16"]["loss"][1] < histories["bf16"]["loss"][0]


def test_unknown_precision_is_rejected() -> None:
    model = VAE()
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        train_vae_model(model, [torch.rand(2, 1, 32, 32)], make_optimizer(model, 1e-3), CPU, precision="fp16")
