"""Stage evaluate: test-set metrics comparable across β, reconstructions and the latent space.

Logged in a new MLflow run nested under the training run that made the model.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import mlflow
import torch

from vae import fast_cpu
from vae.batches import TensorBatches
from vae.classifier import FashionClassifier, features, load_classifier
from vae.config import Params, load_params
from vae.data import CLASS_NAMES, FashionMNISTSplit
from vae.generator import encode_means, generate_samples, plot_latent_space, visualize_reconstruction
from vae.metrics import active_units, frechet_distance, importance_weighted_log_likelihood, knn_accuracy, negative_elbo
from vae.model import VAE
from vae.pipeline import paths
from vae.pipeline.dvc_yaml import lineage_params, select
from vae.pipeline.runner import write_json
from vae.storage import load_model, load_prepared
from vae.tracking.registry import decoder_model_id
from vae.tracking.store import check_tracking_store, log_dataset, read_run_id, stage_run
from vae.trainer import evaluate_vae
from vae.utils import batch_images, get_device, set_seed

# what evaluate_model returns; MLflow shows each as eval_<name>
METRIC_NAMES = (
    "test_loss",
    "test_reconstruction_loss",
    "test_kl_loss",
    "nelbo",
    "nelbo_reconstruction",
    "nelbo_kl",
    "iw_log_likelihood",
    "active_units",
    "knn_accuracy",
    "classifier_frechet_distance",
)


def evaluate_model(
    model: VAE,
    classifier: FashionClassifier,
    train: FashionMNISTSplit,
    test: FashionMNISTSplit,
    params: Params,
    device: torch.device,
) -> tuple[dict[str, float], torch.Tensor]:
    """All test-set metrics, and the test set's latent means (N, latent_dim) for plotting.

    - ``test_loss``, ``test_reconstruction_loss``, ``test_kl_loss``: the training
      objective with the configured β (not comparable across β);
    - ``nelbo``, ``nelbo_reconstruction``, ``nelbo_kl``: −ELBO in nats per image;
    - ``iw_log_likelihood``: importance-weighted log p(x), nats per image, K = evaluate.iw_samples;
      its noise drawn from a generator seeded with evaluate.seed;
    - ``active_units``: latent dimensions with Var(E_q[z]) > 0.01;
    - ``knn_accuracy``: k-NN (k = evaluate.knn_k) on latent means, trained on the train set;
    - ``classifier_frechet_distance``: Fréchet distance between our classifier's features
      of evaluate.fd_samples prior samples (their codes drawn from a generator seeded with
      evaluate.seed) and of the test images (not an Inception FID).
    """
    cfg = params.evaluate
    set_seed(cfg.seed)  # the test losses and the NELBO sample z, as in training
    batches = TensorBatches(test.images, cfg.batch_size, shuffle=False, device=device)
    metrics = evaluate_vae(model, batches, device, params.beta).as_dict("test_")
    nelbo = negative_elbo(model, test.images, cfg.batch_size)
    metrics |= {"nelbo": nelbo.nelbo, "nelbo_reconstruction": nelbo.reconstruction, "nelbo_kl": nelbo.kl}
    # the sampled estimates draw from generators of their own, so each depends on the model and
    # evaluate.seed alone, not on what ran before it
    iw_noise = torch.Generator().manual_seed(cfg.seed)
    metrics["iw_log_likelihood"] = importance_weighted_log_likelihood(
        model, test.images, cfg.iw_samples, generator=iw_noise
    )
    test_means = encode_means(model, test.images, cfg.batch_size)
    train_means = encode_means(model, train.images, cfg.batch_size)
    metrics["active_units"] = active_units(test_means)
    metrics["knn_accuracy"] = knn_accuracy(train_means, train.labels, test_means, test.labels, k=cfg.knn_k)
    fd_codes = torch.Generator().manual_seed(cfg.seed)
    samples = generate_samples(model, cfg.fd_samples, model.latent_dim, device, generator=fd_codes)
    metrics["classifier_frechet_distance"] = frechet_distance(
        features(classifier, samples, cfg.batch_size), features(classifier, test.images, cfg.batch_size)
    )
    return metrics, test_means


def main() -> None:
    params = load_params(paths.PARAMS)
    logged_params = select(params.flat(), lineage_params("evaluate"))
    device = get_device(params.train.device)  # every stage computes where train.device says
    model, _ = load_model(paths.MODEL, device, expected_latent_dim=params.latent_dim)
    fast_cpu.enable(model)
    classifier = load_classifier(paths.CLASSIFIER, device)
    train, test = load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_TEST)
    training_run_id = read_run_id(paths.TRAIN_RUN_ID)
    check_tracking_store()  # before the work: an unreachable server fails in seconds

    metrics, test_means = evaluate_model(model, classifier, train, test, params, device)
    write_json(metrics, paths.EVALUATE_METRICS)
    print("evaluate: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    n = params.evaluate.num_reconstructions
    originals = batch_images(test.images[:n], device)
    plt.close(
        visualize_reconstruction(
            model, originals, device, n=n, save_path=paths.EVALUATE_DIR / "vae_reconstructions.png"
        )
    )
    plt.close(
        plot_latent_space(test_means, test.labels, CLASS_NAMES, save_path=paths.EVALUATE_DIR / "vae_latent_space.png")
    )

    experiment = params.mlflow.experiment_name
    with stage_run("evaluate", experiment, logged_params, training_run_id, device, paths.EVALUATE_RUN_ID):
        log_dataset(test, paths.PREPARED_TEST, "testing")  # every metric is on the test split
        log_dataset(train, paths.PREPARED_TRAIN, "training")  # the k-NN classifier's neighbours
        # on the run, and on the training run's decoder model: its registered version shows them
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items()}, model_id=decoder_model_id(training_run_id))
        mlflow.log_artifacts(str(paths.EVALUATE_DIR), artifact_path="evaluate")
