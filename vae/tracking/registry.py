"""MLflow's Model Registry: every training run's models registered, the best one promoted by a β-independent metric.

Each training run logs two MLflow models (:mod:`vae.tracking.logged_models`) and
registers each as a new version, under the name ``mlflow.registered_model`` in params.yaml:

- ``<name>``, the decoder: latent codes (N, latent_dim) float32 → images
  (N, C, 32, 32) in [0, 1], C the training data's channels (1 gray, 3 colour);
- ``<name>-encoder``, the encoder's means: images (N, C, 32, 32) float32 in
  [0, 1] → latent means (N, latent_dim), the embedding of an image.

Both are exported graphs (``torch.export``), so loading or serving them needs
PyTorch and MLflow, not this package. Each version's tags name β, latent_dim,
the git commit, the DVC experiment and the training run; the evaluate stage's
metrics are reachable from the version: they are logged on its MLflow model
(``model_id``) and in the evaluate run nested under the version's run.

:func:`promote` (``python -m vae.tracking.promote``) ranks the decoder's versions by a
metric of their latest evaluate run, in the right direction for that metric,
and points the alias ``champion`` of both models at the best run's versions.
It needs neither torch nor this package's model, so ``python -m vae.tracking.promote`` starts without them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from vae.errors import UserError
from vae.tracking.data_tags import DATASET_TAG, UNTAGGED, mixed_data

if TYPE_CHECKING:
    import mlflow

T = TypeVar("T")
ALIAS = "champion"
DECODER, ENCODER = "decoder", "encoder"
PART_TAG = "vae_part"  # on each logged model: which half of the VAE it is (DECODER or ENCODER)
# the metrics promotion and sweeps choose by: the evaluate stage's on validation that do not depend
# on β, with the direction that is better
DIRECTIONS = {
    "eval_val_iw_log_likelihood": "higher",
    "eval_val_nelbo": "lower",
    "eval_val_knn_accuracy": "higher",
    "eval_val_classifier_frechet_distance": "lower",
}
DEFAULT_METRIC = "eval_val_iw_log_likelihood"


def test_metric_refusal(metric: str) -> str | None:
    """Why ``metric`` may not choose a model when it is measured on the test set (naming its validation
    twin), else None. The test set reports the chosen model once; choosing by it would bias that report."""
    if "test_" not in metric:
        return None
    twin = metric.replace("test_", "val_", 1)
    choose = f"its validation twin {twin}" if twin in DIRECTIONS else f"a validation metric: {ranking_metrics()}"
    return f"{metric} is a test-set metric, and the test set only reports: choose by {choose}"


def ranking_metrics() -> str:
    """The metrics promotion ranks by, with their directions, in words."""
    return ", ".join(f"{metric} ({better} is better)" for metric, better in DIRECTIONS.items())


class RegistryError(UserError, LookupError):
    """The registry holds nothing promotion can use; the message names the model, metric or alias."""


def encoder_name(registered_model: str) -> str:
    """The registered name of the encoder of the models registered as ``registered_model``."""
    return f"{registered_model}-encoder"


def decoder_model_id(training_run_id: str) -> str | None:
    """The id of the decoder's MLflow model logged by ``training_run_id``, or None when it is not in this store."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        experiment_id = client.get_run(training_run_id).info.experiment_id
    except mlflow.exceptions.MlflowException:
        return None
    models = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{training_run_id}'"
    )
    return next((m.model_id for m in models if m.tags.get(PART_TAG) == DECODER), None)


# --- promotion ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A registered decoder version and the metrics of the latest evaluate run of its training run."""

    version: int
    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]
    run_tags: dict[str, str] = field(default_factory=dict)  # its training run's: which data it learned


@dataclass(frozen=True)
class Promotion:
    name: str
    metric: str
    candidates: list[Candidate]  # best first; versions without the metric last
    winner: Candidate
    previous: int | None  # the version the alias named before, if any

    @property
    def changed(self) -> bool:
        return self.previous != self.winner.version


def _canonical(metric: str) -> str:
    """The name MLflow shows: ``nelbo`` and ``val_nelbo`` are ``eval_val_nelbo``, ``test_nelbo`` ``eval_test_nelbo``."""
    if metric.startswith("eval_"):
        return metric
    return f"eval_{metric}" if metric.startswith(("val_", "test_")) else f"eval_val_{metric}"


def candidates(client: mlflow.MlflowClient, name: str) -> list[Candidate]:
    """Every version of the registered model ``name``, with the metrics of its latest finished evaluate run."""
    import mlflow

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException as err:
        raise RegistryError(f"cannot list the versions of registered model {name!r}: {err.message}") from None
    if not versions:
        raise RegistryError(
            f"registered model {name!r} has no versions in {mlflow.get_tracking_uri()}; "
            "run the pipeline first (dvc repro), or check mlflow.registered_model and MLFLOW_TRACKING_URI"
        )
    found = []
    for version in versions:
        training = client.get_run(version.run_id)
        experiment_id = training.info.experiment_id
        evaluations = client.search_runs(
            [experiment_id],
            filter_string=f"tags.training_run_id = '{version.run_id}' AND tags.pipeline_stage = 'evaluate' "
            "AND attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        metrics = dict(evaluations[0].data.metrics) if evaluations else {}
        found.append(Candidate(int(version.version), version.run_id, dict(version.tags), metrics, training.data.tags))
    return found


def rank(found: list[Candidate], metric: str) -> list[Candidate]:
    """``found`` best first by ``metric`` in its direction (ties: the older version first), unscored last.

    Raises:
        RegistryError: no version has ``metric`` (the message lists those they have), or it is not
            one promotion can rank by (the message lists those it can).
    """
    metric = _canonical(metric)
    if refusal := test_metric_refusal(metric):
        raise RegistryError(refusal)
    present = sorted({key for c in found for key in c.metrics})
    if metric not in present:
        raise RegistryError(
            f"no registered version has metric {metric!r}; their evaluate runs have: {', '.join(present) or 'none'}"
        )
    if metric not in DIRECTIONS:
        raise RegistryError(f"{metric} depends on beta or has no better direction; rank by one of: {ranking_metrics()}")
    by_version = sorted(found, key=lambda c: c.version)
    return best_first(by_version, lambda c: c.metrics.get(metric), higher_is_better=DIRECTIONS[metric] == "higher")


def best_first(items: Iterable[T], score: Callable[[T], float | None], higher_is_better: bool) -> list[T]:
    """``items`` sorted best first by ``score``; those with no score (None or NaN) last. Stable: ties
    keep their order. Ranks registered versions for promotion and a sweep's trials alike."""

    def key(item: T) -> tuple[bool, float]:
        value = score(item)
        if value is None or math.isnan(value):
            return True, 0.0
        return False, -value if higher_is_better else value

    return sorted(items, key=key)


def same_data(found: list[Candidate], dataset: str | None) -> list[Candidate]:
    """The candidates trained on ``dataset`` (None: all of them, which must be on the same data).

    Raises:
        RegistryError: versions trained on different data and no ``dataset`` chosen (naming two of them),
            or none trained on ``dataset``.
    """
    if dataset is not None:
        kept = [c for c in found if c.run_tags.get(DATASET_TAG, UNTAGGED) == dataset]
        if not kept:
            trained = sorted({c.run_tags.get(DATASET_TAG, UNTAGGED) for c in found})
            raise RegistryError(f"no version was trained on {dataset}; they were trained on: {', '.join(trained)}")
        found = kept
    if why := mixed_data([(f"version {c.version}", c.run_tags) for c in found]):
        raise RegistryError(f"{why}; pass --dataset NAME to rank the versions of one data set")
    return found


def promote(name: str, metric: str = DEFAULT_METRIC, alias: str = ALIAS, dataset: str | None = None) -> Promotion:
    """Point ``alias`` of ``name`` (and of its encoder) at the version whose run is best by ``metric``, among
    those trained on ``dataset`` (None: all, which must be trained on the same data).

    Running it again with no new version or evaluation changes nothing.
    """
    import mlflow

    client = mlflow.MlflowClient()
    ranked = rank(same_data(candidates(client, name), dataset), metric)
    winner = ranked[0]
    previous = _aliased(client, name, alias)
    if previous is None or previous.version != str(winner.version):
        client.set_registered_model_alias(name, alias, str(winner.version))
    # the encoder version from the same training run gets the same alias
    encoder = encoder_name(name)
    for version in client.search_model_versions(f"name = '{encoder}' AND run_id = '{winner.run_id}'"):
        current = _aliased(client, encoder, alias)
        if current is None or current.version != version.version:
            client.set_registered_model_alias(encoder, alias, version.version)
    return Promotion(name, _canonical(metric), ranked, winner, None if previous is None else int(previous.version))


def _aliased(client: mlflow.MlflowClient, name: str, alias: str) -> mlflow.entities.model_registry.ModelVersion | None:
    """The version of ``name`` that ``alias`` points at, or None."""
    import mlflow

    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def format_promotion(result: Promotion, alias: str = ALIAS) -> str:
    """The candidates as a small table, best first, and the outcome in one line."""
    metric = result.metric
    header = f"{'version':>7}  {'beta':>8}  {'latent_dim':>10}  {'dvc experiment':<18}  {metric:>{len(metric)}}"
    lines = [f"{result.name}: versions by {metric} ({DIRECTIONS[metric]} is better)", header]
    for c in result.candidates:
        value = c.metrics.get(metric)
        # a version evaluated without the metric is a refit on train + validation (data.val_size: 0)
        shown = f"{value:.4f}" if value is not None else "no validation" if c.metrics else "not evaluated"
        mark = f"  ← {alias}" if c is result.winner else ""
        lines.append(
            f"{c.version:>7}  {c.tags.get('beta', '?'):>8}  {c.tags.get('latent_dim', '?'):>10}  "
            f"{c.tags.get('dvc_exp_name', '-'):<18}  {shown:>{len(metric)}}{mark}"
        )
    if result.changed:
        was = f" (was version {result.previous})" if result.previous is not None else ""
        lines.append(f"{alias}: version {result.winner.version}{was}")
    else:
        lines.append(f"{alias}: version {result.winner.version}, unchanged")
    return "\n".join(lines)
