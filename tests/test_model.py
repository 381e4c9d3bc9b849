import pytest
import torch

from vae.model import VAE, VariationalDecoder, VariationalEncoder


@pytest.mark.parametrize("latent_dim", [2, 32])
@pytest.mark.parametrize("batch", [1, 7])
def test_forward_shapes_and_range(latent_dim: int, batch: int) -> None:
    vae = VAE(latent_dim=latent_dim, input_channels=1)
    x = torch.rand(batch, 1, 32, 32)
    recon, mu, logvar = vae(x)
    assert recon.shape == (batch, 1, 32, 32)
    assert mu.shape == logvar.shape == (batch, latent_dim)
    assert recon.min() >= 0 and recon.max() <= 1


@pytest.mark.parametrize("latent_dim", [2, 32])
def test_encoder_returns_mu_logvar_and_decoder_shapes(latent_dim: int) -> None:
    encoder, decoder = VariationalEncoder(latent_dim), VariationalDecoder(latent_dim)
    mu, logvar = encoder(torch.rand(3, 1, 32, 32))
    assert mu.shape == logvar.shape == (3, latent_dim)
    out = decoder(torch.randn(5, latent_dim))
    assert out.shape == (5, 1, 32, 32)
    z = torch.randn(5, latent_dim)
    torch.testing.assert_close(decoder(z), torch.sigmoid(decoder.logits(z)))


def test_encoder_attribute_gives_mu_logvar() -> None:
    vae = VAE(latent_dim=2)
    x = torch.rand(4, 1, 32, 32)
    mu, logvar = vae.encoder(x)
    assert mu.shape == (4, 2) and logvar.shape == (4, 2)
    torch.testing.assert_close((mu, logvar), vae.encode(x))


def test_generate_shape_range_and_no_grad() -> None:
    vae = VAE(latent_dim=3)
    samples = vae.generate(6)
    assert samples.shape == (6, 1, 32, 32)
    assert not samples.requires_grad
    assert 0 <= samples.min() and samples.max() <= 1


def test_forward_equals_sigmoid_of_forward_logits() -> None:
    vae = VAE(latent_dim=2)
    x = torch.rand(4, 1, 32, 32)
    torch.manual_seed(1)
    recon, mu, logvar = vae(x)
    torch.manual_seed(1)
    logits, mu2, logvar2 = vae.forward_logits(x)
    torch.testing.assert_close(recon, torch.sigmoid(logits))
    torch.testing.assert_close(mu, mu2)


def test_reparameterize_matches_moments_and_passes_gradients() -> None:
    torch.manual_seed(123)
    mu = torch.tensor([1.5, -2.0, 0.0], requires_grad=True)
    logvar = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    draws = VAE.reparameterize(mu.expand(200_000, 3), logvar.expand(200_000, 3))
    torch.testing.assert_close(draws.mean(0), mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(draws.var(0), logvar.detach().exp(), atol=0.03, rtol=0.02)
    draws.sum().backward()
    assert mu.grad is not None and torch.all(mu.grad != 0)
    assert logvar.grad is not None and torch.all(logvar.grad != 0)


def test_config_rebuilds_model() -> None:
    vae = VAE(latent_dim=5)
    clone = VAE(**vae.config)
    clone.load_state_dict(vae.state_dict())
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(vae.encode(x), clone.encode(x))


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True])
def test_bad_latent_dim_is_rejected(bad) -> None:
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(latent_dim=bad)
