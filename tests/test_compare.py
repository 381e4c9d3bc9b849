"""The comparison page from trainings made here (the end-to-end page is in test_pipeline), and its errors."""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from vae.compare.page import best_cells, differing_params, render
from vae.compare.runs import Training


def png() -> bytes:
    buffer = io.BytesIO()
    plt.imsave(buffer, [[0.0, 1.0], [1.0, 0.0]], format="png")
    return buffer.getvalue()


def training(run_id: str, beta: str, nelbo: float, knn: float, **more: str) -> Training:
    return Training(
        label=f"beta={beta}",
        run_id=run_id,
        params={"beta": beta, "latent_dim": "2", **more},
        verdict={"eval_val_nelbo": nelbo, "eval_val_knn_accuracy": knn, "eval_val_active_units": 2.0},
        val_nelbo=[(1, nelbo + 10), (2, nelbo)],
        pictures={"samples": png()},
    )


def test_the_best_of_each_column_is_marked_in_its_direction_ties_included() -> None:
    trainings = [training("a", "10", 250.0, 0.70), training("b", "100", 240.0, 0.75), training("c", "500", 245.0, 0.75)]
    assert best_cells(trainings) == {
        ("b", "eval_val_nelbo"),
        ("b", "eval_val_knn_accuracy"),
        ("c", "eval_val_knn_accuracy"),
    }


def test_the_table_shows_the_params_that_differ_and_the_page_needs_nothing_else() -> None:
    trainings = [training("a", "10", 250.0, 0.70, **{"train.lr": "0.001"}), training("b", "100", 240.0, 0.75)]
    assert differing_params(trainings) == ["beta", "train.lr"]  # latent_dim is the same in both
    page = render(trainings, "two")
    assert "<td>—</td>" in page  # b has no train.lr
    assert "<td class=best>240</td>" in page and "<td>250</td>" in page
    assert "val_active_units" in page and "class=best>2<" not in page  # no direction, never marked
    references = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(references) == 1 + 2 and all(r.startswith("data:image/png;base64,") for r in references)
    assert not re.search(r"https?://|url\(", page)


def compare(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> list[str]:
    """``python -m vae.compare ARGV`` run here, in tmp_path, on its store: its lines on stderr, once it failed."""
    from vae.compare.command import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 1 and not (tmp_path / "compare.html").exists()
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "no-such-exp",
            "no-such-exp: no DVC experiment of this name and no run id in {uri} (names: dvc exp show; "
            "run ids: mlflow ui)",
        ),
        ("0" * 32, f"{'0' * 32}: no run with this id in {{uri}}"),
    ],
)
def test_a_name_that_is_nothing_is_one_line(tmp_path: Path, monkeypatch, capsys, name: str, message: str) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # an empty store
    capsys.readouterr()
    assert compare([name], tmp_path, monkeypatch, capsys) == [f"compare: error: {message.format(uri=uri)}"]


def test_no_store_is_one_line_and_creates_none(tmp_path: Path, monkeypatch, capsys) -> None:
    assert compare(["beta-100"], tmp_path, monkeypatch, capsys) == [
        f"compare: error: sqlite:///{tmp_path / 'mlflow.db'}: no MLflow store here to compare from "
        "(run dvc repro, or set MLFLOW_TRACKING_URI)"
    ]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_wide_verdict_table_scrolls_inside_a_1400_pixel_window(tmp_path: Path) -> None:
    """Eight trainings differing in many params, every metric of both splits: the page itself never needs
    a horizontal scroll bar in a 1,400-pixel window; the table scrolls within it, its columns all there."""
    from playwright.sync_api import sync_playwright
    from test_explorer import chromium_or_fail

    metrics = ("nelbo", "nelbo_reconstruction", "nelbo_kl", "iw_log_likelihood", "active_units", "knn_accuracy")
    trainings = []
    for i in range(8):
        more = {f"train.{key}": str(i) for key in ("lr", "lr_schedule", "batch_size", "seed", "precision", "lr_min")}
        t = training(f"run{i}", str(10 * (i + 1)), 250.0 - i, 0.7, **more, **{"beta_schedule.kind": str(i)})
        t.verdict.update({f"eval_{s}_{m}": 1000.123456 + i for s in ("val", "test") for m in metrics})
        trainings.append(t)
    (tmp_path / "compare.html").write_text(render(trainings, "wide"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_or_fail(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto((tmp_path / "compare.html").as_uri())
        widths = page.evaluate(
            "({page: document.documentElement.scrollWidth, window: window.innerWidth,"
            " table: document.querySelector('table').scrollWidth})"
        )
        browser.close()
    assert widths["page"] <= widths["window"] == 1400, widths
