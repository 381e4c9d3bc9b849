"""Stage classifier: train the small Fashion-MNIST classifier whose features measure sample quality.

DVC caches it: β and latent_dim do not touch it, so sweeps reuse one network.
"""

from __future__ import annotations

from vae.classifier import ClassifierTooWeakError, FashionClassifier, accuracy, save_classifier, train_classifier
from vae.config import load_params
from vae.pipeline import paths
from vae.pipeline.runner import write_json
from vae.storage import load_prepared
from vae.utils import get_device, set_seed


def main() -> None:
    params = load_params(paths.PARAMS)
    cfg = params.classifier
    train, test = load_prepared(paths.PREPARED_TRAIN), load_prepared(paths.PREPARED_TEST)
    set_seed(cfg.seed)
    device = get_device(params.train.device)  # every stage computes where train.device says
    model = FashionClassifier().to(device)
    losses = train_classifier(model, train.images, train.labels, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed)
    test_accuracy = accuracy(model, test.images, test.labels)
    print(f"classifier: train loss {losses[-1]:.4f}, test accuracy {test_accuracy:.4f} on {len(test)} images")
    write_json({"test_accuracy": test_accuracy, "train_loss": losses[-1]}, paths.CLASSIFIER_METRICS)
    if test_accuracy < cfg.min_accuracy:
        raise ClassifierTooWeakError(
            f"classifier test accuracy {test_accuracy:.4f} is below classifier.min_accuracy = {cfg.min_accuracy}; "
            "raise classifier.epochs or use more training images"
        )
    save_classifier(model, paths.CLASSIFIER)
