"""The VAE objective: β·reconstruction + KL.

β here weights the *reconstruction* term (default 500). This is the opposite of
the β-VAE paper (Higgins et al., 2017), where β multiplies the KL term. In our
convention raising β favours sharp reconstructions over a regular latent space
(closer to a plain autoencoder); lowering it pulls the posterior towards the
N(0, I) prior, giving smoother samples and blurrier reconstructions. Our β
corresponds to 1/β_paper up to the per-pixel averaging of the reconstruction.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

DEFAULT_BETA = 500.0
PIXELS = 32 * 32  # of a gray 32×32 image (Fashion-MNIST, padded); C·32·32 for C channels


def nelbo_of_losses(reconstruction_loss: float, kl_loss: float, pixels: int = PIXELS) -> float:
    """−ELBO in nats per image from the loss's two halves, comparable across β: ``bce`` is a mean over
    the ``pixels`` of an image (C·32·32: 3,072 for RGB), ``kld`` a sum per image (see :func:`vae_loss_function`)."""
    return pixels * reconstruction_loss + kl_loss


class VAELoss(NamedTuple):
    """Scalar loss terms: ``total = beta * bce + kld``."""

    total: torch.Tensor
    bce: torch.Tensor
    kld: torch.Tensor


def kl_per_image(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) in nats of each image, summed over latent dims: (B,).

    mu, logvar: (B, latent_dim).
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """:func:`kl_per_image` averaged over the batch: a scalar."""
    return kl_per_image(mu, logvar).mean()


def vae_loss_function(
    reconstruction: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = DEFAULT_BETA,
) -> VAELoss:
    """β·BCE + KL from reconstructed *probabilities*.

    reconstruction, x: (B, C, H, W) in [0, 1]; mu, logvar: (B, latent_dim).
    ``bce`` is the binary cross-entropy in nats averaged over the pixels of each
    image, then over the batch; ``kld`` is summed over latent dimensions and
    averaged over the batch. β weights the reconstruction term — the opposite
    of the β-VAE paper's convention: a larger β gives sharper reconstructions
    and a less regular latent space, a smaller β the reverse.

    Reconstructions of exactly 0 or 1 stay finite: PyTorch's BCE clamps its
    logarithm at −100. Training uses :func:`vae_loss_from_logits`, which needs
    no clamp at all.
    """
    bce = F.binary_cross_entropy(reconstruction, x, reduction="mean")
    kld = kl_divergence(mu, logvar)
    return VAELoss(beta * bce + kld, bce, kld)


def vae_loss_from_logits(
    logits: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = DEFAULT_BETA,
) -> VAELoss:
    """Same value as :func:`vae_loss_function` with ``reconstruction = sigmoid(logits)``.

    Computed from the logits (as ``binary_cross_entropy_with_logits``), which is
    exact and finite for any logit, so a saturated decoder cannot produce inf or NaN.
    """
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="mean")
    kld = kl_divergence(mu, logvar)
    return VAELoss(beta * bce + kld, bce, kld)
