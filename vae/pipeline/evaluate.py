"""Stage evaluate: metrics comparable across β on validation (to choose by) and test (to report once),
reconstructions and the latent space.

Logged in a new MLflow run nested under the training run that made the model.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import mlflow
import torch

from vae import fast_cpu
from vae.batches import TensorBatches
from vae.classifier import ImageClassifier, features, load_classifier
from vae.config import Params, load_params
from vae.data import ImageSplit
from vae.faults import Rerun
from vae.generator import encode_means, generate_samples, plot_latent_space, visualize_reconstruction
from vae.metrics import active_units, frechet_distance, importance_weighted_log_likelihood, knn_accuracy, negative_elbo
from vae.model import VAE
from vae.pipeline import paths
from vae.pipeline.dvc_yaml import lineage_params, select
from vae.pipeline.runner import write_json
from vae.storage import load_model, load_prepared
from vae.tracking.datasets import log_dataset, split_tags
from vae.tracking.registry import decoder_model_id
from vae.tracking.runs import log_verdict, read_run_id, stage_run
from vae.tracking.store import check_tracking_store, sqlite_file
from vae.trainer import evaluate_vae, resolve_precision
from vae.utils import batch_images, get_device, set_seed

# what evaluate_split returns for each split, named <split>_<name> (val_nelbo, test_nelbo…);
# MLflow shows each as eval_<split>_<name>
SPLIT_METRICS = (
    "nelbo",
    "nelbo_reconstruction",
    "nelbo_kl",
    "iw_log_likelihood",
    "active_units",
    "knn_accuracy",
    "classifier_frechet_distance",
)
# decodes per decoder pass of the IW bound: changes no number, only how much is decoded at once (vae.metrics)
IW_PASS = 1000  # the fastest measured on a 2-core AVX512-BF16 CPU, one pass per core (500-2,000 tried)
# the training objective with the configured β, on test (train.json has validation's, per epoch)
LOSS_NAMES = ("test_loss", "test_reconstruction_loss", "test_kl_loss")


# what the evaluate stage says after a fault of the machine (vae.faults)
RERUN = Rerun(batch_param="evaluate.batch_size", store=sqlite_file)


def evaluate_split(
    model: VAE,
    classifier: ImageClassifier | None,
    train_means: torch.Tensor,
    train_labels: torch.Tensor,
    split: ImageSplit,
    params: Params,
    device: torch.device,
    sample_features: torch.Tensor | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """The β-independent metrics of ``split``, and its latent means (N, latent_dim) for plotting.

    - ``nelbo``, ``nelbo_reconstruction``, ``nelbo_kl``: −ELBO in nats per image;
    - ``iw_log_likelihood``: importance-weighted log p(x), nats per image, K = evaluate.iw_samples;
      its noise drawn from a generator seeded with evaluate.seed;
    - NELBO's and the IW bound's decoder passes run in evaluate.precision (auto: bf16 on a CPU with
      native bf16, within 0.05 nats of fp32; the log-probabilities in fp32 either way);
    - ``active_units``: latent dimensions with Var(E_q[z]) > 0.01;
    - ``knn_accuracy``: k-NN (k = evaluate.knn_k) on latent means, its neighbours ``train_means``
      (N_train, latent_dim) with ``train_labels`` (N_train,);
    - ``classifier_frechet_distance``: Fréchet distance between our classifier's features
      of evaluate.fd_samples prior samples (their codes drawn from a generator seeded with
      evaluate.seed) and of the split's images (not an Inception FID); ``sample_features``, when
      given, are those of the samples (:func:`prior_sample_features`: the same for every split).

    Data of one class has neither label-based metric (``knn_accuracy``, ``classifier_frechet_distance``;
    ``classifier`` is None): they are absent, not faked.

    Every sampled estimate draws from a generator of its own, seeded with evaluate.seed, so each
    depends on the model, the split and evaluate.seed alone, not on what ran before it.
    """
    cfg = params.evaluate
    precision = resolve_precision(cfg.precision, device)
    set_seed(cfg.seed)  # the NELBO samples z, as in training
    nelbo = negative_elbo(model, split.images, cfg.batch_size, precision)
    metrics = {"nelbo": nelbo.nelbo, "nelbo_reconstruction": nelbo.reconstruction, "nelbo_kl": nelbo.kl}
    iw_noise = torch.Generator().manual_seed(cfg.seed)
    metrics["iw_log_likelihood"] = importance_weighted_log_likelihood(
        model, split.images, cfg.iw_samples, generator=iw_noise, precision=precision, decodes_per_pass=IW_PASS
    )
    means = encode_means(model, split.images, cfg.batch_size)
    metrics["active_units"] = active_units(means)
    if not has_label_metrics(classifier, split):
        return metrics, means
    metrics["knn_accuracy"] = knn_accuracy(train_means, train_labels, means, split.labels, k=cfg.knn_k)
    if sample_features is None:
        sample_features = prior_sample_features(model, classifier, params, device)
    split_features = features(classifier, split.images, cfg.batch_size)
    metrics["classifier_frechet_distance"] = frechet_distance(sample_features, split_features)
    return metrics, means


def has_label_metrics(classifier: ImageClassifier | None, split: ImageSplit) -> bool:
    """Whether ``split``'s data gets the label-based metrics (k-NN accuracy, classifier Fréchet distance):
    it has two classes or more, and so a classifier (data of one class has neither)."""
    return classifier is not None and len(split.class_names) > 1


def prior_sample_features(
    model: VAE, classifier: ImageClassifier, params: Params, device: torch.device
) -> torch.Tensor:
    """The classifier's features (evaluate.fd_samples, 128) of as many prior samples, their codes drawn
    from a generator seeded with evaluate.seed: the Fréchet distance's samples, the same for every split."""
    cfg = params.evaluate
    fd_codes = torch.Generator().manual_seed(cfg.seed)
    samples = generate_samples(model, cfg.fd_samples, model.latent_dim, device, generator=fd_codes)
    return features(classifier, samples, cfg.batch_size)


def evaluate_model(
    model: VAE,
    classifier: ImageClassifier | None,
    train: ImageSplit,
    splits: dict[str, ImageSplit],
    params: Params,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """:func:`evaluate_split` of each of ``splits`` (``{"val": …, "test": …}``), its metrics named
    ``<split>_<name>``; with a test split, also its ``test_loss``, ``test_reconstruction_loss`` and
    ``test_kl_loss`` (the training objective with the configured β, not comparable across β).
    Returns the metrics and each split's latent means."""
    metrics, means = {}, {}
    train_means = encode_means(model, train.images, params.evaluate.batch_size)  # the k-NN's neighbours, once
    if "test" in splits:
        set_seed(params.evaluate.seed)  # the losses sample z, as in training
        batches = TensorBatches(splits["test"].images, params.evaluate.batch_size, shuffle=False, device=device)
        metrics |= evaluate_vae(model, batches, device, params.beta).as_dict("test_")
    labelled = has_label_metrics(classifier, train)
    samples = prior_sample_features(model, classifier, params, device) if labelled else None  # once for all splits
    for name, split in splits.items():
        split_metrics, means[name] = evaluate_split(
            model, classifier, train_means, train.labels, split, params, device, sample_features=samples
        )
        metrics |= {f"{name}_{key}": value for key, value in split_metrics.items()}
    return metrics, means


def main() -> None:
    params = load_params(paths.PARAMS)
    logged_params = select(params.flat(), lineage_params("evaluate"))
    device = get_device(params.train.device)  # every stage computes where train.device says
    files = {"val": paths.PREPARED_VAL, "test": paths.PREPARED_TEST}
    if not params.data.val_size:  # a final refit on all the training images: test alone
        del files["val"]
    train, splits = load_prepared(paths.PREPARED_TRAIN), {name: load_prepared(path) for name, path in files.items()}
    test = splits["test"]
    model, _ = load_model(paths.MODEL, device, params.latent_dim, expected_channels=train.channels)
    fast_cpu.enable(model)
    classifier = load_classifier(paths.CLASSIFIER, device, expected_channels=train.channels)
    if not has_label_metrics(classifier, train):
        print(f"evaluate: {train.dataset} has one class: no k-NN accuracy and no classifier Fréchet distance")
    training_run_id = read_run_id(paths.TRAIN_RUN_ID)
    check_tracking_store()  # before the work: an unreachable server fails in seconds

    metrics, means = evaluate_model(model, classifier, train, splits, params, device)
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
        plot_latent_space(
            means["test"], test.labels, test.class_names, save_path=paths.EVALUATE_DIR / "vae_latent_space.png"
        )
    )

    experiment = params.mlflow.experiment_name
    tags = split_tags(train) | {"precision": resolve_precision(params.evaluate.precision, device)}  # its rounding
    with stage_run("evaluate", experiment, logged_params, training_run_id, device, paths.EVALUATE_RUN_ID, tags):
        log_dataset(train, paths.PREPARED_TRAIN, "training")  # the k-NN classifier's neighbours
        for name, path in files.items():
            log_dataset(splits[name], path, {"val": "validation", "test": "testing"}[name])
        # on the run, and on the training run's decoder model: its registered version shows them
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items()}, model_id=decoder_model_id(training_run_id))
        # and the verdict, the β-independent ones, on the training run: where runs are compared
        verdict = {f"eval_{k}": v for k, v in metrics.items() if k not in LOSS_NAMES}
        log_verdict(training_run_id, verdict, step=params.epochs)
        mlflow.log_artifacts(str(paths.EVALUATE_DIR), artifact_path="evaluate")
