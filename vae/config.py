"""The pipeline's parameters: ``params.yaml`` read and validated in one place, with pydantic.

Every key is declared once below, with its type and allowed range. pydantic
checks the file (strict types, ``extra="forbid"`` so that a typo is an unknown
key); anything wrong raises :class:`ParamsError` with one line naming the key,
the value and what is allowed, e.g. ``params.yaml: epochs = 0 is out of range:
it must be >= 1``. Reading the params needs neither torch nor MLflow, and neither does
:func:`project_root`, which the tracking server uses too.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from vae.errors import UserError

PARAMS_FILE = Path("params.yaml")


def project_root() -> Path:
    """The folder the project's relative paths are read against: ``DVC_ROOT`` when DVC runs the
    command, else the working directory.

    DVC runs a queued or ``--temp`` experiment in a temporary copy of the repository
    (``.dvc/tmp/exps/…``) and points ``DVC_ROOT`` at the original one, so a path set
    relative to the project (``FASHION_MNIST_DIR=../shared/data/fashion-mnist``, the
    MLflow store) means the same folder in every stage, wherever DVC runs it.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


# train.precision: "auto" (bf16 autocast on CPUs that compute bf16 natively, else fp32), "fp32" or "bf16"
PRECISIONS = ("auto", "fp32", "bf16")
# data.dataset: the data sets vae.data reads (a module each), Fashion-MNIST the default
DATASETS = ("fashion-mnist", "mnist", "kmnist", "cifar10", "folder")
# train.lr_schedule: PyTorch's schedulers, stepped per batch (see vae.trainer.make_scheduler)
LR_SCHEDULES = ("constant", "cosine", "onecycle")


class ParamsError(UserError, ValueError):
    """params.yaml holds something the pipeline cannot use; the message names key and value."""


def _number_from_text(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: take such strings as the number they spell."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _list_as_tuple(value: Any) -> Any:
    """YAML has lists, not tuples: a list is the tuple it spells (its items are still checked strictly)."""
    return tuple(value) if isinstance(value, list) else value


def _device_name(value: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is None:
        raise ValueError("it must be auto, cpu, cuda or cuda:N")
    return value


def _ascending(bounds: tuple[float, float]) -> tuple[float, float]:
    if not bounds[0] < bounds[1]:
        raise ValueError("it must be [low, high] with low < high")
    return bounds


Number = Annotated[float, BeforeValidator(_number_from_text), Field(allow_inf_nan=False)]
Text = Annotated[str, Field(pattern=r"\S")]  # a non-empty string, not only blanks
Range = Annotated[tuple[Number, Number], BeforeValidator(_list_as_tuple), AfterValidator(_ascending)]  # [low, high]


class _Section(BaseModel):
    # strict: no quiet coercion ("3" is not 3, 2.5 and true are not integers); an int is still a float
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(_Section):
    dataset: Literal[DATASETS]  # which reader of vae.data: see docs/data.md
    dir: Text  # where its files are (the data set's folder or its parent), relative to the project root
    channels: Literal["auto", 1, 3]  # auto: the data's own (a folder: 1 when every image is gray); 1 or 3: converted
    test_size: Annotated[int, Field(ge=1)] | None  # a folder without train/ and test/: test images carved (null: 1/7)
    val_size: Annotated[int, Field(ge=0)]  # validation images carved from the training images (stratified); 0: none
    val_seed: Annotated[int, Field(ge=0)]  # which images validation takes
    train_limit: Annotated[int, Field(ge=1)] | None  # keep the first N of the rest; null keeps all
    test_limit: Annotated[int, Field(ge=1)] | None


class TrainParams(_Section):
    lr: Annotated[Number, Field(gt=0)]
    batch_size: Annotated[int, Field(ge=1)]
    seed: Annotated[int, Field(ge=0)]
    lr_schedule: Literal[LR_SCHEDULES]  # stepped per batch: see vae.trainer.make_scheduler
    lr_min: Annotated[Number, Field(ge=0)]  # cosine: the lr at the last step
    lr_warmup: Annotated[Number, Field(gt=0, lt=1)]  # onecycle: the fraction of the steps that rises to lr
    precision: Literal[PRECISIONS]  # see vae.trainer.resolve_precision
    device: Annotated[str, AfterValidator(_device_name)]  # auto, cpu, cuda or cuda:N (see vae.utils.get_device)


class BetaScheduleParams(_Section):
    """β per epoch: ``constant`` (β every epoch) or ``linear`` from ``start`` at epoch 1 to β at
    epoch ``warmup_epochs`` and after. β weights the reconstruction term, so the usual KL
    warm-up (little KL pressure early) is a ``start`` *above* β."""

    kind: Literal["constant", "linear"]
    start: Annotated[Number, Field(ge=0)]
    warmup_epochs: Annotated[int, Field(ge=1)]


class EvaluateParams(_Section):
    num_reconstructions: Annotated[int, Field(ge=1, le=100)]
    batch_size: Annotated[int, Field(ge=1)]
    iw_samples: Annotated[int, Field(ge=1, le=10_000)]  # K of the importance-weighted log-likelihood
    knn_k: Annotated[int, Field(ge=1, le=100)]  # neighbours of the latent-space classifier
    fd_samples: Annotated[int, Field(ge=2)]  # generated samples for the Fréchet distance
    seed: Annotated[int, Field(ge=0)]  # of the noise of the sampled metrics (losses, NELBO, IW, FD samples)
    precision: Literal[PRECISIONS]  # the decoder's passes of NELBO and the IW bound (see vae.metrics)


class ClassifierParams(_Section):
    epochs: Annotated[int, Field(ge=1)]
    lr: Annotated[Number, Field(gt=0)]
    batch_size: Annotated[int, Field(ge=1)]
    seed: Annotated[int, Field(ge=0)]
    # the stage fails below this test accuracy; auto: the floor measured for the data set (none where unmeasured)
    min_accuracy: Literal["auto"] | Annotated[Number, Field(ge=0, le=1)]
    precision: Literal[PRECISIONS]  # its training's arithmetic (see vae.trainer.resolve_precision)


class GenerateParams(_Section):
    num_samples: Annotated[int, Field(ge=1, le=1000)]
    samples_per_row: Annotated[int, Field(ge=1, le=100)]
    grid_size: Annotated[int, Field(ge=2, le=50)]
    grid_range: Range
    interpolation_steps: Annotated[int, Field(ge=2, le=100)]
    seed: Annotated[int, Field(ge=0)]
    # the latent explorer: grid points per side of its decoded sprite (100² images keep the page under 5 MB)
    explorer_resolution: Annotated[int, Field(ge=2, le=100)]
    explorer_range: Range


class MlflowParams(_Section):
    experiment_name: Text
    system_metrics: bool  # log CPU, memory (and GPU) use during training as system/* metrics
    # the decoder and encoder as MLflow models (torch.export: seconds a run); false: the checkpoint alone
    log_models: bool
    registered_model: Text | None  # each training run's models become new versions of it (null: not registered)
    log_images_every: Annotated[int, Field(ge=0)]  # samples and reconstructions after every N-th epoch (0: never)


class Params(_Section):
    """Everything in params.yaml. ``beta``, ``latent_dim`` and ``epochs`` are top-level
    so that ``dvc exp run --set-param beta=100`` works as written."""

    beta: Annotated[Number, Field(ge=0)]  # weight of the reconstruction term (see vae.loss)
    latent_dim: Annotated[int, Field(ge=1, le=512)]
    epochs: Annotated[int, Field(ge=1)]
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
        for key, value in self.model_dump().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


# --- pydantic's error, as one line ---------------------------------------------------------------


def _describe(kind: Any) -> str:
    """What a field holds, in words: "an integer", "a number or null", "one of constant, linear"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        return _describe(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(k) for k in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    if origin is dict:
        return "a mapping of keys to values"
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return "a mapping of keys to values"
    return {int: "an integer", float: "a number", str: "a non-empty string", type(None): "null"}.get(kind, str(kind))


def _annotation(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    """The annotation of the field at ``path`` (section names, then the key) of ``model``."""
    for name in path[:-1]:
        model = model.model_fields[name].annotation
    return model.model_fields[path[-1]].annotation


_RANGES = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _message(error: dict[str, Any], raw: Any, root: type[BaseModel]) -> str:
    """pydantic's error as ``key = value is not …``, in this project's words."""
    loc = tuple(error["loc"])
    names = tuple(part for part in loc if isinstance(part, str))  # an int is an index inside a list
    key, kind = ".".join(names), error["type"]
    if kind == "model_type":
        return f"{key or 'the top level'} must be a mapping of keys to values, got {error['input']!r}"
    if kind == "extra_forbidden":
        holder = _annotation(root, names[:-1]) if len(names) > 1 else root
        where = ".".join(names[:-1]) or "the top level"
        intended = difflib.get_close_matches(names[-1], list(holder.model_fields), n=1, cutoff=0.6)
        if intended:
            return f"unknown key {key} (did you mean {'.'.join([*names[:-1], intended[0]])}?)"
        return f"unknown key {key} (allowed in {where}: {', '.join(holder.model_fields)})"
    annotation = _annotation(root, names)
    if kind == "missing" and len(names) == len(loc):
        return f"missing key {key} ({_describe(annotation)})"
    value = raw
    for name in names:
        value = value[name]
    if kind == "value_error" and len(names) == len(loc):  # a validator's own rule, e.g. train.device
        return f"{key} = {value!r} is not allowed: {error['ctx']['error']}"
    if len(names) < len(loc) or _describe(annotation).startswith("a list"):
        return f"{key} = {value!r} is not {_describe(annotation)}"  # a list: name it whole
    if kind in _RANGES:
        bound = next(iter(error["ctx"].values()))
        shown = float(value) if _describe(annotation).startswith("a number") else value  # as it was read
        return f"{key} = {shown!r} is out of range: it must be {_RANGES[kind]} {bound}"
    if kind == "literal_error":
        return f"{key} = {value!r} is not allowed: it must be {_describe(annotation)}"
    finite = " (must be finite)" if kind == "finite_number" else ""
    return f"{key} = {value!r} is not {_describe(annotation)}{finite}"


def validation_message(err: ValidationError, raw: Any, root: type[BaseModel]) -> str:
    """pydantic's ``err`` from validating ``raw`` as ``root`` (params.yaml, a sweep file), as one line.

    An unknown key is reported before all else: a typo (``latnet_dim``) also leaves the key
    it was meant to be missing, and the key the user typed is the culprit.
    """
    errors = [_without_union_branches(e, root) for e in err.errors()]
    # a value of a union (``auto`` or a number) fails every branch: a number is told the number's rule
    errors.sort(key=lambda e: e["type"] == "literal_error" and isinstance(e.get("input"), (int, float)))
    return _message(next((e for e in errors if e["type"] == "extra_forbidden"), errors[0]), raw, root)


def _without_union_branches(error: dict[str, Any], root: type[BaseModel]) -> dict[str, Any]:
    """``error`` with the names pydantic gives a union's branches (``literal['auto']``) left out of its location."""
    if error["type"] == "extra_forbidden":  # its last part is the unknown key itself
        return error
    loc, model, kept = tuple(error["loc"]), root, []
    for index, part in enumerate(loc):
        if isinstance(part, int):
            kept.extend(loc[index:])
            break
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            continue  # a branch's name: not a key of params.yaml
        kept.append(part)
        model = fields[part].annotation
    return error | {"loc": tuple(kept)}


def parse_params(raw: Any) -> Params:
    """Validate an already-loaded mapping (e.g. from YAML) into :class:`Params`.

    Raises:
        ParamsError: the first problem, as one line naming the key and the value.
    """
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(validation_message(err, raw, Params)) from None
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
