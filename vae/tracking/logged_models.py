"""The decoder and the encoder of a training run logged as MLflow models: exported graphs on the CPU.

:func:`log_models` logs both (and the checkpoint) to the active run and registers each as a new version
of the registered models :mod:`vae.tracking.registry` promotes from. ``runs:/<run id>/<name>`` loads
either, with :func:`logged_model_name` giving ``<name>``.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from vae.model import VAE, VariationalEncoder
from vae.tracking.registry import DECODER, ENCODER, PART_TAG, encoder_name


class EncoderMeans(nn.Module):
    """The encoder's means: images (N, C, 32, 32) in [0, 1] → latent means (N, latent_dim)."""

    def __init__(self, encoder: VariationalEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]


def cpu_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the CPU, in eval mode; ``module`` stays where it trains.

    MLflow exports (``torch.export``) with an example input it makes on the CPU from NumPy: a module
    on a GPU fails there with a device mismatch, and a model saved with CUDA storages would need a
    GPU to load. The logged models are CPU models; ``mlflow models serve`` runs them anywhere.
    """
    return copy.deepcopy(module).cpu().eval()


def logged_model_name(part: str, beta: float | None, latent_dim: int) -> str:
    """The name of a training run's logged ``part`` (DECODER or ENCODER): the DVC experiment's name when
    there is one, the part and the key params, as ``beta-100-decoder-beta100-latent2``, so that MLflow's
    model lists say whose each is. MLflow forbids ``.`` in these names: β = 0.5 reads ``beta0p5``."""
    what = [part] + ([] if beta is None else [f"beta{beta:g}".replace(".", "p")]) + [f"latent{latent_dim}"]
    return "-".join(filter(None, [os.environ.get("DVC_EXP_NAME"), *what]))


def _log_exported(
    module: nn.Module, example: torch.Tensor, name: str, part: str, registered_model: str | None
) -> str | None:
    """Log ``module`` as an exported-graph MLflow model named ``name``, tagged with its ``part``; returns its
    new registered version, if registered."""
    import mlflow
    from mlflow.models import infer_signature

    module = cpu_copy(module)
    with torch.inference_mode():
        output = module(example)
    with warnings.catch_warnings():
        # torch.export's archive writer warns about every weight of a model saved from the CPU
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        info = mlflow.pytorch.log_model(
            module,
            name=name,
            tags={PART_TAG: part},
            signature=infer_signature(example.numpy(), output.numpy()),
            input_example=example.numpy(),
            serialization_format="pt2",  # an exported graph: loading it needs no install of this project
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            registered_model_name=registered_model,
        )
    return None if info.registered_model_version is None else str(info.registered_model_version)


def log_models(
    model: VAE,
    checkpoint: Path,
    registered_model: str | None,
    version_tags: dict[str, str],
    as_models: bool = True,
    beta: float | None = None,
) -> None:
    """Log the decoder and the encoder as MLflow models of the active run, and register both.

    ``mlflow.pytorch.load_model`` gives back a module: the decoder maps a latent
    batch (N, latent_dim) to images (N, C, 32, 32) in [0, 1] (C: the model's input_channels), the encoder images
    (N, C, 32, 32) in [0, 1] to latent means (N, latent_dim); ``mlflow models
    serve`` serves either, and MLflow rejects inputs of another shape (the
    signatures say so). With ``registered_model`` set, each becomes a new
    version of ``registered_model`` and of its ``-encoder``, tagged with
    ``version_tags``. The whole VAE's checkpoint is logged under ``checkpoint/``
    (rebuild it with :func:`vae.storage.load_model`). ``as_models=False`` (``mlflow.log_models: false``)
    logs the checkpoint alone: no export, nothing registered. Their names say whose they are
    (:func:`logged_model_name`, with ``beta``); ``runs:/<run id>/<name>`` loads either.
    """
    import mlflow

    mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
    if not as_models:
        return
    latents = torch.randn(4, model.latent_dim, generator=torch.Generator().manual_seed(0))
    images = torch.rand(4, model.input_channels, 32, 32, generator=torch.Generator().manual_seed(0))
    encoder_registered = encoder_name(registered_model) if registered_model else None
    versions = {
        registered_model: _log_exported(
            model.decoder, latents, logged_model_name(DECODER, beta, model.latent_dim), DECODER, registered_model
        ),
        encoder_registered: _log_exported(
            EncoderMeans(model.encoder),
            images,
            logged_model_name(ENCODER, beta, model.latent_dim),
            ENCODER,
            encoder_registered,
        ),
    }
    client = mlflow.MlflowClient()
    for name, version in versions.items():
        if name is not None:
            for key, value in version_tags.items():
                client.set_model_version_tag(name, version, key, value)
