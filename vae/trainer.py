"""Training loop and held-out evaluation for :class:`vae.model.VAE`.

Batches may be image tensors (B, C, 32, 32) or ``(images, labels)`` pairs, as
a ``DataLoader`` over a ``TensorDataset`` yields them. Images are floats in
[0, 1] or uint8 in [0, 255] (converted on the device, so compact uint8 data can
be shipped to a GPU as is).
"""

from __future__ import annotations

import math
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

    "auto" is bf16 on CPUs that compute bf16 natively (AVX512-BF16 or AMX), where
    training runs ~25% faster and ends within seed noise of fp32 (README,
    Performance), and fp32 elsewhere: on CPUs without them bf16 is emulated and
    slower, and on CUDA its gain has not been measured yet.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    native_bf16 = any(
        getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return "bf16" if device.type == "cpu" and native_bf16 else "fp32"


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
    """One pass over ``batches``; returns the epoch's per-image average losses.

    ``scheduler``, if any, is stepped after every optimizer step (a per-batch
    schedule, see :func:`make_scheduler`).

    ``precision="bf16"`` runs the forward pass under bfloat16 autocast (the
    backward pass follows it; on the CPU the convolutions' weight gradients are
    computed in float32, see :mod:`vae.fast_cpu`); weights, optimizer state and
    the loss stay in float32. It pays off only where the hardware computes bf16
    natively (CPUs with AVX512-BF16 or AMX, recent GPUs); elsewhere it is
    slower. "auto" picks one for ``device`` (:func:`resolve_precision`).

    The losses are summed on the device and read back only every
    ``refresh_every`` steps (to refresh the progress bar and check for
    non-finite values), so a GPU is never stalled by a per-step sync.

    Raises:
        NonFiniteLossError: the loss became inf/NaN; names the epoch and step.
    """
    precision = resolve_precision(precision, device)
    model.train()
    sums = torch.zeros(3, device=device)
    first_bad_step = torch.full((), -1, device=device)
    seen = 0
    bar = _progress(batches, desc or f"epoch {epoch}", progress)

    def check(step: int) -> None:
        bad = int(first_bad_step)
        if bad >= 0:
            raise NonFiniteLossError(epoch, bad)
        if seen:
            loss, bce, kld = (sums / seen).tolist()
            bar.set_postfix(loss=f"{loss:.2f}", bce=f"{bce:.4f}", kl=f"{kld:.2f}", refresh=False)

    step = 0
    try:
        for step, batch in enumerate(bar, start=1):
            x = batch_images(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits, mu, logvar = model.forward_logits(x)
            terms = vae_loss_from_logits(logits.float(), x, mu.float(), logvar.float(), beta)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()

            detached = torch.stack(terms).detach()
            # the step goes in as a kernel argument: a tensor made of it would be a copy from the host each step
            first_bad_step.masked_fill_((first_bad_step < 0) & ~torch.isfinite(detached).all(), step)
            sums += detached * x.shape[0]
            seen += x.shape[0]
            if step % refresh_every == 0:
                check(step)
        check(step)
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
    """Train ``model`` for ``epochs`` passes over ``train_loader``.

    Args:
        model: the VAE, already on ``device``.
        train_loader: iterable of batches (see the module docstring); re-iterated each epoch.
        optimizer: optimizer over ``model``'s parameters.
        device: where the batches are moved to.
        epochs: number of the last epoch to train (epochs are numbered from 1).
        beta: weight of the reconstruction term (not of KL, unlike the β-VAE paper), or a
            function of the epoch (numbered from 1) giving each epoch's β — a schedule.
        val_loader: optional held-out batches, evaluated after every epoch.
        on_epoch_end: called as ``on_epoch_end(epoch, metrics)`` after every epoch,
            with ``metrics`` the epoch's ``loss``, ``reconstruction_loss``,
            ``kl_loss`` and, with a ``val_loader``, the same with ``val_prefix``.
        progress: show a tqdm bar per epoch with the running losses (None: only on a terminal).
        start_epoch: first epoch to train, to continue an interrupted run.
        val_prefix: prefix of the held-out metrics' keys ("val_", as the pipeline's validation split).
        history: the earlier epochs' history, extended in place (to continue a run).
        precision: "fp32", "bf16" for bfloat16 autocast in training (see :func:`train_one_epoch`),
            or "auto" (:func:`resolve_precision`); evaluation always runs in float32.
        scheduler: a learning-rate schedule stepped after every batch (:func:`make_scheduler`).

    Returns:
        History: a list of per-epoch values under each key of ``metrics``.

    Raises:
        NonFiniteLossError: the loss became inf/NaN (the error names epoch and step).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    beta_at = beta if callable(beta) else (lambda epoch: beta)
    history = {} if history is None else history
    for epoch in range(start_epoch, epochs + 1):
        epoch_beta = beta_at(epoch)
        if not math.isfinite(epoch_beta) or epoch_beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {epoch_beta!r} for epoch {epoch}")
        train = train_one_epoch(
            model,
            train_loader,
            optimizer,
            device,
            epoch_beta,
            epoch,
            progress,
            desc=f"epoch {epoch}/{epochs}",
            precision=precision,
            scheduler=scheduler,
        )
        metrics = train.as_dict()
        if val_loader is not None:
            metrics.update(evaluate_vae(model, val_loader, device, epoch_beta).as_dict(val_prefix))
        for key, value in metrics.items():
            history.setdefault(key, []).append(value)
        if progress is not False:
            tqdm.write(f"epoch {epoch}/{epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return history
