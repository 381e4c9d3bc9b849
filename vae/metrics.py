"""Evaluation numbers that can be compared across β and latent sizes.

All are computed on held-out images (N, C, 32, 32) in [0, 1] (or uint8), in
large batches under ``torch.inference_mode()``. The likelihoods treat each pixel
as a Bernoulli variable with the grey level as its target — the same
likelihood the training loss uses — so they are in nats per image and
comparable between runs, but not with papers that binarise MNIST.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vae import fast_likelihood
from vae.fast_cpu import map_per_core
from vae.loss import kl_per_image
from vae.model import VAE
from vae.utils import batch_images, evaluating, model_device, standard_normal


class NegativeELBO(NamedTuple):
    """−ELBO = reconstruction + KL, in nats per image, independent of the training β."""

    nelbo: float
    reconstruction: float  # BCE summed over the pixels of an image
    kl: float


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def _log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) of Bernoulli pixels, summed over all but the leading dimensions."""
    per_pixel = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    return per_pixel.flatten(start_dim=logits.dim() - 3).sum(-1)


def _decoded_logits(model: VAE, z: torch.Tensor, precision: str) -> torch.Tensor:
    """The decoder's logits of codes ``z`` (N, latent_dim), in float32: its passes run under bf16
    autocast when ``precision`` is "bf16" (what a CPU with native bf16 does about twice as fast), the
    logits handed back in float32, so every log-probability is summed in float32."""
    device_type = z.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return model.decoder.logits(z).float()


@torch.inference_mode()
def negative_elbo(model: VAE, images: torch.Tensor, batch_size: int = 1000, precision: str = "fp32") -> NegativeELBO:
    """−ELBO with one posterior sample per image, averaged over ``images``; the decoder in ``precision``
    ("fp32" or "bf16", see :func:`importance_weighted_log_likelihood`)."""
    device = model_device(model)
    totals = torch.zeros(2, dtype=torch.float64)
    with evaluating(model):
        for chunk in images.split(batch_size):
            x = batch_images(chunk, device)
            mu, logvar = model.encode(x)
            z = model.reparameterize(mu, logvar)
            reconstruction = -_log_likelihood(_decoded_logits(model, z, precision), x)
            kl = kl_per_image(mu, logvar)
            totals += torch.stack([reconstruction.sum(), kl.sum()]).double().cpu()
    reconstruction, kl = (totals / len(images)).tolist()
    return NegativeELBO(reconstruction + kl, reconstruction, kl)


@torch.inference_mode()
def importance_weighted_log_likelihood(
    model: VAE,
    images: torch.Tensor,
    num_samples: int = 100,
    max_decodes: int | None = None,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    decodes_per_pass: int | None = None,
) -> float:
    """log p(x) ≈ log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), averaged over images (nats).

    K = ``num_samples``; K = 1 is the one-sample ELBO, and the estimate rises
    towards log p(x) as K grows. The noise is drawn for blocks of ``max_decodes // K`` images
    (default 512 decodes, on every device: the blocks fix which noise each image gets, so a
    device-dependent size would make the estimate depend on the device), from PyTorch's global
    generator, or from ``generator`` (a CPU one) when given: then the estimate depends on the
    model, the images and its seed alone, on any device.

    How the work is done changes no number: the decodes go through the decoder in passes of up to
    ``decodes_per_pass`` (default one block; whole blocks, so the noise is the same), which only
    trades memory for fewer, larger passes, run side by side on a CPU's cores (the noise drawn
    in order first: :func:`vae.fast_cpu.map_per_core`); ``precision`` "bf16" runs the decoder's passes under
    bf16 autocast and sums the log-probabilities in float32 (:func:`vae.fast_likelihood.log_likelihood`;
    within a few thousandths of a nat of "fp32" on the default model: docs/evaluation.md).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = model_device(model)
    block = max(1, (max_decodes or 512) // num_samples)  # images whose noise is drawn at once
    per_pass = max(1, (decodes_per_pass or 0) // (num_samples * block)) * block  # whole blocks of images

    def passes() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each pass's images and noise (K, B, D): drawn here, block by block, in order, so each image gets
        the same draws whatever a pass holds and however many passes run at once."""
        for chunk in images.split(per_pass):
            blocks = [standard_normal((num_samples, len(b), model.latent_dim), device, generator) for b in chunk.split(block)]
            yield chunk, torch.cat(blocks, 1)

    @torch.inference_mode()  # per thread: each pass sets it where it runs
    def log_mean_weights(work: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Σ over the pass's images of log (1/K) Σ_k w_k."""
        chunk, noise = work
        x = batch_images(chunk, device)
        mu, logvar = model.encode(x)
        z = mu + (0.5 * logvar).exp() * noise  # (K, B, D)
        if precision == "bf16":
            log_p = fast_likelihood.log_likelihood(model.decoder, z, x)
        else:
            logits = _decoded_logits(model, z.flatten(0, 1), precision).unflatten(0, (num_samples, len(x)))
            log_p = _log_likelihood(logits, x)
        log_w = log_p + _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - _log_normal(z, mu, logvar)
        return float((torch.logsumexp(log_w, dim=0) - math.log(num_samples)).double().sum())

    with evaluating(model):
        # passes side by side, one per CPU core; summed in order, so the sum is the same every time
        return sum(map_per_core(log_mean_weights, passes(), device)) / len(images)


def active_units(means: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across the data: Var_x(E_q[z_d]) > threshold.

    means: (N, latent_dim) posterior means (Burda et al., 2016).
    """
    return int((means.double().var(dim=0) > threshold).sum())


def knn_accuracy(
    train_means: torch.Tensor,
    train_labels: torch.Tensor,
    test_means: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 5,
    chunk: int | None = None,
) -> float:
    """Accuracy in [0, 1] of a k-nearest-neighbour vote (Euclidean, in latent space) trained on the train means.

    ``chunk``: queries whose distances (chunk, N_train) are computed at once; by default as many as keep
    that matrix within 24 MiB, under the 32 MiB that :func:`vae.fast_cpu.keep_freed_memory` keeps for
    reuse (evaluate's val + test k-NN on 55,000 neighbours: 2.2 s with 1,024 queries, 225 MB, at once,
    1.3-1.7 s with 128; the same neighbours either way).
    """
    train_means, test_means = train_means.float(), test_means.float()
    chunk = chunk or max(1, 24 * 2**20 // (4 * len(train_means)))
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for start in range(0, len(test_means), chunk):
        queries = test_means[start : start + chunk]
        nearest = torch.cdist(queries, train_means).topk(k, dim=1, largest=False).indices
        votes = F.one_hot(train_labels[nearest], num_classes).sum(dim=1)
        correct += int((votes.argmax(dim=1) == test_labels[start : start + chunk]).sum())
    return correct / len(test_means)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F):
    ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½), computed in float64.

    Tr((Σa Σb)^½) is the sum of the square roots of the eigenvalues of
    Σa^½ Σb Σa^½, which is symmetric, so only symmetric eigensolvers are needed.
    """
    a, b = features_a.double(), features_b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_a)
    sqrt_a = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)
