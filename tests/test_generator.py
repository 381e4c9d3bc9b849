import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from vae.data import CLASS_NAMES
from vae.generator import (
    generate_grid,
    generate_samples,
    interpolate_latent,
    latent_grid,
    latent_path,
    plot_latent_space,
    visualize_reconstruction,
    visualize_samples,
)
from vae.model import VAE


@pytest.fixture
def vae() -> VAE:
    return VAE(latent_dim=2)


def test_generate_samples_shape_range_on_cpu(vae: VAE) -> None:
    samples = generate_samples(vae, num_samples=20, latent_dim=2, device="cpu")
    assert samples.shape == (20, 1, 32, 32) and samples.device.type == "cpu"
    assert samples.min() >= 0 and samples.max() <= 1


def test_generate_samples_rejects_wrong_latent_dim(vae: VAE) -> None:
    with pytest.raises(ValueError, match="latent_dim=3"):
        generate_samples(vae, 4, latent_dim=3)


def test_generate_grid_row_order(vae: VAE) -> None:
    grid = generate_grid(vae, grid_size=4, z_range=(-3, 3), device="cpu")
    assert grid.shape == (16, 1, 32, 32)
    z = latent_grid(4, (-3, 3))
    assert z[0].tolist() == [-3.0, 3.0] and z[3].tolist() == [3.0, 3.0] and z[15].tolist() == [3.0, -3.0]
    with torch.no_grad():
        torch.testing.assert_close(grid[5], vae.decode(z[5:6])[0])


def test_generate_grid_needs_2d_latent_space() -> None:
    with pytest.raises(ValueError, match="latent_dim=2.*latent_dim=8"):
        generate_grid(VAE(latent_dim=8))


def test_interpolation_endpoints_are_exact(vae: VAE) -> None:
    z1, z2 = torch.tensor([0.3, -1.7]), torch.tensor([[2.1, 0.4]])
    codes = latent_path(z1, z2, num_steps=7)
    assert torch.equal(codes[0], z1) and torch.equal(codes[-1], z2[0])
    images = interpolate_latent(vae, z1, z2, num_steps=7)
    assert images.shape == (7, 1, 32, 32)
    with torch.no_grad():  # one batch or another may round the last bit differently
        torch.testing.assert_close(images[0], vae.decode(z1.view(1, 2))[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(images[-1], vae.decode(z2)[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(images[3], vae.decode(((z1 + z2) / 2).view(1, 2))[0], rtol=0, atol=1e-6)


def test_visualizations_return_figures_and_write_pngs(vae: VAE, tmp_path: Path) -> None:
    fig = visualize_samples(generate_samples(vae, 20, 2), grid_shape=(4, 5), save_path=tmp_path / "s.png", title="t")
    assert isinstance(fig, Figure)
    fig = visualize_reconstruction(vae, torch.rand(12, 1, 32, 32), "cpu", n=10, save_path=tmp_path / "sub" / "r.png")
    assert isinstance(fig, Figure)
    for name in ("s.png", "sub/r.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_too_many_samples_for_grid(vae: VAE) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        visualize_samples(torch.rand(7, 1, 32, 32), (2, 3))


def test_pngs_are_written_headless(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    code = (
        "import torch, matplotlib.pyplot as plt; from vae.model import VAE; from vae.generator import *;"
        f"visualize_samples(generate_samples(VAE(), 4, 2), (2, 2), save_path=r'{tmp_path / 'h.png'}');"
        "print(plt.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().lower() == "agg"
    assert (tmp_path / "h.png").stat().st_size > 0


def test_a_figure_write_cut_short_keeps_the_previous_picture(
    vae: VAE, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples, target, latent = generate_samples(vae, 4, 2), tmp_path / "s.png", tmp_path / "latent.png"
    visualize_samples(samples, (2, 2), save_path=target)
    plot_latent_space(torch.randn(20, 2), torch.arange(20) % 10, CLASS_NAMES, save_path=latent)
    before = {path: path.read_bytes() for path in (target, latent)}

    def full_disk(self: Figure, fname: object, **kwargs: object) -> None:
        Path(str(fname)).write_bytes(b"\x89PNG\r\n\x1a\n half a picture")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left"):
        visualize_samples(samples, (2, 2), save_path=target)
    with pytest.raises(OSError, match="No space left"):
        plot_latent_space(torch.randn(20, 2), torch.arange(20) % 10, CLASS_NAMES, save_path=latent)
    assert {path: path.read_bytes() for path in (target, latent)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent.png", "s.png"]  # no temporary left behind
