"""Stage 2: train the VAE, evaluating on the test set after every epoch, and log it all to MLflow."""

import mlflow

from vae import paths
from vae.batches import TensorBatches
from vae.config import ParamsError, load_params
from vae.model import VAE
from vae.stage import run_stage, write_history_csv, write_json
from vae.storage import load_prepared, save_model
from vae.tracking import log_model, run_name, run_tags, setup_experiment, write_run_id
from vae.trainer import configure_performance, make_optimizer, train_vae_model
from vae.utils import get_device, set_seed


def main() -> None:
    params = load_params(paths.PARAMS)
    train, test = load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_TEST)
    if params.train.batch_size > len(train):
        raise ParamsError(
            f"{paths.PARAMS}: train.batch_size = {params.train.batch_size} is larger than the "
            f"{len(train)} training images (lower it or raise data.train_limit)"
        )
    set_seed(params.train.seed)
    device = get_device()
    model = configure_performance(device, VAE(latent_dim=params.latent_dim, input_channels=1).to(device))
    optimizer = make_optimizer(model, params.train.lr)
    train_batches = TensorBatches(train.images, params.train.batch_size, seed=params.train.seed, device=device)
    test_batches = TensorBatches(test.images, params.evaluate.batch_size, shuffle=False, device=device)

    setup_experiment(params.mlflow.experiment_name)
    with mlflow.start_run(run_name=run_name(params.beta, params.latent_dim)) as run:
        mlflow.log_params(params.flat())
        mlflow.set_tags(run_tags(device) | {"train_images": len(train), "test_images": len(test)})
        print(f"train: {len(train)} images on {device}, MLflow run {run.info.run_id}")
        history = train_vae_model(
            model,
            train_batches,
            optimizer,
            device,
            epochs=params.epochs,
            beta=params.beta,
            val_loader=test_batches,
            val_prefix="test_",
            progress=None,
            on_epoch_end=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch),
        )
        save_model(model, paths.MODEL)
        write_json({key: values[-1] for key, values in history.items()}, paths.TRAIN_METRICS)
        write_history_csv(history, paths.TRAIN_HISTORY)
        log_model(model, paths.MODEL)
        write_run_id(run.info.run_id)


if __name__ == "__main__":
    run_stage("train", main)
