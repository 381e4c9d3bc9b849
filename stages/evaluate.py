"""Stage: test-set metrics, reconstructions and the latent space, in a new MLflow run under the training run."""

import mlflow

from vae import paths
from vae.classifier import load_classifier
from vae.config import load_params
from vae.data import CLASS_NAMES
from vae.dvc_yaml import lineage_params, select
from vae.evaluation import evaluate_model
from vae.generator import visualize_reconstruction
from vae.plots import plot_latent_space
from vae.stage import run_stage, write_json
from vae.storage import load_model, load_prepared
from vae.tracking import check_tracking_store, read_run_id, stage_run
from vae.utils import batch_images, get_device, set_seed


def main() -> None:
    params = load_params(paths.PARAMS)
    logged_params = select(params.flat(), lineage_params("evaluate"))
    device = get_device()
    model, _ = load_model(paths.MODEL, device, expected_latent_dim=params.latent_dim)
    classifier = load_classifier(paths.CLASSIFIER, device)
    train, test = load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_TEST)
    training_run_id = read_run_id(paths.TRAIN_RUN_ID)
    check_tracking_store()  # before the work: an unreachable server fails in seconds
    set_seed(params.train.seed)  # the losses sample z, as in training

    metrics, test_means = evaluate_model(model, classifier, train, test, params, device)
    write_json(metrics, paths.EVALUATE_METRICS)
    print("evaluate: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    n = params.evaluate.num_reconstructions
    visualize_reconstruction(
        model,
        batch_images(test.images[:n], device),
        device,
        n=n,
        save_path=paths.EVALUATE_DIR / "vae_reconstructions.png",
    )
    plot_latent_space(test_means, test.labels, CLASS_NAMES, save_path=paths.EVALUATE_DIR / "vae_latent_space.png")

    experiment = params.mlflow.experiment_name
    with stage_run("evaluate", experiment, logged_params, training_run_id, device, paths.EVALUATE_RUN_ID):
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items()})
        mlflow.log_artifacts(str(paths.EVALUATE_DIR), artifact_path="evaluate")


if __name__ == "__main__":
    run_stage("evaluate", main)
