"""The pipeline's parameters: ``params.yaml`` read and validated in one place.

Every key is declared once below, with its type and allowed range; anything
else in the file (a missing key, a wrong type, a value out of range, an unknown
key such as a typo) raises :class:`ParamsError` with a one-line message naming
the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vae.trainer import PRECISIONS

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml holds something the pipeline cannot use; the message names key and value."""


def _range(*, gt: float | None = None, ge: float | None = None, le: float | None = None) -> dict[str, Any]:
    return {"metadata": {"gt": gt, "ge": ge, "le": le}}


def _choices(*allowed: str) -> dict[str, Any]:
    return {"metadata": {"choices": allowed}}


@dataclass(frozen=True)
class DataParams:
    train_limit: int | None = field(**_range(ge=1))  # keep the first N images; null keeps all
    test_limit: int | None = field(**_range(ge=1))


@dataclass(frozen=True)
class TrainParams:
    lr: float = field(**_range(gt=0))
    batch_size: int = field(**_range(ge=1))
    seed: int = field(**_range(ge=0))
    # auto, fp32, or bf16 autocast for the forward pass (see vae.trainer.resolve_precision)
    precision: str = field(**_choices(*PRECISIONS))


@dataclass(frozen=True)
class BetaScheduleParams:
    """β per epoch: ``constant`` (β every epoch) or ``linear`` from ``start`` at epoch 1 to β at
    epoch ``warmup_epochs`` and after. β weights the reconstruction term, so the usual KL
    warm-up (little KL pressure early) is a ``start`` *above* β."""

    kind: str = field(**_choices("constant", "linear"))
    start: float = field(**_range(ge=0))
    warmup_epochs: int = field(**_range(ge=1))


@dataclass(frozen=True)
class EvaluateParams:
    num_reconstructions: int = field(**_range(ge=1, le=100))
    batch_size: int = field(**_range(ge=1))
    iw_samples: int = field(**_range(ge=1, le=10_000))  # K of the importance-weighted log-likelihood
    knn_k: int = field(**_range(ge=1, le=100))  # neighbours of the latent-space classifier
    fd_samples: int = field(**_range(ge=2))  # generated samples for the Fréchet distance


@dataclass(frozen=True)
class ClassifierParams:
    epochs: int = field(**_range(ge=1))
    lr: float = field(**_range(gt=0))
    batch_size: int = field(**_range(ge=1))
    seed: int = field(**_range(ge=0))
    min_accuracy: float = field(**_range(ge=0, le=1))  # the stage fails below this test accuracy


@dataclass(frozen=True)
class GenerateParams:
    num_samples: int = field(**_range(ge=1, le=1000))
    samples_per_row: int = field(**_range(ge=1, le=100))
    grid_size: int = field(**_range(ge=2, le=50))
    grid_range: tuple[float, float]
    interpolation_steps: int = field(**_range(ge=2, le=100))
    seed: int = field(**_range(ge=0))


@dataclass(frozen=True)
class MlflowParams:
    experiment_name: str


@dataclass(frozen=True)
class Params:
    """Everything in params.yaml. ``beta``, ``latent_dim`` and ``epochs`` are top-level
    so that ``dvc exp run --set-param beta=100`` works as written."""

    beta: float = field(**_range(ge=0))  # weight of the reconstruction term (see vae.loss)
    latent_dim: int = field(**_range(ge=1, le=512))
    epochs: int = field(**_range(ge=1))
    beta_schedule: BetaScheduleParams
    data: DataParams
    train: TrainParams
    evaluate: EvaluateParams
    classifier: ClassifierParams
    generate: GenerateParams
    mlflow: MlflowParams

    def beta_at(self, epoch: int) -> float:
        """The β used in ``epoch`` (numbered from 1) under ``beta_schedule``."""
        schedule = self.beta_schedule
        if schedule.kind == "constant" or schedule.warmup_epochs == 1:
            return self.beta
        progress = min((epoch - 1) / (schedule.warmup_epochs - 1), 1.0)
        return schedule.start + progress * (self.beta - schedule.start)

    def flat(self) -> dict[str, Any]:
        """``{"beta": 500.0, "train.lr": 0.001, ...}``: dotted keys, as DVC and MLflow show them."""
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(k) for k in typing.get_args(kind))
    if origin is tuple:
        return f"a list of {len(typing.get_args(kind))} numbers"
    return {int: "an integer", float: "a number", str: "a non-empty string", type(None): "null"}.get(
        kind, getattr(kind, "__name__", str(kind))
    )


def _convert(kind: Any, value: Any) -> Any:
    """``value`` as ``kind``, or raise TypeError/ValueError."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return _convert(option, value)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError
        return tuple(_convert(a, v) for a, v in zip(args, value))
    if kind is type(None):
        if value is not None:
            raise TypeError
        return None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise TypeError from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return float(value)
    if kind is str:
        if not isinstance(value, str) or not value.strip():
            raise TypeError
        return value
    raise TypeError


def _check_range(name: str, value: Any, bounds: dict[str, Any]) -> None:
    if value is None or not bounds:
        return
    if "choices" in bounds:
        if value not in bounds["choices"]:
            raise ParamsError(f"{name} = {value!r} is not allowed: it must be one of {', '.join(bounds['choices'])}")
        return
    for op, bound, ok in (
        (">", bounds.get("gt"), lambda v, b: v > b),
        (">=", bounds.get("ge"), lambda v, b: v >= b),
        ("<=", bounds.get("le"), lambda v, b: v <= b),
    ):
        if bound is not None and not ok(value, bound):
            raise ParamsError(f"{name} = {value!r} is out of range: it must be {op} {bound}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"unknown key {prefix}{unknown[0]!s} (allowed in {where}: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            raise ParamsError(f"missing key {key} ({_describe(hints[name])})")
        kind, value = hints[name], raw[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, key + ".")
            continue
        try:
            values[name] = _convert(kind, value)
        except (TypeError, ValueError) as err:
            detail = f" ({err})" if str(err) else ""
            raise ParamsError(f"{key} = {value!r} is not {_describe(kind)}{detail}") from None
        _check_range(key, values[name], f.metadata)
    return cls(**values)


def _check_relations(params: Params) -> None:
    low, high = params.generate.grid_range
    if not low < high:
        raise ParamsError(f"generate.grid_range = {[low, high]} must be [low, high] with low < high")


def parse_params(raw: Any) -> Params:
    """Validate an already-loaded mapping (e.g. from YAML) into :class:`Params`."""
    params = _build(Params, raw, "")
    _check_relations(params)
    return params


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate ``path`` (default ``params.yaml`` in the working directory).

    Raises:
        ParamsError: the file is missing, is not YAML, or holds an invalid value.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ParamsError(f"{path}: cannot read the parameters file ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    try:
        return parse_params(raw)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None
