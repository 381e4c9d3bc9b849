"""Opt-in CPU speed-ups for the VAE: faster convolution layers, and an allocator setting for training.

The model (:mod:`vae.model`) is plain ``torch.nn``; :func:`enable` swaps its
convolutions, in place, for the subclasses below, which keep ``torch.nn``'s
parameters, state-dict keys and outputs (up to float rounding) and change only
how the CPU computes them, where oneDNN's kernels are uneven (figures from this
model's layers, batch 128, on an AVX512-BF16 CPU; the pipeline applies it, the
benchmark measures what it buys, see docs/performance.md):

- Under CPU bfloat16 autocast (``train.precision: bf16``), oneDNN's bf16 forward
  and input-gradient kernels run about twice as fast as float32, but its bf16
  *weight*-gradient kernels run 1.1–3× slower. So the forward pass and the
  input gradient run in bf16 and the weight and bias gradients in float32,
  from the same bf16 activations.
- A transposed convolution to few output channels (the decoder's last layer,
  32→1) runs ~7× under the speed of its own input gradient. Its forward pass
  is computed instead as a 1×1 convolution to ``C_out·kH·kW`` columns and an
  overlap-add of the columns onto the output (what ``F.fold`` does, whose own
  backward pass is slower still), the gradients by the usual kernels. The
  overlap-add sums in float32 and returns float32 even under bf16 autocast, so
  the decoder's logits are not rounded to bf16: with them rounded, 10 epochs of
  bf16 training ended ~0.25 nats per image above float32; without, within seed noise.

- In inference (no gradients) under CPU bf16 autocast, a transposed convolution
  followed by a ReLU in an ``nn.Sequential`` applies the ReLU in oneDNN's kernel,
  and the ReLU, a :class:`ReLU`, passes its output on: one pass over the
  activations fewer per layer (the IW bound's decoder passes: ~5% more per second).

On CUDA, and for layers these cases do not cover, they are exactly their base classes.

:func:`keep_freed_memory` tells glibc to keep freed memory for reuse: a
process-wide setting, so only a program's entry point (the train, classifier and
evaluate stages, the benchmarks) calls it, never library code.

:func:`map_per_core` runs independent inference passes side by side, one per
core, instead of one at a time on all of them: the passes never wait for each
other between layers (two cores, the IW bound's decoder passes: about 6% more
per second than one pass on both; ``benchmarks/pipeline_times.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import nn

_Pair = tuple[int, int]
_RELU_APPLIED = "_vae_relu_applied"  # set on a tensor whose ReLU its convolution applied
# oneDNN's fused convolution + ReLU, as torch.compile uses it: in PyTorch's builds with oneDNN
_FUSED_RELU = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_transpose_pointwise")
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def _cpu_bf16_autocast(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def transposed_columns(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A transposed convolution's columns: each input pixel times the kernel, before the overlap-add.

    x: (B, C_in, H, W); weight: (C_in, C_out, kH, kW), in x's dtype, used as a 1×1 convolution to
    C_out·kH·kW channels. Returns (B, C_out·kH·kW, H, W), channel c·kH·kW + i·kW + j for output
    channel c and kernel position (i, j).
    """
    return torch.nn.functional.conv2d(x, weight.flatten(1).t()[:, :, None, None])


def _overlap_add(columns: torch.Tensor, kernel: _Pair, stride: _Pair, padding: _Pair, size: _Pair) -> torch.Tensor:
    """Sum each input pixel's ``kH×kW`` patch onto the output grid: a transposed convolution's scatter.

    columns: (B, C_out·kH·kW, H, W); returns (B, C_out, *size) in float32.
    """
    batch, _, height, width = columns.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    # Contiguous float32 columns: the strided adds run 2x faster, and up to
    # kH·kW overlapping terms are summed without bf16 rounding.
    columns = columns.to(torch.float32, memory_format=torch.contiguous_format).unflatten(1, (-1, kh, kw))
    canvas = columns.new_zeros(
        batch,
        columns.shape[1],
        max(sh * (height - 1) + kh, ph + size[0]),
        max(sw * (width - 1) + kw, pw + size[1]),
    )
    for i in range(kh):
        for j in range(kw):
            canvas[:, :, i : i + sh * height : sh, j : j + sw * width : sw] += columns[:, :, i, j]
    return canvas[:, :, ph : ph + size[0], pw : pw + size[1]].contiguous()


class _Convolution(torch.autograd.Function):
    """A 2-D (transposed) convolution computed in ``dtype`` with float32 weight and bias gradients.

    x: (B, C_in, H, W) in any float dtype; weight and bias in float32. Returns
    the output in ``dtype`` (float32 from the overlap-add path); each gradient
    has the dtype of its input.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, transposed, dtype):  # noqa: ANN001, ANN205
        x_c, weight_c = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x_c, weight_c, weight)
        ctx.x_dtype = x.dtype
        ctx.bias_shape = None if bias is None else list(bias.shape)
        ctx.geometry = (list(stride), list(padding), [1, 1], transposed, list(output_padding), 1)
        out_channels, kh, kw = weight.shape[1:] if transposed else (0, 0, 0)
        if transposed and out_channels * kh * kw <= x.shape[1]:
            height = (x.shape[2] - 1) * stride[0] - 2 * padding[0] + kh + output_padding[0]
            width = (x.shape[3] - 1) * stride[1] - 2 * padding[1] + kw + output_padding[1]
            out = _overlap_add(transposed_columns(x_c, weight_c), (kh, kw), stride, padding, (height, width))
            return out if bias is None else out + bias[:, None, None]  # float32: no need to round the sums
        bias_c = None if bias is None else bias.to(dtype)
        return torch.ops.aten.convolution(x_c, weight_c, bias_c, *ctx.geometry)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x_c, weight_c, weight = ctx.saved_tensors
        backward = torch.ops.aten.convolution_backward
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if needs_x:
            grad_x = backward(grad.to(x_c.dtype), x_c, weight_c, None, *ctx.geometry, [True, False, False])[0]
            grad_x = grad_x.to(ctx.x_dtype)
        if needs_weight or needs_bias:
            mask = [False, needs_weight, needs_bias and ctx.bias_shape is not None]
            _, grad_weight, grad_bias = backward(grad.float(), x_c.float(), weight, ctx.bias_shape, *ctx.geometry, mask)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d``; under CPU bf16 autocast, float32 weight gradients (see the module docstring)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if _cpu_bf16_autocast(input) and self.padding_mode == "zeros" and self.dilation == (1, 1) and self.groups == 1:
            return _Convolution.apply(input, weight, bias, self.stride, self.padding, (0, 0), False, torch.bfloat16)
        return super()._conv_forward(input, weight, bias)


def _transposed_with_relu(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """relu(conv(x)) in bf16 by one oneDNN kernel, the output marked for the :class:`ReLU` after it."""
    bias = None if conv.bias is None else conv.bias.to(torch.bfloat16)
    geometry = (list(conv.padding), list(conv.output_padding), list(conv.stride), [1, 1], 1)
    weight = conv.weight.to(torch.bfloat16)
    out = torch.ops.mkldnn._convolution_transpose_pointwise(x.to(torch.bfloat16), weight, bias, *geometry, "relu", [], "")
    setattr(out, _RELU_APPLIED, True)
    return out


class ReLU(nn.ReLU):
    """``torch.nn.ReLU``, which passes on a tensor whose ReLU the convolution before it applied."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input if getattr(input, _RELU_APPLIED, False) else super().forward(input)


class ConvTranspose2d(nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d``, computed faster on the CPU (see the module docstring)."""

    relu_follows = False  # set by enable(): a ReLU comes next in its nn.Sequential

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        bf16 = _cpu_bf16_autocast(input)
        fusable = bf16 and self.relu_follows and _FUSED_RELU and input.dim() == 4 and output_size is None
        if fusable and not torch.is_grad_enabled():
            return _transposed_with_relu(self, input)
        if (
            input.device.type == "cpu"
            and input.dim() == 4
            and output_size is None
            and self.dilation == (1, 1)
            and self.groups == 1
            and (bf16 or input.dtype == torch.float32)
        ):
            geometry = (self.stride, self.padding, self.output_padding, True)
            dtype = torch.bfloat16 if bf16 else torch.float32
            return _Convolution.apply(input, self.weight, self.bias, *geometry, dtype)
        return super().forward(input, output_size)


def enable(model: nn.Module) -> nn.Module:
    """Swap ``model``'s ``torch.nn`` convolutions for :class:`Conv2d` and :class:`ConvTranspose2d`, and the
    ReLUs after the transposed ones for :class:`ReLU`, in place.

    The subclasses hold no parameters of their own: the weights, the state-dict keys
    and the function stay the same, and checkpoints load either way. Returns ``model``.
    """
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = Conv2d
        elif type(module) is nn.ConvTranspose2d:
            module.__class__ = ConvTranspose2d
    for sequence in (m for m in model.modules() if isinstance(m, nn.Sequential)):
        for layer, after in zip(sequence, list(sequence)[1:]):
            if type(layer) is ConvTranspose2d and type(after) is nn.ReLU and layer.dilation == (1, 1) and layer.groups == 1:
                layer.relu_follows = True
                after.__class__ = ReLU
    return model


def with_torch_nn_layers(model: nn.Module) -> nn.Module:
    """Undo :func:`enable`: turn ``model``'s fast layers back into ``torch.nn``'s, in place; returns ``model``."""
    for module in model.modules():
        if isinstance(module, (Conv2d, ConvTranspose2d, ReLU)):
            module.__class__ = module.__class__.__bases__[0]
            module.__dict__.pop("relu_follows", None)
    return model


def keep_freed_memory() -> None:
    """Tell glibc's allocator to keep freed memory instead of handing it back to the OS after every step.

    Otherwise each training step's activations are mapped afresh and
    page-faulted in (about 5× more page faults, 10–20% slower on the CPU).
    Process-wide: call it from a program's entry point. A no-op off glibc.
    """
    import ctypes
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, "mallopt"):  # not glibc (musl, macOS): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # serve blocks up to 32 MiB from the reusable heap
    libc.mallopt(m_trim_threshold, 512 * 2**20)  # return memory to the OS only above 512 MiB free


def map_per_core(work: Callable[[_Item], _Result], items: Iterable[_Item], device: torch.device) -> Iterator[_Result]:
    """``work(item)`` for each of ``items``, yielded in order; on the CPU, up to one item per core at a time.

    Each worker thread runs its items on one core (PyTorch's thread count is per thread), so
    ``torch.get_num_threads()`` items are in flight, and at most twice that many are taken from ``items``
    ahead of their results: an iterator that draws noise in order draws the same noise for each item.
    Grad mode, inference mode and autocast are per thread too: ``work`` sets what it needs. On CUDA, or
    with one thread, it is a plain ``map``. The first exception of ``work`` is raised here.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="vae-core", initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending = deque()
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a failure, or a consumer that stops early: what has not started never will
            for future in pending:
                future.cancel()


__all__ = [
    "Conv2d",
    "ConvTranspose2d",
    "ReLU",
    "enable",
    "keep_freed_memory",
    "map_per_core",
    "transposed_columns",
    "with_torch_nn_layers",
]
