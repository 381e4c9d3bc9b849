"""A copy of this project for a benchmark to run the pipeline in, away from the working tree's results."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def project_copy(root: Path, changes: Mapping[str, object] | None = None) -> Path:
    """The files git would clone (and untracked ones it does not ignore: work not yet committed) in ``root``,
    without the recorded results (``metrics/``, ``dvc.lock``), as a git repository of its own, with the
    dotted params.yaml keys of ``changes`` set (``{"data.train_limit": 512}``). Returns ``root``."""
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(listing, cwd=REPO, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in (changes or {}).items():
        *sections, key = dotted.split(".")
        target = params
        for section in sections:
            target = target[section]
        target[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=benchmark", "-c", "user.email=bench@mark", "commit", "-qm", "benchmark copy"],
    ):
        subprocess.run(command, cwd=root, capture_output=True, check=True)
    return root
