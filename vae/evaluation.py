"""The evaluate stage's numbers for one trained VAE, as a flat dict of metrics."""

from __future__ import annotations

import torch

from vae.batches import TensorBatches
from vae.classifier import FashionClassifier, features
from vae.config import Params
from vae.data import FashionMNISTSplit
from vae.generator import encode_means, generate_samples
from vae.metrics import active_units, frechet_distance, importance_weighted_log_likelihood, knn_accuracy, negative_elbo
from vae.model import VAE
from vae.trainer import evaluate_vae


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
    - ``active_units``: latent dimensions with Var(E_q[z]) > 0.01;
    - ``knn_accuracy``: k-NN (k = evaluate.knn_k) on latent means, trained on the train set;
    - ``classifier_frechet_distance``: Fréchet distance between our classifier's features
      of evaluate.fd_samples prior samples and of the test images (not an Inception FID).
    """
    cfg = params.evaluate
    batches = TensorBatches(test.images, cfg.batch_size, shuffle=False, device=device)
    metrics = evaluate_vae(model, batches, device, params.beta).as_dict("test_")
    nelbo = negative_elbo(model, test.images, cfg.batch_size)
    metrics |= {"nelbo": nelbo.nelbo, "nelbo_reconstruction": nelbo.reconstruction, "nelbo_kl": nelbo.kl}
    metrics["iw_log_likelihood"] = importance_weighted_log_likelihood(model, test.images, cfg.iw_samples)
    test_means = encode_means(model, test.images, cfg.batch_size)
    train_means = encode_means(model, train.images, cfg.batch_size)
    metrics["active_units"] = active_units(test_means)
    metrics["knn_accuracy"] = knn_accuracy(train_means, train.labels, test_means, test.labels, k=cfg.knn_k)
    samples = generate_samples(model, cfg.fd_samples, model.latent_dim, device)
    metrics["classifier_frechet_distance"] = frechet_distance(
        features(classifier, samples, cfg.batch_size), features(classifier, test.images, cfg.batch_size)
    )
    return metrics, test_means
