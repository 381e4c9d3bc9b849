"""A sweep file (``sweeps/*.yaml``) read and checked against params.yaml before any trial starts.

A sweep names a search space over params.yaml keys, in dotted form (``beta``,
``train.lr``). Each key holds a list of values (a grid, or the choices of a
random or Optuna search) or one range for random and Optuna search:
``{uniform: [low, high]}``, ``{loguniform: [low, high]}`` or
``{randint: [low, high]}`` (integers, both ends included). Every value, and both
ends of every range, is validated by :func:`vae.config.parse_params` on top of
params.yaml, so a sweep can only ask for what ``dvc exp run -S`` would accept.
Reading a sweep needs no Ray.
"""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vae.config import Params, ParamsError, load_params, parse_params, validation_message
from vae.errors import UserError
from vae.pipeline import paths
from vae.pipeline.dvc_yaml import stage_params
from vae.pipeline.evaluate import SPLIT_METRICS
from vae.tracking.registry import DEFAULT_METRIC, DIRECTIONS, test_metric_refusal

EVALUATION_PREFIX = "eval_val_"  # the evaluate stage's metrics on validation, as MLflow shows them
# β-independent and known every epoch: −ELBO on validation (nats per image), what ASHA compares trials by
EPOCH_METRIC = "val_nelbo"
RANGES = ("uniform", "loguniform", "randint")


class SweepError(UserError, ValueError):
    """A sweep file asks for something the pipeline cannot do; the message names the file, key and value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Asha(_Strict):
    """ASHA (asynchronous successive halving): at epochs grace_period·rfᵏ it stops the trials whose
    validation −ELBO is outside the best 1/reduction_factor of those that got that far."""

    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0


class Resources(_Strict):
    """What each trial reserves: Ray runs as many at once as the cluster's CPUs and GPUs allow."""

    cpu: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0  # a fraction shares a GPU: 0.25 runs four trials on one

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("a trial can share one GPU (a fraction) or take whole GPUs, not a mix")
        return gpu


class SweepSpec(_Strict):
    """A sweep file, as written (the space is checked further by :func:`load_sweep`)."""

    space: dict[str, Any]
    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: Annotated[int, Field(ge=1)] = 1  # grid: repeats of the whole grid; random, optuna: trials
    metric: str = DEFAULT_METRIC
    mode: Literal["max", "min"] | None = None  # default: the metric's known direction
    epochs: Annotated[int, Field(ge=1)] | None = None  # every trial's epochs (default: params.yaml's)
    scheduler: Literal["none", "asha"] = "none"
    asha: Asha = Asha()
    resources: Resources = Resources()
    max_failures: Annotated[int, Field(ge=0)] = 2  # retries of a trial whose worker died (from its last epoch)
    max_concurrent: Annotated[int, Field(ge=1)] | None = None  # trials at once (default: as resources allow)


@dataclass
class Sweep:
    """A checked sweep: the spec, the base params (params.yaml with the epoch budget) and the space."""

    path: Path
    spec: SweepSpec
    base: dict[str, Any]  # params.yaml as a mapping, with the sweep's epoch budget
    mode: str  # max or min
    space: dict[str, Any]  # the spec's space, range ends as numbers (YAML reads 1e-3 as a string)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def keys(self) -> list[str]:
        return list(self.space)

    def params(self, overrides: dict[str, Any]) -> Params:
        """The validated params of a trial: params.yaml, the epoch budget, then ``overrides``."""
        return parse_params(apply_overrides(self.base, overrides))

    def reproduce_command(self, overrides: dict[str, Any], params_file: dict[str, Any], exp_name: str) -> str:
        """``dvc exp run -S … -n …``: the trial as a versioned DVC experiment, the same params and numbers."""
        settings = dict(overrides)
        if self.base["epochs"] != params_file["epochs"] and "epochs" not in settings:
            settings["epochs"] = self.base["epochs"]  # the sweep's epoch budget
        shown = " ".join(f"-S {shlex.quote(f'{key}={format_value(value)}')}" for key, value in settings.items())
        return f"dvc exp run {shown} -n {exp_name}"


def format_value(value: Any) -> str:
    """A value as ``-S key=value`` must spell it for DVC (Hydra's override grammar) to read it back."""
    if isinstance(value, float):
        return repr(value)  # the shortest spelling that reads back as the same float
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw params mapping with dotted ``overrides`` set (``{"train.lr": 0.01}``)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (merged[section] if section else merged)[name] = value
    return merged


def sweepable_keys(params: Params, dvc_yaml: Path = paths.DVC_YAML) -> list[str]:
    """The params.yaml keys a trial can change: those the train and evaluate stages read, but mlflow.*.

    data.* shapes the prepared data and classifier.* the feature network, which a sweep
    reuses as they are; mlflow.* says where results go, not what they are.
    """
    declared = [*stage_params("train", dvc_yaml), *stage_params("evaluate", dvc_yaml)]
    return [
        key
        for key in params.flat()
        if not key.startswith("mlflow.") and any(key == entry or key.startswith(entry + ".") for entry in declared)
    ]


def metric_names() -> list[str]:
    """What a sweep can rank its trials by: the evaluate stage's metrics on validation (trials never see test)."""
    return [EVALUATION_PREFIX + name for name in SPLIT_METRICS]


def _candidates(where: str, key: str, entry: Any, search: str) -> list[Any]:
    """The values of one space entry that must be valid params: every listed value, or both range ends."""
    if isinstance(entry, list):
        if not entry:
            raise SweepError(f"{where}: {key} lists no values")
        return entry
    if isinstance(entry, dict) and len(entry) == 1 and next(iter(entry)) in RANGES:
        kind, bounds = next(iter(entry.items()))
        if search == "grid":
            raise SweepError(f"{where}: {key} is a {kind} range, which a grid cannot enumerate (list values instead)")
        bounds = [float(b) if isinstance(b, str) else b for b in bounds] if isinstance(bounds, list) else bounds
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            or not bounds[0] < bounds[1]
        ):
            raise SweepError(f"{where}: {key}: {kind} takes [low, high] with low < high, got {bounds!r}")
        if kind == "randint" and not all(isinstance(b, int) for b in bounds):
            raise SweepError(f"{where}: {key}: randint takes two integers, got {bounds!r}")
        if kind == "loguniform" and bounds[0] <= 0:
            raise SweepError(f"{where}: {key}: loguniform needs low > 0, got {bounds!r}")
        return bounds
    raise SweepError(
        f"{where}: {key} = {entry!r} is neither a list of values nor one of "
        + ", ".join(f"{{{kind}: [low, high]}}" for kind in RANGES)
    )


def _read_spec(path: Path) -> SweepSpec:
    """The sweep file's own keys and types, and a space that is not empty."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SweepError(f"{path}: cannot read the sweep file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with at least a `space:` key")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SweepError(f"{path}: {validation_message(err, raw, SweepSpec)}") from None
    if not spec.space:
        raise SweepError(f"{path}: space is empty: name at least one params.yaml key and its values")
    return spec


def _ranking_mode(path: Path, metric: str, mode: str | None) -> str:
    """``max`` or ``min``: ``mode`` as the file says, else the direction of ``metric``, one the evaluate stage
    logs on validation."""
    if refusal := test_metric_refusal(metric):
        raise SweepError(f"{path}: metric {refusal}")
    if metric not in metric_names():
        raise SweepError(
            f"{path}: metric {metric} is not one the evaluate stage logs (one of: {', '.join(metric_names())})"
        )
    mode = mode or {"higher": "max", "lower": "min"}.get(DIRECTIONS.get(metric, ""))
    if mode is None:
        raise SweepError(f"{path}: metric {metric} has no known direction: add `mode: max` or `mode: min`")
    return mode


def load_sweep(path: Path | str, params_path: Path | str = paths.PARAMS) -> Sweep:
    """Read ``path`` and check it against ``params_path``; every problem is one :class:`SweepError` line.

    Checked: the file's own keys and types, that the space is not empty, that each
    key is a params.yaml key a trial can change, that each value (each range end)
    is a valid value of that key, and that the metric is one the evaluate stage logs.
    """
    path = Path(path)
    spec = _read_spec(path)
    mode = _ranking_mode(path, spec.metric, spec.mode)
    params = load_params(params_path)  # a broken params.yaml is reported as such, with its own line
    if not params.data.val_size:
        raise SweepError(
            f"{path}: {params_path} sets data.val_size: 0, and a sweep chooses on the validation split; "
            "set data.val_size (5000 by default) and rerun the prepare stage (dvc repro prepare)"
        )
    allowed = sweepable_keys(params)
    base = params.model_dump()  # the mapping the trials' overrides apply to
    if spec.epochs is not None:
        base["epochs"] = spec.epochs
    space: dict[str, Any] = {}
    for key, entry in spec.space.items():
        where = f"{path}: space"
        if key not in allowed:
            why = "is not a key a sweep can change" if key in params.flat() else "is not a params.yaml key"
            raise SweepError(f"{where}: {key} {why} (sweepable: {', '.join(allowed)})")
        values = _candidates(where, key, entry, spec.search)
        for value in values:
            try:
                parse_params(apply_overrides(base, {key: value}))
            except ParamsError as err:
                raise SweepError(f"{where}: {err}") from None
        space[key] = entry if isinstance(entry, list) else {next(iter(entry)): values}
    return Sweep(path, spec, base, mode, space)
