"""The IW bound's log p(x|z) under bf16, computed without assembling the decoded images.

:func:`vae.metrics.importance_weighted_log_likelihood` decodes K codes per image and sums the
Bernoulli log-likelihood of every pixel. The sum does not care about the order of the pixels, and
on the CPU the last layer and the sum cost as much as a third of the decoder's two large
convolutions. So, under bf16 (the figures below: one core of a 2-core AVX512-BF16 CPU, 1,000
decodes of the default model; ``benchmarks/pipeline_times.py`` prints the bound's passes per second):

- The last transposed convolution (32 → C channels, 3×3, stride 2) is a 1×1 convolution to C·9
  columns (:func:`vae.fast_cpu.transposed_columns`), summed in float32 straight into the
  output's four phase planes (even or odd rows × even or odd columns, each 16×16): no canvas to
  clear, crop and copy. The images are put in the same order once per pass (B images, not K·B
  decodes).
- Σ log(1 + e^−|l|) is summed as the log of products of 64 terms, e^−|l| by ``exp2``: PyTorch's
  ``exp`` and ``log`` run 3–4× slower per element on the CPU than ``exp2`` and a product.

Together the work after the second convolution takes 5.3 ms instead of 9.5, and a whole pass
(encoder, decoder, log-likelihood) 40 ms instead of 44: ~10% more passes a second. The logits are
:mod:`vae.fast_cpu`'s float32 sums of the same bf16 columns, in another order; the log-likelihood is
the float32 formula's up to rounding: a product of 64 terms in (1, 2] stays below 2^64, and is off by
at most 64 roundings (under 4e-6 nats of its log).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vae.fast_cpu import transposed_columns
from vae.model import VariationalDecoder

_GROUP = 64  # terms per product: (1 + e^−|l|) ≤ 2, so a product stays ≤ 2^64, far inside float32
_LOG2_E = math.log2(math.e)
# for even (0) and odd (1) output rows of a 3x3, stride-2 transposed convolution, the kernel rows and the
# shifts of the input rows that feed them, the unshifted one first (the same for columns)
_TAPS = {0: ((1, 0),), 1: ((2, 0), (0, 1))}


def log_likelihood(decoder: VariationalDecoder, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) in nats (K, B) of codes z (K, B, latent_dim) and images x (B, C, 32, 32) in [0, 1],
    the decoder's passes under bf16 autocast, the last layer's sums and the log-likelihood in float32."""
    num_samples, batch = z.shape[:2]
    with torch.autocast(z.device.type, dtype=torch.bfloat16):
        hidden = decoder.deconv[:-1](decoder.fc(z.flatten(0, 1)))  # (K·B, 32, 16, 16)
    logits = _phase_logits(decoder.deconv[-1], hidden).flatten(1).unflatten(0, (num_samples, batch))
    return _bernoulli_log_likelihood(logits, _in_phase_order(x))


def _phase_logits(conv: nn.ConvTranspose2d, hidden: torch.Tensor) -> torch.Tensor:
    """``conv(hidden)`` (N, C, 2H, 2W) in float32, as its phase planes (N, C, 2, 2, H, W): plane (a, b)
    holds the output's pixels (2i + a, 2j + b). ``conv``: 3×3, stride 2, padding 1, output padding 1.

    Output row 2i takes kernel row 1 at input row i; row 2i + 1 takes kernel row 2 at i and kernel
    row 0 at i + 1 (:data:`_TAPS`; the same for columns).
    """
    geometry = (conv.kernel_size, conv.stride, conv.padding, conv.output_padding, conv.dilation, conv.groups)
    if geometry != ((3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1):
        raise ValueError(f"phase planes need a 3x3, stride-2 transposed convolution, got {conv}")
    columns = transposed_columns(hidden.to(torch.bfloat16), conv.weight.to(torch.bfloat16))
    columns = columns.unflatten(1, (-1, 3, 3))  # (N, C, kH, kW, H, W), a view of any memory layout
    height, width = hidden.shape[2:]
    planes = hidden.new_empty((len(hidden), columns.shape[1], 2, 2, height, width), dtype=torch.float32)
    for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
        plane = planes[:, :, a, b]
        for row, row_shift in _TAPS[a]:
            for column, column_shift in _TAPS[b]:
                term = columns[:, :, row, column, row_shift:, column_shift:]
                target = plane[..., : height - row_shift, : width - column_shift]
                if row_shift or column_shift:
                    target += term  # float32 sums of bf16 columns
                else:
                    target.copy_(term)  # the unshifted term comes first
    if conv.bias is not None:
        planes += conv.bias.float().view(1, -1, 1, 1, 1, 1)
    return planes


def _in_phase_order(x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, 2H, 2W) → (B, C·4·H·W) float32, their pixels in :func:`_phase_logits`' order."""
    batch, channels, height, width = x.shape
    phases = x.float().reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return phases.reshape(batch, -1)


def _bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ over pixels of x·l − softplus(l), float32 logits (K, B, P) and targets (B, P) → (K, B), with
    softplus(l) = max(l, 0) + log(1 + e^−|l|), Σ max(l, 0) = (Σ l + Σ |l|) / 2, and the logs of the
    second term taken of products of :data:`_GROUP` factors (see the module docstring)."""
    magnitude = logits.abs()
    positive_part = 0.5 * (logits.sum(-1) + magnitude.sum(-1))
    factors = magnitude.mul_(-_LOG2_E).exp2_().add_(1)  # 1 + e^−|l| in (1, 2]
    group = math.gcd(_GROUP, factors.shape[-1])
    log_terms = factors.unflatten(-1, (-1, group)).prod(-1).log_().sum(-1)
    return (logits * x).sum(-1) - positive_part - log_terms
