"""Stage classifier: train the small classifier whose features measure sample quality, on the prepared data.

DVC caches it: β and latent_dim do not touch it, so sweeps reuse one network. Data of one class
gives no classifier (nothing to tell apart): the stage says so, and evaluate reports no
label-based metric.
"""

from __future__ import annotations

from vae import fast_cpu
from vae.classifier import (
    ClassifierTooWeakError,
    ImageClassifier,
    accuracy,
    accuracy_floor,
    save_classifier,
    save_no_classifier,
    train_classifier,
)
from vae.config import load_params
from vae.faults import Rerun
from vae.pipeline import paths
from vae.pipeline.runner import write_json
from vae.storage import load_prepared
from vae.trainer import resolve_precision
from vae.utils import get_device, set_seed

# what the classifier stage says after a fault of the machine (vae.faults)
RERUN = Rerun(batch_param="classifier.batch_size")


def main() -> None:
    params = load_params(paths.PARAMS)
    cfg = params.classifier
    train, test = load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_TEST)
    classes = len(train.class_names)
    if classes < 2:
        print(
            f"classifier: {train.dataset} has {classes} class ({train.class_names[0]}): no classifier to train; "
            "evaluate reports no k-NN accuracy and no Fréchet distance"
        )
        write_json({"num_classes": classes}, paths.CLASSIFIER_METRICS)
        save_no_classifier(paths.CLASSIFIER, train.channels)
        return
    set_seed(cfg.seed)
    device = get_device(params.train.device)  # every stage computes where train.device says
    model = ImageClassifier(classes, train.channels).to(device)
    fast_cpu.enable(model)  # under CPU bf16, float32 weight gradients (a no-op in fp32 and on CUDA)
    precision = resolve_precision(cfg.precision, device)
    losses = train_classifier(
        model, train.images, train.labels, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, precision=precision
    )
    test_accuracy = accuracy(model, test.images, test.labels)
    print(
        f"classifier: train loss {losses[-1]:.4f}, test accuracy {test_accuracy:.4f} on {len(test)} images "
        f"(trained in {precision})"
    )
    write_json({"test_accuracy": test_accuracy, "train_loss": losses[-1]}, paths.CLASSIFIER_METRICS)
    floor = accuracy_floor(cfg.min_accuracy, train.dataset)
    if floor is None:
        print(f"classifier: no accuracy floor is known for {train.dataset} (classifier.min_accuracy: auto)")
    elif test_accuracy < floor:
        raise ClassifierTooWeakError(
            f"classifier test accuracy {test_accuracy:.4f} is below classifier.min_accuracy = {cfg.min_accuracy} "
            f"({floor} for {train.dataset}); raise classifier.epochs or use more training images"
        )
    save_classifier(model, paths.CLASSIFIER)
