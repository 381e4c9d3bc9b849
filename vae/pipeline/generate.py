"""Stage generate: samples from the prior, a decoded latent grid, an interpolation and the latent explorer.

Logged in a new MLflow run nested under the training run that made the model.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import mlflow

from vae import fast_cpu
from vae.config import load_params
from vae.data import border
from vae.explorer import latent_plane, write_explorer
from vae.faults import Rerun
from vae.generator import (
    decode_latents,
    encode_means,
    generate_samples,
    interpolate_latent,
    latent_grid,
    pick_different_classes,
    visualize_samples,
)
from vae.pipeline import paths
from vae.pipeline.dvc_yaml import lineage_params, select
from vae.storage import load_model, load_prepared
from vae.tracking.datasets import split_tags
from vae.tracking.runs import read_run_id, stage_run
from vae.tracking.store import check_tracking_store, sqlite_file
from vae.utils import get_device, set_seed

# what the generate stage says after a fault of the machine (vae.faults)
RERUN = Rerun(batch_param="generate.explorer_resolution", store=sqlite_file)


def main() -> None:
    params = load_params(paths.PARAMS)
    logged_params = select(params.flat(), lineage_params("generate"))
    gen = params.generate
    device = get_device(params.train.device)  # every stage computes where train.device says
    test = load_prepared(paths.PREPARED_TEST)
    model, _ = load_model(paths.MODEL, device, params.latent_dim, expected_channels=test.channels)
    fast_cpu.enable(model)
    training_run_id = read_run_id(paths.TRAIN_RUN_ID)
    check_tracking_store()  # before the work: an unreachable server fails in seconds
    set_seed(gen.seed)
    out = paths.GENERATE_DIR
    out.mkdir(parents=True, exist_ok=True)

    samples = generate_samples(model, gen.num_samples, params.latent_dim, device)
    rows = math.ceil(gen.num_samples / gen.samples_per_row)
    title = f"{gen.num_samples} samples from N(0, I)"
    plt.close(visualize_samples(samples, (rows, gen.samples_per_row), out / "vae_generated_samples.png", title=title))

    # the grid and the explorer show one plane: (z1, z2), or the test means' first two principal directions
    test_means = encode_means(model, test.images)
    plane = latent_plane(test_means)
    grid = decode_latents(model, plane.codes(latent_grid(gen.grid_size, gen.grid_range)))
    low, high = gen.grid_range
    axes = "z1 and z2" if plane.axis_name == "z" else "PC1 and PC2 of the test set's latent means"
    title = f"decoded latent grid, {axes} in [{low:g}, {high:g}]"
    plt.close(visualize_samples(grid, (gen.grid_size, gen.grid_size), out / "vae_latent_grid.png", title=title))
    write_explorer(
        out / "vae_latent_explorer.html",
        model,
        test_means,
        test.labels,
        test.class_names,
        gen.explorer_resolution,
        gen.explorer_range,
        border=border(test.dataset),
    )

    first, second = pick_different_classes(test.labels)
    means = encode_means(model, test.images[[first, second]])
    path = interpolate_latent(model, means[0], means[1], gen.interpolation_steps)
    title = (
        f"test image {first} ({test.class_names[test.labels[first]]}) → "
        f"test image {second} ({test.class_names[test.labels[second]]})"
    )
    plt.close(visualize_samples(path, (1, gen.interpolation_steps), out / "vae_interpolation.png", title=title))
    print(f"generate: wrote {', '.join(sorted(p.name for p in out.glob('*.*')))} to {out}")

    experiment = params.mlflow.experiment_name
    tags = split_tags(test)
    with stage_run("generate", experiment, logged_params, training_run_id, device, paths.GENERATE_RUN_ID, tags):
        mlflow.log_artifacts(str(out), artifact_path="generate")
