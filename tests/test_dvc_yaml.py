"""dvc.yaml declares what each stage reads, and Python takes it from there rather than repeating it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from vae.config import ParamsError, load_params
from vae.pipeline.dvc_yaml import lineage_params, select, stage_params, upstream
from vae.pipeline.train import training_settings

REPO = Path(__file__).resolve().parents[1]
DVC_YAML = REPO / "dvc.yaml"


def module_file(name: str) -> Path:
    """``vae.x`` → vae/x.py, ``vae`` (or a subpackage) → its __init__.py."""
    path = REPO.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def vae_imports(source: Path) -> set[str]:
    """The ``vae`` modules a file imports anywhere in it (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "vae"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vae":
            found.add(node.module)
            # `from vae.pipeline import paths` imports the module vae.pipeline.paths
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}").exists()}
    return found


# the packages above the library and, for each, those it may import (the library, vae/*.py, imports none)
ALLOWED = {"library": set(), "vae.tracking": set(), "vae.pipeline": {"vae.tracking"}}
ALLOWED["vae.compare"] = {"vae.tracking"}
ALLOWED["vae.sweep"] = {"vae.pipeline", "vae.tracking", "vae.compare"}


def role(module: str) -> str:
    """``vae.tracking.store`` → ``vae.tracking``; a module of the library itself → ``library``."""
    package = ".".join(module.split(".")[:2])
    return package if package in ALLOWED else "library"


def upward_imports(source: Path, module: str) -> list[str]:
    """The imports of ``source`` (the module ``module``) that run against the arrows of the layout."""
    own = role(module)
    return sorted(name for name in vae_imports(source) if role(name) not in {own, "library", *ALLOWED[own]})


def test_imports_run_one_way_from_stages_to_pipeline_to_tracking_and_the_library() -> None:
    checked = 0
    for source in sorted((REPO / "vae").rglob("*.py")):
        module = ".".join(source.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        assert not upward_imports(source, module), f"{module} imports {upward_imports(source, module)}"
        checked += 1
    assert checked >= 30
    for script in (REPO / "stages").glob("*.py"):  # a stage calls its pipeline module and nothing else
        assert {role(name) for name in vae_imports(script)} <= {"vae.pipeline", "library"}, script


def test_the_import_rule_catches_a_library_module_reaching_up(tmp_path: Path) -> None:
    """The check above can fail: an import inside a function of the library is found."""
    source = tmp_path / "example.py"
    source.write_text("def main():\n    from vae.tracking.store import tracking_uri\n    from vae import model\n")
    assert upward_imports(source, "vae.example") == ["vae.tracking.store"]
    assert upward_imports(source, "vae.pipeline.train") == []
    assert upward_imports(source, "vae.tracking.registry") == []


def test_train_params_come_from_dvc_yaml() -> None:
    declared = yaml.safe_load(DVC_YAML.read_text())["stages"]["train"]["params"]
    assert stage_params("train", DVC_YAML) == tuple(declared)
    params = load_params(REPO / "params.yaml")
    settings = training_settings(params, DVC_YAML)
    assert settings["beta"] == params.beta and settings["train.lr"] == params.train.lr
    assert settings["evaluate.batch_size"] == params.evaluate.batch_size
    assert not any(key.startswith(("generate.", "classifier.", "data.")) for key in settings)
    assert "evaluate.knn_k" not in settings


def test_training_settings_follow_an_edited_dvc_yaml(tmp_path: Path) -> None:
    spec = yaml.safe_load(DVC_YAML.read_text())
    spec["stages"]["train"]["params"].append("generate.seed")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())  # dvc.yaml's ${data.dir} reads it
    settings = training_settings(load_params(REPO / "params.yaml"), tmp_path / "dvc.yaml")
    assert "generate.seed" in settings


def test_lineage_params_cover_the_stage_and_everything_upstream() -> None:
    assert upstream("evaluate", DVC_YAML) and set(upstream("evaluate", DVC_YAML)) == {"prepare", "train", "classifier"}
    assert set(upstream("generate", DVC_YAML)) == {"prepare", "train"}
    assert upstream("prepare", DVC_YAML) == []
    flat = load_params(REPO / "params.yaml").flat()
    evaluate = select(flat, lineage_params("evaluate", DVC_YAML))
    assert {"beta", "train.lr", "data.train_limit", "classifier.epochs", "evaluate.knn_k"} <= set(evaluate)
    assert not any(key.startswith("generate.") for key in evaluate)
    generate = select(flat, lineage_params("generate", DVC_YAML))
    assert {"beta", "generate.seed", "data.test_limit"} <= set(generate)
    assert not any(key.startswith(("evaluate.knn", "classifier.")) for key in generate)
    # a section key selects its keys, and `beta` does not select `beta_schedule.*`
    assert select({"beta": 1, "beta_schedule.kind": "x", "train.lr": 2}, ["beta"]) == {"beta": 1}


def test_missing_or_broken_dvc_yaml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"dvc.yaml: cannot read the pipeline file .*project root"):
        stage_params("train", tmp_path / "dvc.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: [")
    with pytest.raises(ParamsError, match="dvc.yaml: not a DVC pipeline .*YAML file structure is corrupted"):
        stage_params("train", tmp_path / "dvc.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {prepare: {cmd: x}}")
    with pytest.raises(ParamsError, match=r"no stage 'train' \(stages: prepare\)"):
        stage_params("train", tmp_path / "dvc.yaml")
