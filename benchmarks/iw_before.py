"""The importance-weighted bound as the evaluate stage computed it before it was made faster (commit f56ae43):
the speed benchmark's baseline and the tests' reference, kept here, apart from the code it measures."""

from __future__ import annotations

import math

import torch

from vae.metrics import _log_likelihood, _log_normal
from vae.model import VAE
from vae.utils import batch_images, model_device


@torch.inference_mode()
def iw_as_before(model: VAE, images: torch.Tensor, num_samples: int, generator: torch.Generator) -> float:
    """log p(x) in nats per image, K = ``num_samples``: fp32, one pass of 512 // K images at a time on all
    the cores, each pass's noise (K, B, D) drawn from ``generator`` (a CPU one)."""
    device = model_device(model)
    total = 0.0
    for chunk in images.split(max(1, 512 // num_samples)):
        x = batch_images(chunk, device)
        mu, logvar = model.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn((num_samples, *mu.shape), generator=generator).to(device)
        logits = model.decoder.logits(z.flatten(0, 1)).unflatten(0, (num_samples, len(x)))  # (K, B, C, H, W)
        log_w = _log_likelihood(logits, x) + _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        total += float((torch.logsumexp(log_w - _log_normal(z, mu, logvar), 0) - math.log(num_samples)).double().sum())
    return total / len(images)
