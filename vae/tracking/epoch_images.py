"""What a training run shows after every epoch in MLflow's image view: samples, reconstructions, the latent grid.

The pictures of one run use the same latent codes and the same test images every
epoch (drawn once, from a generator seeded by ``train.seed``), so what changes from
one epoch to the next is the model. Each is logged with ``mlflow.log_image(key=…,
step=epoch)``: the run's page shows a key with a step slider, and the chart view
sets the same key side by side for the runs selected. ``mlflow.log_images_every``
says how often (0: never); it is no train param in dvc.yaml, so changing it
retrains nothing. Drawing the codes from a generator of their own leaves the
training's random numbers, and so its results, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import torch

from vae.config import Params
from vae.generator import decode_latents, grid_picture, latent_grid, reconstruct
from vae.model import VAE
from vae.utils import standard_normal

SAMPLES, SAMPLES_PER_ROW = 64, 8  # decoded from fixed z ~ N(0, I), as PyTorch's examples/vae shows them
RECONSTRUCTIONS = 8  # test images: originals (top row) over their reconstructions (bottom row)
KEYS = ("samples", "reconstructions", "latent_grid")  # the last for latent_dim 2 only
PICTURED_TAG = "pictures_epoch"  # the run's last epoch with pictures, recorded here, not read from MLflow's file names


@dataclass(frozen=True)
class EpochImages:
    """The fixed inputs of a run's per-epoch pictures, and how often they are logged."""

    codes: torch.Tensor  # (SAMPLES, latent_dim): the samples' z
    originals: torch.Tensor  # (RECONSTRUCTIONS, C, 32, 32) float in [0, 1]: the first held-out images
    grid_codes: torch.Tensor | None  # (grid_size², 2) over generate.grid_range, for latent_dim 2
    grid_size: int
    every: int  # log after every N-th epoch; 0: never

    @classmethod
    def for_run(cls, params: Params, images: torch.Tensor) -> EpochImages:
        """The pictures of a run with ``params``, reconstructing the first of ``images`` (N, C, 32, 32), uint8
        or float: the validation images (the training images with no validation split, never the test set)."""
        generator = torch.Generator().manual_seed(params.train.seed)
        codes = standard_normal((SAMPLES, params.latent_dim), "cpu", generator)
        originals = images[:RECONSTRUCTIONS].float()
        if images.dtype == torch.uint8:
            originals = originals / 255
        grid_size = params.generate.grid_size
        grid = latent_grid(grid_size, params.generate.grid_range) if params.latent_dim == 2 else None
        return cls(codes, originals, grid, grid_size, params.mlflow.log_images_every)

    def due(self, epoch: int) -> bool:
        return self.every > 0 and epoch % self.every == 0

    @torch.inference_mode()
    def render(self, model: VAE) -> dict[str, np.ndarray]:
        """The pictures of ``model`` as it is now, by key: 8-bit grayscale (H, W) uint8."""
        pictures = {
            "samples": grid_picture(decode_latents(model, self.codes), SAMPLES_PER_ROW),
            "reconstructions": grid_picture(
                torch.cat([self.originals, reconstruct(model, self.originals)]), len(self.originals)
            ),
        }
        if self.grid_codes is not None:
            pictures["latent_grid"] = grid_picture(decode_latents(model, self.grid_codes), self.grid_size)
        return pictures

    def log(self, model: VAE, epoch: int) -> None:
        """Log the pictures of ``model`` after ``epoch`` to the active run, with the epoch as step, then
        tag the run with the epoch (:data:`PICTURED_TAG`): what a resumed run reads to know what is missing."""
        for key, picture in self.render(model).items():
            mlflow.log_image(picture, key=key, step=epoch)
        mlflow.set_tag(PICTURED_TAG, str(epoch))


def pictured_epoch(run: mlflow.entities.Run) -> int:
    """The last epoch whose pictures ``run`` holds (0: none yet), as :meth:`EpochImages.log` tagged it."""
    return int(run.data.tags.get(PICTURED_TAG, "0"))
