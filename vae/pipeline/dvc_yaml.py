"""dvc.yaml, read from Python: which params each stage declares and which stages feed it.

dvc.yaml is the one place that says what a stage depends on. Python reads it
from there instead of repeating it: the train stage's resume fingerprint covers
exactly the params DVC reruns train for, and each MLflow run logs the params of
its stage and of every stage upstream of it (what actually shaped its results).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vae.config import PARAMS_FILE, ParamsError
from vae.pipeline.paths import DVC_YAML


@dataclass(frozen=True)
class StageSpec:
    """One stage of dvc.yaml: its params keys (dotted, a key may be a whole section), deps and outs."""

    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]


def _names(entries: Iterable[Any]) -> list[str]:
    """Paths or keys of a dvc.yaml list, whose items are plain strings or ``{name: options}``."""
    names: list[str] = []
    for entry in entries or ():
        names.extend([entry] if isinstance(entry, str) else list(entry))
    return names


def _params(entries: Iterable[Any]) -> list[str]:
    """The params.yaml keys of a stage's ``params`` list (``- key`` or ``- params.yaml: [keys]``)."""
    keys: list[str] = []
    for entry in entries or ():
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):
            keys.extend(key for file, file_keys in entry.items() if file == str(PARAMS_FILE) for key in file_keys)
    return keys


def load_stages(path: Path | str = DVC_YAML) -> dict[str, StageSpec]:
    """Every stage of ``path``, by name.

    Raises:
        ParamsError: the file is missing or not a DVC pipeline; names the file.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ParamsError(
            f"{path}: cannot read the pipeline file ({err.strerror}); run stages from the project root"
        ) from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    stages = raw.get("stages") if isinstance(raw, dict) else None
    if not isinstance(stages, dict):
        raise ParamsError(f"{path}: no 'stages' mapping")
    return {
        name: StageSpec(
            name,
            tuple(_params(stage.get("params"))),
            tuple(_names(stage.get("deps"))),
            tuple(_names(stage.get("outs")) + _names(stage.get("metrics")) + _names(stage.get("plots"))),
        )
        for name, stage in stages.items()
    }


def _stage(stages: Mapping[str, StageSpec], name: str, path: Path | str) -> StageSpec:
    if name not in stages:
        raise ParamsError(f"{path}: no stage '{name}' (stages: {', '.join(stages)})")
    return stages[name]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _upstream(stages: Mapping[str, StageSpec], name: str, path: Path | str) -> list[str]:
    found: list[str] = []
    pending = [_stage(stages, name, path)]
    while pending:
        stage = pending.pop()
        for other in stages.values():
            feeds = any(_inside(dep, out) for dep in stage.deps for out in other.outs)
            if feeds and other.name not in found and other.name != name:
                found.append(other.name)
                pending.append(other)
    return found


def upstream(name: str, path: Path | str = DVC_YAML) -> list[str]:
    """The stages whose outputs ``name`` depends on, directly or through other stages."""
    return _upstream(load_stages(path), name, path)


def stage_params(name: str, path: Path | str = DVC_YAML) -> tuple[str, ...]:
    """The params keys dvc.yaml declares for stage ``name``: a change to any of them reruns it."""
    return _stage(load_stages(path), name, path).params


def lineage_params(name: str, path: Path | str = DVC_YAML) -> tuple[str, ...]:
    """The params keys of stage ``name`` and of every stage upstream of it."""
    stages = load_stages(path)
    keys = list(_stage(stages, name, path).params)
    for other in _upstream(stages, name, path):
        keys.extend(key for key in stages[other].params if key not in keys)
    return tuple(keys)


def select(flat: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The entries of dotted ``flat`` params that ``keys`` name, a section key (``train``) naming all under it."""
    keys = tuple(keys)
    return {k: v for k, v in flat.items() if any(_inside(k.replace(".", "/"), key.replace(".", "/")) for key in keys)}
