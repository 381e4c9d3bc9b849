"""The latent explorer: one self-contained HTML page to hover over the latent map and see the decoded image.

The page (``explorer.html`` beside this module is its template) shows the test
set's latent means coloured by class on the left and, on the right, the image
decoded at the pointer (without the padding of 28 × 28 data sets), enlarged with square
pixels. Nothing runs a model in the
browser: :func:`write_explorer` decodes a dense ``resolution × resolution`` grid
over the shown square and embeds it as one PNG sprite, and the page shows the
cell nearest the pointer. The page needs no network: its script, style, data and
images are all inline, so it opens from disk and from MLflow's artifact view.

For latent_dim > 2 the map is the plane through the mean of the test set's latent
means spanned by their first two principal directions (the other coordinates at
the mean); for latent_dim 2 it is (z1, z2) itself.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from vae.generator import decode_latents, latent_grid, latent_plane
from vae.model import VAE
from vae.storage import atomic_write
from vae.tiles import tile

TEMPLATE = Path(__file__).with_name("explorer.html")
# matplotlib's tab10, the colours of the evaluate stage's latent-space scatter
CLASS_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def sprite(images: torch.Tensor, resolution: int, border: int = 0) -> bytes:
    """Images (resolution², C, H, W) in [0, 1], in row order, tiled into one PNG (no gaps): grayscale
    for C = 1, RGB for C = 3.

    Each image loses ``border`` pixels on every side: the 2-pixel frame the pipeline pads 28 × 28
    data sets with (Fashion-MNIST's picture is its central 28 × 28 pixels), a quarter fewer to embed.
    """
    picture = images[..., border : images.shape[-2] - border, border : images.shape[-1] - border]
    tiles = tile(picture.float().clamp(0, 1), resolution, padding=0)  # (C, res·h, res·w)
    pixels = (tiles * 255).round().to(torch.uint8)
    array = pixels[0].numpy() if len(pixels) == 1 else pixels.permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def explorer_html(
    model: VAE,
    test_means: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    resolution: int = 64,
    plane_range: tuple[float, float] = (-3.0, 3.0),
    title: str = "VAE: latent explorer",
    border: int = 0,
) -> str:
    """The page, as text: ``resolution``² decodes over the square ``plane_range``² of :func:`latent_plane`.

    Args:
        model: the VAE whose decoder draws the images.
        test_means: latent means (N, latent_dim) of the test images, shown as the map.
        labels: their classes (N,), indices into ``class_names``.
        resolution: grid points per side; the page shows the grid point nearest the pointer.
        plane_range: (low, high) of both plane coordinates.
        border: padding pixels left out of each shown image (:func:`vae.data.border` of the data set).
    """
    plane = latent_plane(test_means)
    grid = latent_grid(resolution, plane_range)  # row order: x increasing, y decreasing down the rows
    images = decode_latents(model, plane.codes(grid))
    xy = plane.coordinates(test_means.detach().cpu().float())
    dim = test_means.shape[1]
    if plane.axis_name == "PC":
        note = (
            f"The latent space has {dim} dimensions: the map is the plane through the mean of the test "
            "set's latent means spanned by their first two principal directions (PC1, PC2); the other "
            "coordinates stay at that mean."
        )
    elif dim == 1:
        note = "The latent space has 1 dimension: only z1 changes the image; the vertical axis is flat."
    else:
        note = "The latent space has 2 dimensions: the map is (z1, z2) itself."
    data = {
        "title": title,
        "note": note,
        "axis": plane.axis_name,
        "resolution": resolution,
        "range": list(plane_range),
        "classes": list(class_names),
        "colours": list(CLASS_COLOURS),
        "x": [round(v, 4) for v in xy[:, 0].tolist()],
        "y": [round(v, 4) for v in xy[:, 1].tolist()],
        "label": labels.tolist(),
        "sprite": "data:image/png;base64," + base64.b64encode(sprite(images, resolution, border)).decode(),
        "tile": images.shape[-1] - 2 * border,
    }
    # "</" cannot end the script element early inside JSON written this way
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return TEMPLATE.read_text().replace("__TITLE__", title).replace("__DATA__", payload)


def write_explorer(path: Path | str, *args: object, **kwargs: object) -> Path:
    """Write :func:`explorer_html`'s page to ``path`` atomically; returns the path."""
    page = explorer_html(*args, **kwargs)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return Path(path)
