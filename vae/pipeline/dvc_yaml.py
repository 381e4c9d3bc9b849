"""dvc.yaml, read through DVC's own index: which params each stage declares and which stages feed it.

dvc.yaml is the one place that says what a stage depends on, and DVC reads it
here as it does for ``dvc repro``: the train stage's resume fingerprint covers
exactly the params DVC reruns train for, and each MLflow run logs the params of
its stage and of every stage upstream of it (what actually shaped its results).
DVC's public ``dvc.api.params_show(stages=…)`` gives a stage's param values but not the stages
upstream of it, and needs an initialized repository (a sweep's trial folder has none): hence the index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from vae.config import ParamsError
from vae.pipeline.paths import DVC_YAML


@cache
def _pipeline(path: Path, version: int) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """Each stage's params keys and the stages upstream of it, from DVC's index of ``path``'s folder
    (about 0.3 s, so read once per version of the file: ``version`` is its modification time).

    Raises:
        ParamsError: the file is missing or not a DVC pipeline; names the file.
    """
    import networkx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        # uninitialized: DVC's index of dvc.yaml alone, also where no .dvc/ folder is (a sweep's trial folder)
        with Repo(str(path.parent), uninitialized=True) as repo:
            graph = repo.index.graph
            stages = [stage for stage in graph if stage.path_in_repo == path.name]
            params = {
                stage.name: tuple(key for dep in stage.deps for key in getattr(dep, "params", None) or ())
                for stage in stages
            }
            upstream = {
                stage.name: tuple(other.name for other in networkx.descendants(graph, stage)) for stage in stages
            }
    except DvcException as err:
        first = str(err).splitlines()[0]
        cause = f": {str(err.__cause__).splitlines()[0]}" if err.__cause__ else ""
        raise ParamsError(f"{path}: not a DVC pipeline ({first}{cause})") from None
    return params, upstream


def _stage(name: str, path: Path | str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        version = Path(path).stat().st_mtime_ns
    except OSError as err:
        raise ParamsError(
            f"{path}: cannot read the pipeline file ({err.strerror}); run stages from the project root"
        ) from None
    params, upstream = _pipeline(Path(path).absolute(), version)
    if name not in params:
        raise ParamsError(f"{path}: no stage '{name}' (stages: {', '.join(params)})")
    return params[name], upstream[name]


def upstream(name: str, path: Path | str = DVC_YAML) -> list[str]:
    """The stages whose outputs ``name`` depends on, directly or through other stages."""
    return list(_stage(name, path)[1])


def stage_params(name: str, path: Path | str = DVC_YAML) -> tuple[str, ...]:
    """The params keys dvc.yaml declares for stage ``name`` (a key may be a whole section): a change to
    any of them reruns it."""
    return _stage(name, path)[0]


def lineage_params(name: str, path: Path | str = DVC_YAML) -> tuple[str, ...]:
    """The params keys of stage ``name`` and of every stage upstream of it."""
    keys, feeding = _stage(name, path)
    lineage = list(keys)
    for other in feeding:
        lineage.extend(key for key in _stage(other, path)[0] if key not in lineage)
    return tuple(lineage)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def select(flat: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The entries of dotted ``flat`` params that ``keys`` name, a section key (``train``) naming all under it."""
    keys = tuple(keys)
    return {k: v for k, v in flat.items() if any(_inside(k.replace(".", "/"), key.replace(".", "/")) for key in keys)}
