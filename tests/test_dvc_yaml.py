"""dvc.yaml declares what each stage reads, and Python takes it from there rather than repeating it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from vae.config import ParamsError, load_params
from vae.pipeline.dvc_yaml import lineage_params, load_stages, select, stage_params, upstream
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


def imported_files(script: Path) -> set[Path]:
    """Every file of the ``vae`` package that running ``script`` imports, transitively (package __init__s too)."""
    pending, seen = list(vae_imports(script)), set()
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing vae.a.b runs vae/__init__.py and vae/a/__init__.py
            package = ".".join(parts[:i])
            if package not in seen and module_file(package).exists():
                seen.add(package)
                pending.extend(vae_imports(module_file(package)))
    return {module_file(name).relative_to(REPO) for name in seen}


def covered(path: Path, deps: tuple[str, ...]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


def test_every_stage_depends_on_the_code_it_runs() -> None:
    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    assert stages, "dvc.yaml has no stages"
    for name, stage in stages.items():
        program, script = stage["cmd"].split()[:2]
        assert program == "python", f"{name}: {stage['cmd']}"
        files = imported_files(REPO / script)
        assert Path("vae/pipeline/paths.py") in files, f"{name}: the import walk found {files}"
        missing = sorted(
            str(f) for f in files | {Path(script)} if not covered(f, tuple(load_stages(DVC_YAML)[name].deps))
        )
        assert not missing, (
            f"stage {name} imports {missing} but dvc.yaml does not list them (or a folder above) in deps"
        )


def test_the_import_walk_sees_a_module_left_out(tmp_path: Path) -> None:
    """The check above can fail: a stage whose deps name only some modules is caught."""
    files = imported_files(REPO / "stages" / "train.py")
    assert {
        Path("vae/model.py"),
        Path("vae/fast_cpu.py"),
        Path("vae/pipeline/paths.py"),
        Path("vae/__init__.py"),
    } <= files
    assert not covered(Path("vae/fast_cpu.py"), ("stages/train.py", "vae/model.py"))


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
    with pytest.raises(ParamsError, match="not valid YAML"):
        stage_params("train", tmp_path / "dvc.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {prepare: {cmd: x}}")
    with pytest.raises(ParamsError, match=r"no stage 'train' \(stages: prepare\)"):
        stage_params("train", tmp_path / "dvc.yaml")
