"""The README and docs/ say what the code does: their bad-input table and their commands are checked here."""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import fill, idx_bytes, write_fashion_mnist
from project import empty_mlflow_store

from vae.config import load_params
from vae.data import ImageSplit, read_split, resolve_data_dir
from vae.errors import UserError
from vae.faults import describe
from vae.model import VAE
from vae.pipeline import evaluate as evaluate_stage
from vae.pipeline import generate as generate_stage
from vae.pipeline import train as train_stage
from vae.pipeline.dvc_yaml import stage_params
from vae.pipeline.train import train_pipeline
from vae.storage import load_model, load_prepared, save_model
from vae.sweep.cluster import check_reachable
from vae.sweep.spec import load_sweep
from vae.tracking.postgres import LocalPostgres
from vae.tracking.registry import Candidate, rank
from vae.tracking.runs import read_run_id
from vae.tracking.server import STORE_URI_VAR, check_artifacts_destination, store_uri
from vae.tracking.store import TrackingError, check_database, check_tracking_store, refused
from vae.trainer import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_a_front_door_that_links_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 10_000
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", readme))
    assert len(linked) >= 3 and all((REPO / page).is_file() for page in linked)
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= linked  # no page is an orphan
    for page in PAGES:  # every relative link between pages points at a file
        for target in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links {target}"


def test_ci_runs_the_readme_s_set_up_and_test_commands_verbatim() -> None:
    """CI runs what a newcomer copies: every line of the README's set-up block and its test command."""
    readme = (REPO / "README.md").read_text()
    setup, test = re.findall(r"```bash\n(.*?)```", readme.split("## Set up", 1)[1], flags=re.S)[:2]
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    lines = [line for line in (setup + test).splitlines() if line.strip()]
    assert any(line.startswith("export FASHION_MNIST_DIR=") for line in lines)
    assert lines[-1] == "python -m pytest"
    for line in lines:
        assert line in ci_lines, f".ci/run lacks the README's line: {line}"


# --- the bad-input table: each row reproduced, its message compared with the real one -------------------------


def _params_with(tmp: Path, change: Callable[[dict], None]) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    change(raw)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    load_params(Path("params.yaml"))


def _set(dotted: str, value: object) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        *parents, key = dotted.split(".")
        for parent in parents:
            raw = raw[parent]
        raw[key] = value

    return change


def _rename(dotted: str, typo: str) -> Callable[[dict], None]:
    """The key at ``dotted`` spelt ``typo`` instead, as a user's slip would leave the file."""

    def change(raw: dict) -> None:
        *parents, key = dotted.split(".")
        for parent in parents:
            raw = raw[parent]
        raw[typo] = raw.pop(key)

    return change


def _batch_above_data(tmp: Path) -> None:
    _params_with(tmp, _set("train.batch_size", 1000))
    images = ImageSplit(torch.zeros(300, 1, 32, 32, dtype=torch.uint8), torch.zeros(300, dtype=torch.long))
    train_pipeline(load_params(Path("params.yaml")), images, images, torch.device("cpu"), [])


def _val_size_above_data(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vae.pipeline import prepare

    monkeypatch.setenv("FASHION_MNIST_DIR", str(write_fashion_mnist(tmp / "idx", 64, 8)))
    _params_with(tmp, _set("data.val_size", 60))
    prepare.main()


def _no_data(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp / "nowhere"))
    resolve_data_dir()


def _prepare_folder(folder: Path) -> None:
    from vae.data import read_dataset

    read_dataset("folder", folder)


def _folder_of(tmp: Path, change: Callable[[Path], None]) -> None:
    """Prepare a folder of images (``tests/datasets.py``'s mixed one) after ``change`` broke it."""
    from datasets import write_mixed_folder

    change(write_mixed_folder(tmp / "pictures"))
    _prepare_folder(tmp / "pictures")


def _missing_cifar_batch(tmp: Path) -> None:
    from datasets import write_cifar10

    from vae.data import read_dataset

    (write_cifar10(tmp / "cifar") / "cifar-10-batches-py" / "data_batch_3").unlink()
    read_dataset("cifar10", tmp / "cifar")


def _channels_mismatch(tmp: Path) -> None:
    save_model(VAE(latent_dim=2, input_channels=1), Path("models/vae.pth"))
    load_model(Path("models/vae.pth"), expected_channels=3)


def _mixed_data(tool: str) -> Callable[[Path], None]:
    """Rank two trainings, one on CIFAR-10 and one on a folder (compare), or two registered versions, one
    on CIFAR-10 and one logged before runs were tagged with their data (promote)."""
    from vae.tracking.data_tags import data_tags, mixed_data
    from vae.tracking.registry import same_data

    cifar, digits = data_tags("cifar10", 3), data_tags("folder", 1, "/data/digits", "0" * 32)
    if tool == "compare":
        return lambda tmp: _raise(UserError(mixed_data([("beta-500 (1a2b)", cifar), ("digits (3c4d)", digits)])))(tmp)
    return lambda tmp: same_data([Candidate(1, "a" * 32, {}, {}, cifar), Candidate(2, "b" * 32, {}, {}, {})], None)


# --- faults of the machine: each made for real, its line as run_command says it for the stage -----------------


def _training_state(epoch: int) -> None:
    """Save a real resume state after ``epoch`` in ./checkpoints, as the train stage does."""
    from vae.pipeline.resume import TrainState, save_state

    model = VAE(latent_dim=2)
    optimizer = torch.optim.Adam(model.parameters())
    save_state(TrainState("fingerprint", epoch, model.state_dict(), optimizer.state_dict(), {}, {}, "0" * 32, None))


def _disk_fills_in_training(tmp: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Path) -> None:
    monkeypatch.chdir(small_disk)
    _training_state(1)
    fill(small_disk, leave=0)
    _training_state(2)  # PyTorch's zip writer: a RuntimeError whose context is the disk's ENOSPC


def _disk_fills_in_sqlite(tmp: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Path) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_mlflow_store(small_disk))
    client = mlflow.MlflowClient()
    client.create_experiment("before")
    fill(small_disk, leave=0)
    client.create_experiment("after")


def _disk_fills_in_a_picture(tmp: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Path) -> None:
    import matplotlib.pyplot as plt

    from vae.generator import save_figure

    monkeypatch.chdir(small_disk)
    fill(small_disk, leave=0)
    figure = plt.figure()
    try:
        save_figure(figure, Path("outputs/evaluate/vae_reconstructions.png"))
    finally:
        plt.close(figure)


def _disk_too_small_for_training(tmp: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Path) -> None:
    from vae.pipeline.train import check_disk_space

    monkeypatch.chdir(small_disk)
    fill(small_disk, leave=100_000)
    check_disk_space(VAE(latent_dim=2), Path("checkpoints"), log_models=True)


def _read_only_outputs(tmp: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Path) -> None:
    from vae.storage import atomic_write

    monkeypatch.chdir(small_disk)
    Path("outputs/generate").mkdir(parents=True)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    atomic_write(Path("outputs/generate/vae_generated_samples.png"), lambda tmp: tmp.write_bytes(b"png"))


def _out_of_gpu_memory_in_training(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vae.pipeline import train

    def step(*args: object, **kwargs: object) -> None:  # what a CUDA step raises when the batch does not fit
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    _training_state(1)
    monkeypatch.setattr(train, "train_epoch", step)
    images = ImageSplit(torch.zeros(256, 1, 32, 32, dtype=torch.uint8), torch.arange(256) % 10)
    training = train.start_training(load_params(REPO / "params.yaml"), images, None, torch.device("cpu"))
    training.train_epoch(2)


def _out_of_memory_in_evaluate(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vae.pipeline import evaluate

    def estimate(*args: object, **kwargs: object) -> None:  # the IW bound's K decodes of every image
        raise MemoryError

    monkeypatch.setattr(evaluate, "importance_weighted_log_likelihood", estimate)
    split = ImageSplit(torch.zeros(20, 1, 32, 32, dtype=torch.uint8), torch.arange(20) % 10)
    params = load_params(REPO / "params.yaml")
    evaluate.evaluate_split(
        VAE(latent_dim=2), None, torch.zeros(20, 2), split.labels, split, params, torch.device("cpu")
    )


def _wrong_magic(tmp: Path) -> None:
    folder = write_fashion_mnist(tmp / "idx", 8, 8)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.zeros((8, 1, 1), dtype=np.uint8)))  # a 3-D file (0x0803) where labels belong
    read_split(folder, "train")


def _truncated_idx(tmp: Path) -> None:
    folder = write_fashion_mnist(tmp / "idx", 8, 32, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    read_split(folder, "test")


def _wrong_shape(tmp: Path) -> None:
    torch.save({"images": torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "labels": torch.zeros(4).long()}, "test.pt")
    load_prepared(tmp / "test.pt")


def _latent_mismatch(tmp: Path) -> None:
    save_model(VAE(latent_dim=2), Path("models/vae.pth"))
    load_model(Path("models/vae.pth"), expected_latent_dim=8)


def _truncated_checkpoint(tmp: Path) -> None:
    save_model(VAE(latent_dim=2), tmp / "m.pth")
    (tmp / "m.pth").write_bytes((tmp / "m.pth").read_bytes()[:1000])
    load_model(tmp / "m.pth")


def _other_pth(tmp: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, tmp / "o.pth")
    load_model(tmp / "o.pth")


def _unreachable(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # port 9 (discard) is closed on the machines this runs on; check it is
        assert s.connect_ex(("127.0.0.1", 9)) != 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    check_tracking_store()


def _not_mlflow(tmp: Path, monkeypatch: pytest.MonkeyPatch, not_mlflow: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", not_mlflow)
    check_tracking_store()


def _unreachable_database(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 9)) != 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:secret@127.0.0.1:9/mlflow")
    check_tracking_store()


def _wrong_password(tmp: Path, postgres: LocalPostgres) -> None:
    check_database(postgres.uri.replace(postgres.password_file.read_text().strip(), "wrong"), STORE_URI_VAR)


def _missing_bucket(tmp: Path, monkeypatch: pytest.MonkeyPatch, s3: object) -> None:
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    check_artifacts_destination("s3://no-such-bucket/mlflow")


def _promote_by(metric: str) -> Callable:
    """Rank two real-looking candidates (what the registry's evaluate runs hold) by ``metric``."""
    evaluated = {
        "eval_val_iw_log_likelihood": -240.0,
        "eval_val_nelbo": 250.0,
        "eval_val_nelbo_kl": 20.0,
        "eval_test_nelbo": 251.0,
        "eval_test_loss": 90.0,
    }
    return lambda tmp: rank([Candidate(1, "a" * 32, {}, evaluated), Candidate(2, "b" * 32, {}, evaluated)], metric)


def _bad_run_id(tmp: Path) -> None:
    Path("outputs").mkdir()
    Path("outputs/train_run_id.txt").write_text("not a run id!\n")
    read_run_id(Path("outputs/train_run_id.txt"))


def _raise(error: Exception) -> Callable[[Path], None]:
    def reproduce(tmp: Path) -> None:
        raise error

    return reproduce


def _sweep(spec: dict, **params: object) -> Callable[[Path], None]:
    """Load the sweep file ``spec`` against params.yaml with dotted ``params`` changed."""

    def reproduce(tmp: Path) -> None:
        shutil.copy(REPO / "dvc.yaml", tmp / "dvc.yaml")
        _params_with(tmp, lambda raw: [_set(key, value)(raw) for key, value in params.items()])
        (tmp / "s.yaml").write_text(yaml.safe_dump(spec))
        load_sweep(Path("s.yaml"))

    return reproduce


def _refused(status: int, env: dict[str, str], what: str = "") -> Callable:
    """The refusal of a server with authentication, as the stages report it (tests/test_team.py meets the real one)."""

    def reproduce(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        raise TrackingError(refused("http://127.0.0.1:5000", status, what))

    return reproduce


REPRODUCE: dict[str, Callable] = {
    "the disk fills during training (train)": _disk_fills_in_training,
    "the disk fills while MLflow's SQLite store is written": _disk_fills_in_sqlite,
    "the disk fills while a picture is written (evaluate)": _disk_fills_in_a_picture,
    "the disk cannot hold a training (train, before it starts)": _disk_too_small_for_training,
    "a read-only `outputs/` (generate)": _read_only_outputs,
    "GPU memory runs out (train)": _out_of_gpu_memory_in_training,
    "memory runs out (evaluate)": _out_of_memory_in_evaluate,
    "`epochs: ten`": lambda tmp: _params_with(tmp, _set("epochs", "ten")),
    "`beta: high`": lambda tmp: _params_with(tmp, _set("beta", "high")),
    "`epochs: 0`": lambda tmp: _params_with(tmp, _set("epochs", 0)),
    "`latent_dim: 0`": lambda tmp: _params_with(tmp, _set("latent_dim", 0)),
    "`beta: -1`": lambda tmp: _params_with(tmp, _set("beta", -1)),
    "`beta: .nan`": lambda tmp: _params_with(tmp, _set("beta", float("nan"))),
    "`train.lr: 0`": lambda tmp: _params_with(tmp, _set("train.lr", 0)),
    "`train.batch_size` above the data": _batch_above_data,
    "`train.seed` missing": lambda tmp: _params_with(tmp, lambda raw: raw["train"].pop("seed")),
    "typo `latnet_dim: 2` for `latent_dim`": lambda tmp: _params_with(tmp, _rename("latent_dim", "latnet_dim")),
    "typo `lrr:` under `train:`": lambda tmp: _params_with(tmp, _rename("train.lr", "lrr")),
    "unknown key `colour: red`": lambda tmp: _params_with(tmp, _set("colour", "red")),
    "`data.val_size` above the data": _val_size_above_data,
    "no data files": _no_data,
    "`data.dataset: imagenet`": lambda tmp: _params_with(tmp, _set("data.dataset", "imagenet")),
    "`data.dir` names no folder (`data.dataset: folder`)": lambda tmp: _prepare_folder(tmp / "nowhere"),
    "an empty folder": lambda tmp: (tmp / "empty").mkdir() or _prepare_folder(tmp / "empty"),
    "a class folder without images": lambda tmp: _folder_of(
        tmp, lambda folder: [p.unlink() for p in (folder / "dog").iterdir()]
    ),
    "a file that is not an image": lambda tmp: _folder_of(
        tmp, lambda folder: (folder / "cat" / "notes.png").write_text("not a picture")
    ),
    "a missing CIFAR-10 batch": _missing_cifar_batch,
    "checkpoint of the other channel count": _channels_mismatch,
    "`python -m vae.compare` of trainings on different data": _mixed_data("compare"),
    "`python -m vae.tracking.promote` over versions on different data": _mixed_data("promote"),
    "IDX file with a wrong magic number": _wrong_magic,
    "truncated IDX file": _truncated_idx,
    "prepared tensors of the wrong shape": _wrong_shape,
    "prepared file missing": lambda tmp: load_prepared(Path("data/prepared/train.pt")),
    "checkpoint for another latent_dim": _latent_mismatch,
    "truncated checkpoint": _truncated_checkpoint,
    "some other `.pth` file": _other_pth,
    "unreachable `MLFLOW_TRACKING_URI`": _unreachable,
    "`MLFLOW_TRACKING_URI` that is not an MLflow server": _not_mlflow,
    "unreachable database in `MLFLOW_TRACKING_URI`": _unreachable_database,
    "wrong database password (`vae.tracking.server`)": _wrong_password,
    "a server with authentication, no `MLFLOW_TRACKING_USERNAME`": _refused(401, {}),
    "a wrong `MLFLOW_TRACKING_PASSWORD`": _refused(401, {"MLFLOW_TRACKING_USERNAME": "admin"}),
    "a READ user trains": _refused(403, {"MLFLOW_TRACKING_USERNAME": "reader"}, "write runs or models there"),
    "a password in `--backend-store-uri`": lambda tmp: store_uri("postgresql://mlflow:s3cret@db:5432/mlflow"),
    "`--artifacts-destination s3://no-such-bucket/mlflow` (`vae.tracking.server`)": _missing_bucket,
    "`python -m vae.tracking.promote --metric eval_fid`": _promote_by("eval_fid"),
    "`python -m vae.tracking.promote --metric nelbo_kl`": _promote_by("nelbo_kl"),
    "`python -m vae.tracking.promote --metric test_nelbo`": _promote_by("test_nelbo"),
    "empty or garbled `outputs/train_run_id.txt`": _bad_run_id,
    "stage run outside the project root (no `dvc.yaml`)": lambda tmp: stage_params("train"),
    "loss becomes inf/NaN": _raise(NonFiniteLossError(2, 2)),
    "sweep: typo `trian.lr` in `space`": _sweep({"space": {"trian.lr": [0.01]}}),
    "sweep: `train.lr: [0.001, -1]`": _sweep({"space": {"train.lr": [0.001, -1]}}),
    "sweep: empty `space`": _sweep({"space": {}}),
    "sweep: `metric: eval_fid`": _sweep({"space": {"beta": [100]}, "metric": "eval_fid"}),
    "sweep: `metric: eval_test_nelbo`": _sweep({"space": {"beta": [100]}, "metric": "eval_test_nelbo"}),
    "sweep with `data.val_size: 0`": _sweep({"space": {"beta": [100]}}, **{"data.val_size": 0}),
    "unreachable `RAY_ADDRESS`": lambda tmp: check_reachable("127.0.0.1:1"),
}

# the faults of the machine among the rows: what the stage says after one (run_command prints describe's line)
FAULTS = {
    "the disk fills during training (train)": train_stage.RERUN,
    "the disk fills while MLflow's SQLite store is written": evaluate_stage.RERUN,
    "the disk fills while a picture is written (evaluate)": evaluate_stage.RERUN,
    "a read-only `outputs/` (generate)": generate_stage.RERUN,
    "GPU memory runs out (train)": train_stage.RERUN,
    "memory runs out (evaluate)": evaluate_stage.RERUN,
}


def bad_input_table() -> list[tuple[str, str]]:
    """The rows of both tables of docs/reliability.md: the bad inputs and the faults of the machine."""
    text = (REPO / "docs" / "reliability.md").read_text()
    rows = re.findall(r"(?m)^\| (.+?) \| `(.+?)`(?: \(.*\))? \|$", text)
    return [(bad, message) for bad, message in rows if bad not in ("bad input", "fault")]


def test_every_row_of_the_bad_input_table_is_reproduced() -> None:
    assert sorted(bad for bad, _ in bad_input_table()) == sorted(REPRODUCE)


SERVERS = {"postgres", "s3", "not_mlflow"}  # fixtures that start a server: their rows are in the slow tier


def bad_input_cases() -> list:
    """The table's rows as test cases; a row reproduced against a server it starts is marked slow."""
    return [
        pytest.param(
            bad,
            message,
            marks=[pytest.mark.slow] if SERVERS & set(inspect.signature(REPRODUCE[bad]).parameters) else [],
        )
        for bad, message in bad_input_table()
    ]


@pytest.mark.parametrize(("bad", "documented"), bad_input_cases())
def test_the_bad_input_tables_messages_are_the_real_ones(
    bad: str, documented: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    reproduce = REPRODUCE[bad]
    # the reproduction's arguments after the folder are fixtures, by name (monkeypatch, postgres, …)
    fixtures = [request.getfixturevalue(name) for name in list(inspect.signature(reproduce).parameters)[1:]]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(Exception if bad in FAULTS else UserError) as raised:
        reproduce(tmp_path, *fixtures)
    # a fault of the machine is the real exception (never a UserError): its line is what run_command prints
    assert bad not in FAULTS or not isinstance(raised.value, UserError), raised.value
    real = describe(raised.value, FAULTS[bad]) if bad in FAULTS else str(raised.value)
    # "…" in the table stands for a folder (or a list, a size) that differs between machines
    pattern = ".*?".join(re.escape(part) for part in documented.split("…"))
    assert real and re.fullmatch(pattern, real), f"\ndocumented: {documented}\nreal:       {real}"


# --- every fenced command names files, modules, params and flags that exist ----------------------------------


def fenced_commands() -> list[tuple[str, list[str]]]:
    """(page, words) for each simple command in the ```bash blocks of README.md and docs/."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
                lexer.whitespace_split, lexer.commenters = True, "#"
                command: list[str] = []
                for token in [*lexer, ";"]:
                    if token in (";", "&&", "|", "||", "&"):
                        found += [(page.name, command)] if command else []
                        command = []
                    else:
                        command.append(token)
    return found


@cache
def help_text(*command: str) -> str:
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, f"{' '.join(command)} --help failed: {result.stderr[-500:]}"
    return result.stdout


def params_keys() -> set[str]:
    flat = load_params(REPO / "params.yaml").flat()
    return set(flat) | {key.split(".")[0] for key in flat}


def check_command(words: list[str]) -> None:
    program, args = words[0], words[1:]
    flags = [w.split("=")[0] for w in args if w.startswith("-") and w not in ("-", "--")]
    for word in args:  # files the command names in this repository
        if re.fullmatch(r"[\w./-]+\.(py|yaml|toml|txt)", word) and not word.startswith(("..", "/", "outputs/")):
            assert (REPO / word).exists(), f"{word} does not exist"
    if program in ("python", "python3"):
        if args[:1] == ["-m"]:
            module = args[1]
            assert importlib.util.find_spec(module) is not None, f"no module {module}"
            if module.startswith("vae."):
                listed = help_text(sys.executable, "-m", module)
                assert all(flag in listed for flag in flags[1:]), f"{module}: {flags[1:]} not all in --help"
        else:
            script = args[0]
            assert (REPO / script).is_file(), f"no script {script}"
            listed = help_text(sys.executable, str(REPO / script))
            assert all(flag in listed for flag in flags), f"{script}: {flags} not all in its --help"
    elif program in ("dvc", "mlflow", "ray"):
        sub = args[: next((i for i, w in enumerate(args) if not re.fullmatch(r"[a-z][a-z-]*", w)), len(args))]
        listed = help_text(program, *sub)
        for flag in flags:
            assert re.search(rf"(^|[\s,[]){re.escape(flag)}\b", listed), f"{program} {' '.join(sub)}: no {flag}"
        for i, word in enumerate(args):
            if word in ("-S", "--set-param"):
                key = args[i + 1].split("=")[0]
                assert key in params_keys(), f"-S {key}: no such key in params.yaml"


@pytest.mark.slow  # runs each command's --help
def test_fenced_commands_name_what_exists() -> None:
    commands = fenced_commands()
    assert any(words[:3] == ["dvc", "exp", "run"] for _, words in commands)  # it finds the pages' commands
    checked = 0
    for page, words in commands:
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VARIABLE=value before the program
            words = words[1:]
        if words and words[0] in ("python", "python3", "dvc", "mlflow", "ray"):
            try:
                check_command(words)
            except AssertionError as err:
                raise AssertionError(f"{page}: `{' '.join(words)}`: {err}") from None
            checked += 1
    assert checked >= 15


@pytest.mark.slow
def test_the_command_check_catches_a_misspelt_flag_and_key() -> None:
    with pytest.raises(AssertionError, match="no --set-parm"):
        check_command(["dvc", "exp", "run", "--set-parm", "beta=1"])
    with pytest.raises(AssertionError, match="no such key"):
        check_command(["dvc", "exp", "run", "-S", "evaluate.knn=7"])
    with pytest.raises(AssertionError, match="not all in its --help"):
        check_command(["python", "benchmarks/train_throughput.py", "--precison", "fp32"])
