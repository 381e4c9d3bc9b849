from pathlib import Path

import pytest
import yaml

from vae.config import ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def default_raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert (params.beta, params.latent_dim, params.epochs) == (500.0, 2, 10)
    assert params.train.lr == 0.001 and params.generate.grid_range == (-3.0, 3.0)
    assert params.flat()["train.lr"] == 0.001


def with_change(path: str, value):
    raw = default_raw()
    *parents, key = path.split(".")
    section = raw
    for parent in parents:
        section = section[parent]
    section[key] = value
    return raw


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("epochs", "ten", r"epochs = 'ten' is not an integer"),
        ("beta", "high", r"beta = 'high' is not a number"),
        ("epochs", 0, r"epochs = 0 is out of range: it must be >= 1"),
        ("latent_dim", 0, r"latent_dim = 0 is out of range"),
        ("beta", -1, r"beta = -1.0 is out of range: it must be >= 0"),
        ("beta", float("nan"), r"beta = nan is not a number \(must be finite\)"),
        ("beta", float("inf"), r"beta = inf is not a number"),
        ("train.lr", 0, r"train.lr = 0.0 is out of range: it must be > 0"),
        ("train.batch_size", 2.5, r"train.batch_size = 2.5 is not an integer"),
        ("epochs", True, r"epochs = True is not an integer"),
        ("data.train_limit", 0, r"data.train_limit = 0 is out of range"),
        (
            "generate.grid_range",
            [3, -3],
            r"generate.grid_range = \[3, -3\] is not allowed: it must be \[low, high\] with low < high",
        ),
        ("generate.grid_range", [1], r"generate.grid_range = \[1\] is not a list of 2 numbers"),
        ("generate.explorer_range", [2, 2], r"generate.explorer_range = \[2, 2\] is not allowed: it must be \[low, h"),
        ("generate.explorer_resolution", 500, r"generate.explorer_resolution = 500 is out of range: it must be <= 100"),
        ("mlflow.experiment_name", "", r"mlflow.experiment_name = '' is not a non-empty string"),
        ("train.device", "gpu", r"train.device = 'gpu' is not allowed: it must be auto, cpu, cuda or cuda:N"),
        (
            "beta_schedule.kind",
            "cosine",
            r"beta_schedule.kind = 'cosine' is not allowed: it must be one of constant, linear",
        ),
        ("train.precision", "fp16", r"train.precision = 'fp16' is not allowed: it must be one of auto, fp32, bf16"),
        ("classifier.min_accuracy", 1.5, r"classifier.min_accuracy = 1.5 is out of range: it must be <= 1"),
        ("mlflow.log_images_every", -1, r"mlflow.log_images_every = -1 is out of range: it must be >= 0"),
        ("train.lr_schedule", "step", r"train.lr_schedule = 'step' is not allowed: it must be one of constant, cosin"),
        ("train.lr_warmup", 1, r"train.lr_warmup = 1.0 is out of range: it must be < 1"),
        ("mlflow.log_images_every", 0.5, r"mlflow.log_images_every = 0.5 is not an integer"),
    ],
)
def test_bad_values_name_key_value_and_rule(key: str, value, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_params(with_change(key, value))


def test_missing_key() -> None:
    raw = default_raw()
    del raw["train"]["seed"]
    with pytest.raises(ParamsError, match=r"missing key train.seed \(an integer\)"):
        parse_params(raw)


def test_a_typo_names_the_typo_and_the_key_meant() -> None:
    raw = default_raw()
    raw["latnet_dim"] = raw.pop("latent_dim")  # latent_dim is now missing too: the typo is the culprit
    with pytest.raises(ParamsError, match=r"^unknown key latnet_dim \(did you mean latent_dim\?\)$"):
        parse_params(raw)
    raw = default_raw()
    raw["train"]["lrr"] = raw["train"].pop("lr")
    with pytest.raises(ParamsError, match=r"^unknown key train.lrr \(did you mean train.lr\?\)$"):
        parse_params(raw)
    raw = default_raw()
    raw["latnet_dim"] = 3  # beside the real key: still the typo, with the key meant
    with pytest.raises(ParamsError, match=r"^unknown key latnet_dim \(did you mean latent_dim\?\)$"):
        parse_params(raw)


def test_an_unknown_key_like_no_other_lists_the_allowed_ones() -> None:
    raw = default_raw()
    raw["train"]["colour"] = "red"
    with pytest.raises(ParamsError, match=r"^unknown key train.colour \(allowed in train: lr, batch_size, seed"):
        parse_params(raw)


def test_exponent_without_dot_is_a_number() -> None:
    assert parse_params(with_change("train.lr", "1e-3")).train.lr == 0.001


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nope.yaml: cannot read"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("beta: [1, 2\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match=r"params.yaml: the top level must be a mapping"):
        load_params(bad)


def test_linear_beta_schedule_warms_up_to_beta() -> None:
    raw = with_change("beta_schedule.kind", "linear")
    raw["beta_schedule"].update(start=5000.0, warmup_epochs=5)
    params = parse_params(raw)
    assert [params.beta_at(e) for e in range(1, 8)] == [5000.0, 3875.0, 2750.0, 1625.0, 500.0, 500.0, 500.0]
    assert parse_params(default_raw()).beta_at(1) == 500.0  # constant by default
