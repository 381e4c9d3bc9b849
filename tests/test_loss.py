import math

import pytest
import torch

from vae.loss import vae_loss_from_logits
from vae.trainer import vae_loss_function


def hand_loss(recon, x, mu, logvar, beta):
    """The loss written out element by element, in float64."""
    bce_per_image = []
    for r_img, x_img in zip(recon.tolist(), x.tolist()):
        terms = [-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(r_img, x_img)]
        bce_per_image.append(sum(terms) / len(terms))
    bce = sum(bce_per_image) / len(bce_per_image)
    kld_per_image = [
        -0.5 * sum(1 + lv - m * m - math.exp(lv) for m, lv in zip(m_row, lv_row))
        for m_row, lv_row in zip(mu.tolist(), logvar.tolist())
    ]
    kld = sum(kld_per_image) / len(kld_per_image)
    return beta * bce + kld, bce, kld


def tiny_batch():
    recon = torch.tensor([[0.9, 0.2, 0.6, 0.4], [0.1, 0.7, 0.5, 0.99]])
    x = torch.tensor([[1.0, 0.0, 0.5, 0.25], [0.0, 1.0, 1.0, 0.75]])
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, -0.5], [0.3, 0.1]])
    return recon.view(2, 1, 2, 2), x.view(2, 1, 2, 2), mu, logvar


@pytest.mark.parametrize("beta", [1.0, 500.0])
def test_loss_matches_hand_computation(beta: float) -> None:
    recon, x, mu, logvar = tiny_batch()
    total, bce, kld = vae_loss_function(recon, x, mu, logvar, beta=beta)
    want_total, want_bce, want_kld = hand_loss(recon.view(2, -1), x.view(2, -1), mu, logvar, beta)
    assert bce.item() == pytest.approx(want_bce, abs=1e-5)
    assert kld.item() == pytest.approx(want_kld, abs=1e-5)
    assert total.item() == pytest.approx(want_total, rel=1e-5)


def test_beta_scales_only_reconstruction_term() -> None:
    recon, x, mu, logvar = tiny_batch()
    t1, b1, k1 = vae_loss_function(recon, x, mu, logvar, beta=1.0)
    t2, b2, k2 = vae_loss_function(recon, x, mu, logvar, beta=10.0)
    assert b1 == b2 and k1 == k2
    torch.testing.assert_close(t2 - t1, 9.0 * b1)


def test_default_beta_is_500() -> None:
    recon, x, mu, logvar = tiny_batch()
    total, bce, kld = vae_loss_function(recon, x, mu, logvar)
    torch.testing.assert_close(total, 500.0 * bce + kld)


def test_logits_loss_equals_probability_loss() -> None:
    recon, x, mu, logvar = tiny_batch()
    logits = torch.logit(recon)
    for a, b in zip(vae_loss_from_logits(logits, x, mu, logvar, 7.0), vae_loss_function(recon, x, mu, logvar, 7.0)):
        torch.testing.assert_close(a, b)


def test_saturated_outputs_stay_finite() -> None:
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]]).view(1, 1, 2, 2)
    wrong = (1 - x).requires_grad_()  # exactly 0 where the target is 1 and vice versa
    mu, logvar = torch.zeros(1, 2), torch.zeros(1, 2)
    total, bce, _ = vae_loss_function(wrong, x, mu, logvar)
    assert torch.isfinite(total) and torch.isfinite(bce)
    total.backward()
    assert torch.isfinite(wrong.grad).all()
    huge_logits = torch.full((1, 1, 2, 2), 1e4) * (1 - 2 * x)  # confidently wrong, sigmoid saturates
    assert torch.isfinite(vae_loss_from_logits(huge_logits, x, mu, logvar).total)
