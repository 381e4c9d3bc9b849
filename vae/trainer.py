"""Training loop and held-out evaluation for :class:`vae.model.VAE`.

Batches may be image tensors (B, C, 32, 32) or ``(images, labels)`` pairs, as
a ``DataLoader`` over a ``TensorDataset`` yields them. Images are floats in
[0, 1] or uint8 in [0, 255] (converted on the device, so compact uint8 data can
be shipped to a GPU as is).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sized
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from vae.config import LR_SCHEDULES, PRECISIONS
from vae.errors import UserError
from vae.loss import DEFAULT_BETA, VAELoss, vae_loss_from_logits, vae_loss_function
from vae.model import VAE
from vae.utils import batch_images, evaluating

__all__ = [
    "EpochCallback",
    "LossBreakdown",
    "NonFiniteLossError",
    "evaluate_vae",
    "train_epoch",
    "train_vae_model",
    "vae_loss_function",
]

LOSS_KEYS = ("loss", "reconstruction_loss", "kl_loss")
EpochCallback = Callable[[int, dict[str, float]], None]


class LossBreakdown(NamedTuple):
    """Per-image averages over a data set: ``loss = beta * reconstruction_loss + kl_loss``."""

    loss: float
    reconstruction_loss: float
    kl_loss: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {prefix + key: value for key, value in zip(LOSS_KEYS, self)}


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became inf or NaN; the model's weights are no longer usable."""

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch = epoch
        self.step = step
        super().__init__(
            f"training loss became non-finite (inf or NaN) at epoch {epoch}, step {step}; "
            "lower the learning rate or beta, and check the input images are in [0, 1]"
        )


def resolve_precision(precision: str, device: torch.device) -> str:
    """The arithmetic ``precision`` means on ``device``: "fp32" or "bf16".

    "auto" is bf16 on CPUs that compute bf16 natively (:func:`native_bf16_cpu`), where
    training runs ~25% faster and ends within seed noise of fp32 (README,
    Performance), and fp32 elsewhere: on other CPUs bf16 is emulated and
    slower, and on CUDA its gain has not been measured yet.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and native_bf16_cpu() else "fp32"


def native_bf16_cpu() -> bool:
    """Whether PyTorch computes bf16 natively on this CPU: the CPU has AVX512-BF16 or AMX, and neither
    ``ATEN_CPU_CAPABILITY`` (ATen's kernels) nor ``ONEDNN_MAX_CPU_ISA`` (oneDNN's convolutions) holds
    PyTorch below them. With either capped to AVX2, as on a CPU without AVX-512, bf16 is emulated."""
    has_bf16 = any(
        getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()  # oneDNN's names, e.g. AVX512_CORE_BF16
    onednn_bf16 = onednn_cap in ("ALL", "DEFAULT") or any(isa in onednn_cap for isa in ("BF16", "AMX", "FP16", "AVX10"))
    return has_bf16 and onednn_bf16 and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def configure_performance(device: torch.device, model: VAE | None = None) -> VAE | None:
    """Speed settings that leave the results unchanged (up to float rounding); returns ``model``.

    - every device: the model's weights in channels-last layout, which lets
      oneDNN (CPU) and cuDNN use their faster NHWC kernels. Single-channel
      images are laid out the same in both formats, so inputs need no conversion.
    - CUDA: ``cudnn.benchmark`` picks the fastest convolution algorithms for the
      fixed 32×32 input size.

    The CPU's own speed-ups are opt-in, in :mod:`vae.fast_cpu`.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if model is not None:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(model: VAE, lr: float) -> torch.optim.Adam:
    """Adam over ``model``'s parameters, in PyTorch's fused implementation (one kernel per
    tensor instead of a dozen; the same updates up to float rounding)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    total_steps: int,
    lr_min: float = 0.0,
    warmup: float = 0.3,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """PyTorch's learning-rate schedule ``kind`` over ``total_steps`` optimizer steps, stepped per batch.

    - ``constant``: None, the optimizer's lr throughout (no scheduler, so no arithmetic changes);
    - ``cosine``: ``CosineAnnealingLR`` from the optimizer's lr down to ``lr_min`` at the last step;
    - ``onecycle``: ``OneCycleLR`` with the optimizer's lr as its peak, reached after the fraction
      ``warmup`` of the steps, then annealed (cosine) to ``lr / 25 / 10⁴``, PyTorch's defaults.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got {kind!r}")
    if kind == "constant":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=lr_min)
    peak = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, pct_start=warmup)


def _progress(batches: Iterable, desc: str, enabled: bool | None) -> tqdm:
    total = len(batches) if isinstance(batches, Sized) else None
    return tqdm(
        batches, total=total, desc=desc, unit="batch", leave=False, disable=None if enabled is None else not enabled
    )


def _train_step(
    model: VAE,
    x: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    beta: float,
    precision: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> torch.Tensor:
    """One optimizer step on the images ``x`` (B, 1, 32, 32); returns the batch's per-image (loss,
    reconstruction loss, KL) as a detached (3,) tensor on the device, never read back here.

    ``precision="bf16"`` runs the forward pass under bfloat16 autocast (the backward pass follows it;
    on the CPU the convolutions' weight gradients are computed in float32, see :mod:`vae.fast_cpu`);
    weights, optimizer state and the loss stay in float32. It pays off only where the hardware computes
    bf16 natively (CPUs with AVX512-BF16 or AMX, recent GPUs); elsewhere it is slower. "auto" picks one
    for the device (:func:`resolve_precision`).
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits, mu, logvar = model.forward_logits(x)
    terms = vae_loss_from_logits(logits.float(), x, mu.float(), logvar.float(), beta)
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return torch.stack(terms).detach()


def _check_and_show(bar: tqdm, epoch: int, first_bad_step: torch.Tensor, sums: torch.Tensor, seen: int) -> None:
    """Read the epoch's sums back from the device: stop at a non-finite loss, else show the running means."""
    bad = int(first_bad_step)
    if bad >= 0:
        raise NonFiniteLossError(epoch, bad)
    if seen:
        loss, bce, kld = (sums / seen).tolist()
        bar.set_postfix(loss=f"{loss:.2f}", bce=f"{bce:.4f}", kl=f"{kld:.2f}", refresh=False)


def train_one_epoch(
    model: VAE,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    beta: float = DEFAULT_BETA,
    epoch: int = 1,
    progress: bool | None = True,
    desc: str | None = None,
    refresh_every: int = 20,
    precision: str = "fp32",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> LossBreakdown:
    """One pass over ``batches``, a :func:`_train_step` each (``scheduler``, if any, stepped after it: a
    per-batch schedule); returns the epoch's per-image average losses. ``precision``: see :func:`_train_step`.

    The losses are summed on the device and read back only every ``refresh_every`` steps (to refresh
    the progress bar and check for non-finite values), so a GPU is never stalled by a per-step sync.

    Raises:
        NonFiniteLossError: the loss became inf/NaN; names the epoch and step.
    """
    precision = resolve_precision(precision, device)
    model.train()
    sums = torch.zeros(3, device=device)
    first_bad_step = torch.full((), -1, device=device)
    seen = step = 0
    bar = _progress(batches, desc or f"epoch {epoch}", progress)
    try:
        for step, batch in enumerate(bar, start=1):
            x = batch_images(batch, device)
            detached = _train_step(model, x, optimizer, beta, precision, scheduler)
            # the step goes in as a kernel argument: a tensor made of it would be a copy from the host each step
            first_bad_step.masked_fill_((first_bad_step < 0) & ~torch.isfinite(detached).all(), step)
            sums += detached * x.shape[0]
            seen += x.shape[0]
            if step % refresh_every == 0:
                _check_and_show(bar, epoch, first_bad_step, sums, seen)
        _check_and_show(bar, epoch, first_bad_step, sums, seen)
    finally:
        bar.close()
    if seen == 0:
        raise ValueError("the training data yielded no batches")
    return LossBreakdown(*(sums / seen).tolist())


@torch.inference_mode()
def evaluate_vae(
    model: VAE,
    loader: Iterable,
    device: torch.device,
    beta: float = DEFAULT_BETA,
) -> LossBreakdown:
    """Per-image average ``(loss, reconstruction_loss, kl_loss)`` on held-out data, without gradients.

    The latent code is sampled as in training, so the numbers are comparable
    with the training losses.
    """
    sums = torch.zeros(3, device=device)
    seen = 0
    with evaluating(model):
        for batch in loader:
            x = batch_images(batch, device)
            reconstruction, mu, logvar = model(x)
            terms: VAELoss = vae_loss_function(reconstruction, x, mu, logvar, beta)
            sums += torch.stack(terms) * x.shape[0]
            seen += x.shape[0]
    if seen == 0:
        raise ValueError("the evaluation data yielded no batches")
    return LossBreakdown(*(sums / seen).tolist())


def train_vae_model(
    model: VAE,
    train_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epochs: int = 10,
    beta: float | Callable[[int], float] = DEFAULT_BETA,
    val_loader: Iterable | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool | None = True,
    start_epoch: int = 1,
    val_prefix: str = "val_",
    history: dict[str, list[float]] | None = None,
    precision: str = "fp32",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` over ``train_loader`` (batches as the module says, re-iterated each epoch) with
    ``optimizer``, batches moved to ``device``, for epochs ``start_epoch`` to ``epochs`` (numbered from 1).
    Returns the history: per-epoch values of ``loss``, ``reconstruction_loss``, ``kl_loss`` and, with
    ``val_loader`` (held-out batches evaluated after every epoch), the same with ``val_prefix``.

    ``beta`` weighs the reconstruction term (not KL, unlike the β-VAE paper), or is a function of the
    epoch giving each epoch's β. ``on_epoch_end(epoch, metrics)`` is called after every epoch.
    ``progress``: a tqdm bar per epoch (None: only on a terminal). ``history``: the earlier epochs',
    extended in place, to continue a run. ``precision``: "fp32", "bf16" (:func:`_train_step`) or "auto";
    evaluation always runs in float32. ``scheduler``: stepped after every batch (:func:`make_scheduler`).

    Raises:
        NonFiniteLossError: the loss became inf/NaN (the error names epoch and step).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    beta_at = beta if callable(beta) else (lambda epoch: beta)
    history = {} if history is None else history
    options = {
        "val_batches": val_loader,
        "val_prefix": val_prefix,
        "progress": progress,
        "precision": precision,
        "scheduler": scheduler,
    }
    for epoch in range(start_epoch, epochs + 1):
        metrics = train_epoch(model, train_loader, optimizer, device, beta_at(epoch), (epoch, epochs), **options)
        record_epoch(history, metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return history


def record_epoch(history: dict[str, list[float]], metrics: dict[str, float]) -> None:
    """Append one epoch's ``metrics`` to ``history``, the per-epoch values of each metric, by name."""
    for key, value in metrics.items():
        history.setdefault(key, []).append(value)


def train_epoch(
    model: VAE,
    train_batches: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    beta: float,
    epoch_of: tuple[int, int],
    val_batches: Iterable | None = None,
    val_prefix: str = "val_",
    progress: bool | None = True,
    precision: str = "fp32",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """Epoch ``epoch_of = (epoch, epochs)``: one pass over ``train_batches`` (:func:`train_one_epoch`), then
    ``val_batches`` evaluated (:func:`evaluate_vae`, keys with ``val_prefix``); prints the epoch's line
    unless ``progress`` is False. Returns the epoch's per-image losses by name.

    Raises:
        ValueError: ``beta`` is not a finite number >= 0.
        NonFiniteLossError: the loss became inf/NaN.
    """
    epoch, epochs = epoch_of
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r} for epoch {epoch}")
    desc = f"epoch {epoch}/{epochs}"
    train = train_one_epoch(
        model, train_batches, optimizer, device, beta, epoch, progress, desc, 20, precision, scheduler
    )
    metrics = train.as_dict()
    if val_batches is not None:
        metrics.update(evaluate_vae(model, val_batches, device, beta).as_dict(val_prefix))
    if progress is not False:
        tqdm.write(f"{desc}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics
