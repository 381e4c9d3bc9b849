"""Sampling from a trained VAE and picturing the results: every figure the project draws lives here.

Every sampling function returns images on the CPU as (N, C, 32, 32) floats in [0, 1];
every ``visualize_*``/``plot_*`` function returns its matplotlib Figure (close it
with ``plt.close(fig)`` when done) and, given a ``save_path``, writes it atomically.
The figures are made with matplotlib's pyplot, which falls back to its
non-interactive Agg backend when there is no display, so they work headless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vae.model import VAE
from vae.storage import atomic_write
from vae.tiles import tile
from vae.utils import batch_images, evaluating, model_device, standard_normal

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot():  # noqa: ANN202 (the pyplot module)
    """matplotlib's pyplot, imported when a figure is drawn: the train stage uses this module's sampling
    but draws nothing, and importing matplotlib took 0.45 s of its start-up (python -X importtime)."""
    import matplotlib.pyplot as plt

    return plt


def _check_latent_dim(vae: VAE, latent_dim: int) -> None:
    if latent_dim != vae.latent_dim:
        raise ValueError(f"latent_dim={latent_dim} does not match the model's latent_dim={vae.latent_dim}")


@torch.inference_mode()
def decode_latents(vae: VAE, z: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Decode codes (N, latent_dim) in large batches; returns (N, C, 32, 32) on the CPU."""
    device = model_device(vae)
    with evaluating(vae):
        return torch.cat([vae.decode(chunk.to(device)).cpu() for chunk in z.split(batch_size)])


@torch.inference_mode()
def encode_means(vae: VAE, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Posterior means (N, latent_dim) on the CPU of images (N, C, 32, 32), float in [0, 1] or uint8."""
    device = model_device(vae)
    with evaluating(vae):
        return torch.cat([vae.encode(batch_images(chunk, device))[0].cpu() for chunk in images.split(batch_size)])


def pick_different_classes(labels: torch.Tensor) -> tuple[int, int]:
    """Indices of the first image and of the first image of another class after it; of the first two
    images when all are of one class (data of one class).

    Raises:
        ValueError: fewer than two images.
    """
    if len(labels) < 2:
        raise ValueError(f"interpolation needs two images, got {len(labels)}")
    others = torch.nonzero(labels != labels[0]).flatten()
    return 0, int(others[0]) if len(others) else 1


def generate_samples(
    vae: VAE,
    num_samples: int,
    latent_dim: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode ``num_samples`` codes drawn from N(0, I): (num_samples, C, 32, 32) on the CPU.

    The codes come from PyTorch's global generator on ``device``, or, given a
    (CPU) ``generator``, from it: then the samples depend on its seed alone,
    the same on every device.
    """
    _check_latent_dim(vae, latent_dim)
    z = standard_normal((num_samples, latent_dim), device or model_device(vae), generator)
    return decode_latents(vae, z)


def latent_grid(grid_size: int = 10, z_range: tuple[float, float] = (-3.0, 3.0)) -> torch.Tensor:
    """The grid_size² 2-D codes decoded by :func:`generate_grid`, (grid_size², 2), in row order.

    Column j has z₁ = the j-th of ``grid_size`` evenly spaced values (left to
    right, increasing); row i has z₂ decreasing from top to bottom, so the
    picture reads like a plot with z₂ on the vertical axis.
    """
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    low, high = z_range
    values = torch.linspace(low, high, grid_size)
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)


def generate_grid(
    vae: VAE,
    grid_size: int = 10,
    z_range: tuple[float, float] = (-3.0, 3.0),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode a grid_size×grid_size grid over a 2-D latent space: (grid_size², C, 32, 32), row order.

    Raises:
        ValueError: the model's latent space is not 2-D.
    """
    if vae.latent_dim != 2:
        raise ValueError(f"generate_grid needs a model with latent_dim=2, this one has latent_dim={vae.latent_dim}")
    z = latent_grid(grid_size, z_range)
    return decode_latents(vae, z.to(device or model_device(vae)))


def latent_path(z1: torch.Tensor, z2: torch.Tensor, num_steps: int = 10) -> torch.Tensor:
    """``num_steps`` evenly spaced codes from ``z1`` to ``z2``: (num_steps, latent_dim), on the CPU.

    The first row is ``z1`` and the last ``z2``, bit for bit (weights 0 and 1).
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 to include both end points, got {num_steps}")
    z1, z2 = z1.reshape(1, -1).float().cpu(), z2.reshape(1, -1).float().cpu()
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same size, got {z1.shape[1]} and {z2.shape[1]}")
    weights = torch.linspace(0.0, 1.0, num_steps).unsqueeze(1)
    return (1 - weights) * z1 + weights * z2


def interpolate_latent(vae: VAE, z1: torch.Tensor, z2: torch.Tensor, num_steps: int = 10) -> torch.Tensor:
    """Decode ``num_steps`` codes on the straight line from ``z1`` to ``z2`` (both included).

    z1, z2: (latent_dim,) or (1, latent_dim). Returns (num_steps, C, 32, 32) on
    the CPU; the first image is decoded at exactly z1 and the last at exactly z2.
    """
    path = latent_path(z1, z2, num_steps)
    _check_latent_dim(vae, path.shape[1])
    return decode_latents(vae, path)


def _image_figure(grid: torch.Tensor, figsize: tuple[float, float], title: str | None) -> Figure:
    """A figure of ``grid`` (C, H, W) in [0, 1]: in grays for C = 1, in colour for C = 3."""
    fig, ax = _pyplot().subplots(figsize=figsize)
    if grid.shape[0] == 3:
        ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy())
    else:
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, save_path: Path | str | None, **savefig_kwargs: object) -> None:
    """Write ``fig`` atomically (a temporary file, then a rename) when given a path; the format follows its suffix.

    A write cut short (a full disk, a kill) leaves the previous picture, never a truncated one.
    """
    if save_path is None:
        return
    image_format = Path(save_path).suffix.lstrip(".").lower() or "png"
    atomic_write(save_path, lambda tmp: fig.savefig(tmp, format=image_format, dpi=100, **savefig_kwargs))


def visualize_samples(
    samples: torch.Tensor,
    grid_shape: Sequence[int],
    save_path: Path | str | None = None,
    title: str | None = None,
) -> Figure:
    """Show ``samples`` (N, C, H, W) in a ``grid_shape = (rows, cols)`` mosaic; save a PNG when given a path."""
    rows, cols = grid_shape
    if len(samples) > rows * cols:
        raise ValueError(f"{len(samples)} samples do not fit a {rows}×{cols} grid")
    grid = tile(samples.detach().cpu().float(), cols)
    fig = _image_figure(grid, (1.2 * cols, 1.2 * rows + (0.4 if title else 0)), title)
    save_figure(fig, save_path, bbox_inches="tight")
    return fig


def grid_picture(images: torch.Tensor, per_row: int) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] tiled ``per_row`` to a row, 2-pixel white borders, as an 8-bit
    picture: (H', W') uint8 for gray images (C = 1), (H', W', 3) for colour (C = 3); each pixel the
    image's value × 255, rounded."""
    grid = tile(images.detach().cpu().float(), per_row).mul(255).round().to(torch.uint8)
    return grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).contiguous().numpy()


@torch.inference_mode()
def reconstruct(vae: VAE, images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Encode to the posterior mean and decode: (N, C, 32, 32) → (N, C, 32, 32) on the CPU."""
    with evaluating(vae):
        mu, _ = vae.encode(images.to(device or model_device(vae)))
        return vae.decode(mu).cpu()


def visualize_reconstruction(
    vae: VAE,
    images: torch.Tensor,
    device: torch.device | str | None = None,
    n: int = 10,
    save_path: Path | str | None = None,
) -> Figure:
    """Originals (top row) over their reconstructions (bottom row) for the first ``n`` images.

    Reconstructions decode the posterior mean, so the figure is deterministic.
    """
    originals = images[:n].detach().cpu().float()
    recon = reconstruct(vae, originals, device)
    grid = tile(torch.cat([originals, recon]), len(originals))
    fig = _image_figure(grid, (1.2 * len(originals), 2.8), "originals (top) and reconstructions (bottom)")
    save_figure(fig, save_path, bbox_inches="tight")
    return fig


@dataclass(frozen=True)
class LatentPlane:
    """A plane of the latent space: ``z = origin + x·axes[0] + y·axes[1]``; origin (D,), orthonormal axes (2, D)."""

    origin: torch.Tensor
    axes: torch.Tensor
    axis_name: str  # "z" (the latent coordinates themselves) or "PC" (principal directions)

    def codes(self, xy: torch.Tensor) -> torch.Tensor:
        """Latent codes (N, D) of plane coordinates (N, 2)."""
        return self.origin + xy @ self.axes

    def coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """Plane coordinates (N, 2) of latent codes (N, D): their orthogonal projection."""
        return (z - self.origin) @ self.axes.T


def latent_plane(means: torch.Tensor) -> LatentPlane:
    """The plane in which latent means (N, D) are shown (the scatter, the latent grid, the explorer):
    (z1, z2) for D ≤ 2 (D = 1: z1, with a flat second axis), else the plane through the means' mean
    spanned by their first two principal directions."""
    means = means.detach().cpu().float()
    dim = means.shape[1]
    if dim <= 2:
        axes = torch.eye(2, dim)  # D = 1: the second axis is zero, so y changes nothing
        return LatentPlane(torch.zeros(dim), axes, "z")
    origin = means.mean(0)
    _, _, v = torch.linalg.svd(means - origin, full_matrices=False)
    return LatentPlane(origin, v[:2].clone(), "PC")


def project_2d(points: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(N, D) → (N, 2): the points themselves when D ≤ 2 (D = 1: a zero second column), else their
    first two principal components (:func:`latent_plane`).

    Returns the projection and an axis-label prefix ("z" or "PC").
    """
    plane = latent_plane(points)
    return plane.coordinates(points.detach().cpu().float()), plane.axis_name


def plot_latent_space(
    means: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    save_path: Path | str | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter of latent means (N, D) coloured by class, with a legend of class names.

    Latent spaces of more than two dimensions are shown on their first two
    principal components.
    """
    xy, axis = project_2d(means.detach().cpu().float())
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab10")
    for index, name in enumerate(class_names):
        mask = labels.cpu() == index
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=3, alpha=0.6, color=cmap(index % 10), label=name)
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    ax.set_title(title or f"latent means of {len(means)} test images ({means.shape[1]}-D)")
    ax.legend(markerscale=4, loc="best", fontsize="small")
    fig.tight_layout()
    save_figure(fig, save_path)
    return fig
