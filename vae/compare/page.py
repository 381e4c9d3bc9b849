"""The comparison page: one self-contained HTML file (pictures and curves inline, no network).

- the metrics table: one row per training, its params that differ between them, and the
  β-independent verdict on validation and test; the best value of each column with a
  direction is marked (``class="best"``);
- the validation NELBO per epoch of every training, overlaid (nats per image, comparable
  across β, unlike the loss);
- each training's final reconstructions, samples and latent grid side by side, a row each.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a page written on a machine without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vae.compare.runs import PICTURES, Training  # noqa: E402
from vae.storage import atomic_write  # noqa: E402
from vae.tracking.registry import best_first  # noqa: E402

# the verdict's columns: metric name (MLflow's, without eval_<split>_) and whether higher is better
COLUMNS = {
    "nelbo": False,
    "iw_log_likelihood": True,
    "knn_accuracy": True,
    "classifier_frechet_distance": False,
    "active_units": None,  # no better direction: shown, never marked
}
SPLITS = {"val": "validation", "test": "test"}
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f4f4f4}
td.best{font-weight:bold;background:#e6f4e6}td.label{text-align:left}img{image-rendering:pixelated;max-width:100%}
.pictures td{vertical-align:top;text-align:center}.pictures img{max-width:360px}
.scroll{overflow-x:auto;max-width:100%}th{overflow-wrap:anywhere;max-width:9em}"""


def _png(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def differing_params(trainings: list[Training]) -> list[str]:
    """The params whose values are not the same in every training (all of them for one training)."""
    keys = sorted({k for t in trainings for k in t.params})
    if len(trainings) == 1:
        return [k for k in keys if k in ("beta", "latent_dim")]
    return [k for k in keys if len({t.params.get(k) for t in trainings}) > 1]


def best_cells(trainings: list[Training]) -> set[tuple[str, str]]:
    """(run id, metric) of the best value of each verdict column with a direction (each of equal ones)."""
    marked = set()
    for split in SPLITS:
        for name, higher in COLUMNS.items():
            metric = f"eval_{split}_{name}"
            scored = [t for t in trainings if metric in t.verdict]
            if higher is None or not scored:
                continue
            [best, *_] = best_first(scored, lambda t, m=metric: t.verdict[m], higher_is_better=higher)
            marked |= {(t.run_id, metric) for t in scored if t.verdict[metric] == best.verdict[metric]}  # ties
    return marked


def curves(trainings: list[Training]) -> bytes:
    """A PNG of every training's validation NELBO per epoch, overlaid."""
    figure, axes = plt.subplots(figsize=(7, 4))
    for t in trainings:
        if t.val_nelbo:
            epochs, values = zip(*t.val_nelbo)
            axes.plot(epochs, values, marker="o", markersize=3, label=t.label)
    axes.set(xlabel="epoch", ylabel="validation NELBO (nats per image)", title="lower is better")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, never 1.25
    if len(trainings) <= 12:
        axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def render(trainings: list[Training], title: str) -> str:
    """The whole page as one HTML string."""
    params = differing_params(trainings)
    metrics = [f"eval_{s}_{n}" for s in SPLITS for n in COLUMNS if any(f"eval_{s}_{n}" in t.verdict for t in trainings)]
    best = best_cells(trainings)
    head = ["training", *params, *(m.removeprefix("eval_") for m in metrics)]
    rows = []
    for t in trainings:
        cells = [f'<td class="label">{html.escape(t.label)}</td>']
        cells += [f"<td>{html.escape(t.params.get(k, '—'))}</td>" for k in params]
        for m in metrics:
            value = f"{t.verdict[m]:.4g}" if m in t.verdict else "—"
            cells.append(f"<td{' class=best' if (t.run_id, m) in best else ''}>{value}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    pictures = [
        f"<tr><td class='label'>{html.escape(t.label)}</td>"
        + "".join(f"<td>{_png(t.pictures[n]) if n in t.pictures else '—'}</td>" for n in PICTURES)
        + "</tr>"
        for t in trainings
    ]
    return "\n".join(
        [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
            "<h2>Verdict</h2><p>Comparable across β; choose on validation, report test once. "
            "Best of each column in bold.</p>",
            # many params and metrics: the table scrolls within the window instead of widening the page
            "<div class='scroll'><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>",
            *rows,
            "</table></div><h2>Validation NELBO per epoch</h2>",
            _png(curves(trainings)),
            "<h2>Final pictures</h2><div class='scroll'><table class='pictures'><tr><th>training</th>"
            + "".join(f"<th>{n}</th>" for n in PICTURES)
            + "</tr>",
            *pictures,
            "</table></div></body></html>",
        ]
    )


def write_page(names: list[str], out: Path, log: bool = False, parent: str | None = None) -> Path:
    """Resolve ``names`` (:func:`vae.compare.runs.resolve`), write the page to ``out`` and print where it is.
    ``log``: also log it to MLflow, to the run ``parent`` when given (a sweep's run), else in a new run
    named after the comparison in the first training's experiment."""
    import mlflow

    from vae.compare.runs import existing_store, resolve

    client = mlflow.MlflowClient(existing_store())
    trainings = resolve(names, client)
    title = (
        f"{len(trainings)} trainings: "
        + ", ".join(t.label for t in trainings[:6])
        + ("…" if len(trainings) > 6 else "")
    )
    page = render(trainings, title)
    atomic_write(out, lambda tmp: tmp.write_text(page))
    print(f"compare: {len(trainings)} trainings → {out}")
    if log:
        run_id = parent
        if run_id is None:
            experiment = client.get_run(trainings[0].run_id).info.experiment_id
            name = f"compare {' '.join(names)}"[:120]
            run_id = client.create_run(experiment, run_name=name, tags={"pipeline_stage": "compare"}).info.run_id
        client.log_artifact(run_id, str(out), artifact_path="compare")
        if parent is None:
            client.set_terminated(run_id)
        print(f"compare: logged to MLflow run {run_id} (compare/{out.name})")
    return out
