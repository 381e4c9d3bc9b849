"""Figures of the latent space (the image mosaics live in :mod:`vae.generator`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from vae.generator import save_figure


def project_2d(points: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(N, D) → (N, 2): the points themselves when D ≤ 2, else their first two principal components.

    Returns the projection and an axis-label prefix ("z" or "PC").
    """
    if points.shape[1] == 1:
        return torch.cat([points, torch.zeros_like(points)], dim=1), "z"
    if points.shape[1] == 2:
        return points, "z"
    centred = points - points.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T, "PC"


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
