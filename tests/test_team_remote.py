"""The team's DVC remote on S3 (moto's server on loopback) and a git origin: results and experiments shared
between two clones, as docs/team.md sets them up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import write_fashion_mnist
from project import S3Server, clean_env, new_project, run


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return clean_env(write_fashion_mnist(tmp_path_factory.mktemp("idx"), 300, 200))


@pytest.mark.slow
def test_a_dvc_remote_and_a_git_origin_share_results_and_experiments(
    s3: S3Server, env: dict[str, str], tmp_path: Path
) -> None:
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path, env)
    a = new_project(tmp_path / "a", env, log_models=False)
    # clone A: docs/team.md's commands, the S3 credentials in the environment (never in a config file or argv)
    env = env | s3.credentials
    run(["dvc", "remote", "add", "-d", "storage", "s3://team/dvc"], a, env)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint], a, env)
    run(["dvc", "repro"], a, env)
    run(["git", "add", "-A"], a, env)
    run(["git", "commit", "-qm", "results"], a, env)
    run(["git", "remote", "add", "origin", str(origin)], a, env)
    run(["git", "push", "-q", "origin", "HEAD:main"], a, env)
    run(["dvc", "push"], a, env)
    lock = {
        o["path"]: o["md5"]
        for st in yaml.safe_load((a / "dvc.lock").read_text())["stages"].values()
        for o in st["outs"]
    }
    pushed = set(s3.keys("dvc/files/md5/"))
    for output in ("data/prepared", "models/vae.pth", "models/classifier.pth", "outputs/generate"):
        assert f"dvc/files/md5/{lock[output][:2]}/{lock[output][2:]}" in pushed, output
    out = run(["dvc", "exp", "run", "-S", "beta=100"], a, env)
    [name] = re.findall(r"Ran experiment\(s\): (\S+)", out) or [None]
    assert name, out
    run(["dvc", "exp", "push", "origin", name], a, env)

    b = tmp_path / "b"
    run(["git", "clone", "-q", "--branch", "main", str(origin), str(b)], tmp_path, env)
    run(["dvc", "pull"], b, env)
    for output in ("models/vae.pth", "models/classifier.pth", "data/prepared/train.pt"):
        assert (b / output).is_file(), output
    assert (b / "data/prepared/train.pt").read_bytes() == (a / "data/prepared/train.pt").read_bytes()
    assert "up to date" in run(["dvc", "status"], b, env)  # every output matches dvc.lock's hashes
    assert "Running stage" not in run(["dvc", "repro"], b, env)  # nothing recomputed
    assert not (b / "mlflow.db").exists()

    run(["dvc", "exp", "pull", "origin", name], b, env)
    table = json.loads(run(["dvc", "exp", "show", "-A", "--json"], b, env))
    shown = {
        exp["name"]: exp["revs"][0]["data"]
        for rev in table
        for exp in (rev.get("experiments") or [])
        if exp.get("name")
    }
    assert name in shown, table
    assert shown[name]["params"]["params.yaml"]["data"]["beta"] == 100
    assert shown[name]["metrics"]["metrics/evaluate.json"]["data"]["val_nelbo"] > 0
