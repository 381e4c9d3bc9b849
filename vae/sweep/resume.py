"""A sweep that survives its driver: ``python -m vae.sweep FILE`` killed mid-sweep and run again continues it.

While a sweep runs, ``<storage>/<sweep name>.unfinished.json`` names its Tune experiment folder, its
MLflow parent run and a fingerprint of what it ran (the sweep file and params.yaml, byte for byte).
The next run of the same sweep file finds it and, when the fingerprint still matches and Tune saved
its state (``Tuner.can_restore``), continues the same Tune experiment (``Tuner.restore``: finished
trials stay finished, unfinished ones go on from their last checkpoint) under the same parent run.
Otherwise it says in one line why it starts afresh. A sweep that ends, however it ends, removes the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vae.pipeline import paths
from vae.sweep.spec import Sweep


@dataclass(frozen=True)
class Unfinished:
    """What a sweep's driver left behind when it was killed."""

    experiment: str  # the Tune experiment's folder under the storage path
    parent_run_id: str  # the sweep's MLflow parent run
    fingerprint: str  # of the sweep file and params.yaml it ran with


def fingerprint(sweep: Sweep, params_file: Path = paths.PARAMS) -> str:
    """SHA-256 of the sweep file's and params.yaml's bytes: a change to either is another sweep."""
    digest = hashlib.sha256(sweep.path.read_bytes())
    digest.update(params_file.read_bytes())
    return digest.hexdigest()


def _marker(sweep: Sweep, storage: Path) -> Path:
    return storage / f"{sweep.name}.unfinished.json"


def find_unfinished(sweep: Sweep, storage: Path) -> tuple[Unfinished | None, Unfinished | None]:
    """``(the sweep to continue, or None; a stale one to close, or None)``. Prints why it starts afresh."""
    from ray import tune

    marker = _marker(sweep, storage)
    try:
        left = Unfinished(**json.loads(marker.read_text()))
    except (OSError, ValueError, TypeError):  # none (the usual case), or unreadable: nothing to continue
        return None, None
    if left.fingerprint != fingerprint(sweep):
        why = f"{sweep.path} or {paths.PARAMS} changed since"
    elif not tune.Tuner.can_restore(storage / left.experiment):
        why = f"Tune saved no state in {storage / left.experiment} for"
    else:
        print(f"sweep: continuing the interrupted sweep {left.experiment} (MLflow parent run {left.parent_run_id})")
        return left, None
    print(f"sweep: starting afresh: {why} the interrupted sweep {left.experiment} (run {left.parent_run_id})")
    return None, left


def close_stale(stale: Unfinished) -> None:
    """Mark the parent run of an interrupted sweep that will not be continued as KILLED, if still RUNNING."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        if client.get_run(stale.parent_run_id).info.status == "RUNNING":
            client.set_terminated(stale.parent_run_id, "KILLED")
    except mlflow.exceptions.MlflowException:  # deleted, or in another store: nothing to close here
        pass


def mark_unfinished(sweep: Sweep, storage: Path, experiment: str, parent_run_id: str) -> None:
    """Record the running sweep, for a later run of the same file to continue."""
    storage.mkdir(parents=True, exist_ok=True)
    _marker(sweep, storage).write_text(json.dumps(asdict(Unfinished(experiment, parent_run_id, fingerprint(sweep)))))


def mark_finished(sweep: Sweep, storage: Path) -> None:
    _marker(sweep, storage).unlink(missing_ok=True)
