"""vae.fast_cpu computes what torch.nn's convolutions compute, only faster on the CPU."""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vae import fast_cpu
from vae.classifier import ImageClassifier
from vae.fast_cpu import Conv2d, ConvTranspose2d, ReLU, enable, map_per_core, with_torch_nn_layers
from vae.loss import vae_loss_from_logits
from vae.model import VAE
from vae.trainer import resolve_precision

GEOMETRIES = [  # (class, torch.nn class, constructor args, input shape)
    (ConvTranspose2d, nn.ConvTranspose2d, (32, 1, 3, 2, 1, 1), (4, 32, 16, 16)),  # the decoder's last layer
    (ConvTranspose2d, nn.ConvTranspose2d, (64, 32, 3, 2, 1, 1), (4, 64, 8, 8)),
    (ConvTranspose2d, nn.ConvTranspose2d, (16, 2, 4, 2, 1, 0), (3, 16, 7, 5)),  # even kernel, 2 outputs
    (ConvTranspose2d, nn.ConvTranspose2d, (9, 1, 3, 1, 0, 0), (3, 9, 6, 7)),  # stride 1, no padding
    (Conv2d, nn.Conv2d, (1, 32, 3, 2, 1), (4, 1, 32, 32)),
]


def _forward_backward(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor | None = None) -> tuple:
    x = x.clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    y.backward(torch.ones_like(y) if grad is None else grad)
    return y, x.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("ours", "theirs", "args", "shape"), GEOMETRIES)
def test_float32_matches_torch_nn(ours: type, theirs: type, args: tuple, shape: tuple, channels_last: bool) -> None:
    torch.manual_seed(0)
    layer = ours(*args)
    reference = theirs(*args)
    reference.load_state_dict(layer.state_dict())
    assert layer.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(reference(x))
    for got, expected in zip(_forward_backward(layer, x, grad), _forward_backward(reference, x, grad)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_gives_bf16_outputs_and_float32_weight_gradients() -> None:
    torch.manual_seed(0)
    for ours, theirs, args, shape in GEOMETRIES:
        layer = ours(*args)
        reference = theirs(*args)
        reference.load_state_dict(layer.state_dict())
        x = torch.rand(shape)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = _forward_backward(layer, x)
            expected = _forward_backward(reference, x)  # stock autocast: everything in bf16
        overlap_add = ours is ConvTranspose2d and args[1] * args[2] ** 2 <= args[0]  # few output channels
        assert got[0].dtype == (torch.float32 if overlap_add else torch.bfloat16)
        assert got[1].dtype == got[2].dtype == got[3].dtype == torch.float32
        for g, e in zip(got, expected):  # same values up to bf16 rounding (8 bits of mantissa)
            torch.testing.assert_close(g.float(), e.float(), rtol=0.02, atol=0.02 * e.abs().max().item())


def test_the_classifiers_bias_free_convolutions_train_in_bf16_as_torch_nn_does() -> None:
    """The classifier stage enables the fast layers: its convolutions have no bias and feed batch norm."""
    torch.manual_seed(0)
    reference = ImageClassifier(num_classes=4, in_channels=3)
    ours = enable(copy.deepcopy(reference))
    assert {type(m) for m in ours.modules()} >= {Conv2d} and ours.body[0].bias is None
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 4, (16,))
    results = []
    for model in (ours, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss, *(p.grad for p in model.parameters())))
    assert all(p.grad.dtype == torch.float32 for p in ours.parameters())
    for got, expected in zip(*results):  # the same up to bf16 rounding
        torch.testing.assert_close(got.float(), expected.float(), rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_enable_and_undo_keep_weights_keys_and_function() -> None:
    torch.manual_seed(0)
    ours = enable(VAE(latent_dim=3))
    assert {Conv2d, ConvTranspose2d} <= {type(m) for m in ours.modules()}
    assert nn.Conv2d not in {type(m) for m in ours.modules()}  # every convolution swapped
    stock = VAE(latent_dim=3)  # plain torch.nn: the state dict of a fast model loads as it is
    stock.load_state_dict(ours.state_dict())
    assert list(stock.state_dict()) == list(ours.state_dict())
    kinds = {type(m) for m in with_torch_nn_layers(enable(VAE(latent_dim=3))).modules()}
    assert nn.ConvTranspose2d in kinds and ConvTranspose2d not in kinds and Conv2d not in kinds and ReLU not in kinds
    z = torch.randn(5, 3)
    torch.testing.assert_close(ours.decode(z), stock.decode(z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])  # 1e4: a saturated sigmoid
def test_training_bce_matches_torch_binary_cross_entropy_with_logits(scale: float) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(8, 1, 32, 32) * scale).requires_grad_()
    x = torch.rand(8, 1, 32, 32)
    mu, logvar = torch.zeros(8, 2), torch.zeros(8, 2)
    got = vae_loss_from_logits(logits, x, mu, logvar, beta=1.0).bce
    (grad,) = torch.autograd.grad(got, logits)
    expected = F.binary_cross_entropy_with_logits(logits, x)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-9)


def test_resolve_precision() -> None:
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"  # not measured on a GPU yet
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'half'"):
        resolve_precision("half", torch.device("cpu"))


@pytest.mark.parametrize("cap", ["ATEN_CPU_CAPABILITY=avx2", "ONEDNN_MAX_CPU_ISA=AVX2"])
def test_auto_is_fp32_when_pytorch_is_capped_below_native_bf16(cap: str) -> None:
    """As on a CPU without AVX-512, whatever this one has: either cap leaves bf16 emulated (slower)."""
    name, value = cap.split("=")
    code = "import torch, vae.trainer as t; print(t.resolve_precision('auto', torch.device('cpu')))"
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    result = subprocess.run([sys.executable, "-c", code], env=env | {name: value}, capture_output=True, text=True)
    assert result.stdout.strip() == "fp32", result.stderr


def test_frozen_weights_get_no_gradient_and_inputs_still_do() -> None:
    layer = ConvTranspose2d(8, 4, 3, 2, 1, 1).requires_grad_(False)
    x = torch.rand(2, 8, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert x.grad is not None and x.grad.shape == x.shape


def test_inference_in_bf16_fuses_the_decoders_relus_and_gives_the_same_images() -> None:
    """Without gradients, under CPU bf16 autocast, the decoder's transposed convolutions apply the ReLU after
    them in oneDNN's kernel: the same logits as the layers one by one. A ReLU given any other tensor clamps it."""
    torch.manual_seed(0)
    model = enable(VAE(latent_dim=2)).eval()
    relus = [m for m in model.decoder.deconv if isinstance(m, nn.ReLU)]
    assert [type(m) for m in relus] == [nn.ReLU, ReLU, ReLU]  # the two after a transposed convolution
    z = torch.randn(64, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.inference_mode():
            fused = model.decoder.logits(z)
            after_first = model.decoder.deconv[:3](model.decoder.fc(z))  # ReLU, Unflatten, the transposed convolution
            assert getattr(after_first, "_vae_relu_applied", False) == fast_cpu._FUSED_RELU  # oneDNN applied its ReLU
        separate = model.decoder.logits(z)  # with gradients: the convolution and the ReLU one by one
    torch.testing.assert_close(fused, separate.detach(), rtol=0, atol=0)
    assert torch.equal(relus[1](torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_map_per_core_keeps_the_order_draws_in_order_and_raises_the_first_failure() -> None:
    drawn = []

    def items():
        for i in range(20):
            drawn.append(i)
            yield i

    threads = torch.get_num_threads()
    results = map_per_core(lambda i: (i, torch.get_num_threads()), items(), torch.device("cpu"))
    first = next(results)
    assert first == (0, 1 if threads > 1 else threads)  # a worker runs its item on one core
    assert len(drawn) <= max(1, 2 * threads)  # items are taken a few ahead of their results, in order
    assert [i for i, _ in results] == list(range(1, 20)) and drawn == list(range(20))
    assert torch.get_num_threads() == threads  # the caller's thread keeps its count

    def fail_at_3(i: int) -> int:
        if i == 3:
            raise MemoryError("out of memory at 3")
        return i

    with pytest.raises(MemoryError, match="at 3"):
        list(map_per_core(fail_at_3, range(10), torch.device("cpu")))
