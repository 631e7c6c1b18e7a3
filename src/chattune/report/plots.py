"""Curves as PNG bytes: a run's loss and eval metrics, and several runs' losses on one plot."""

from __future__ import annotations

import io
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if key in r and r[key] is not None]


def metric_keys(records: list[dict]) -> list[str]:
    """eval_* keys other than eval_loss, in first-seen order (generation metrics)."""
    keys = [k for r in records for k in r if k.startswith("eval_") and k != "eval_loss"]
    return list(dict.fromkeys(keys))


def run_curves_png(records: list[dict], title: str) -> bytes:
    """Loss (train and eval) on the left; eval metrics, if any, on the right."""
    plt = _pyplot()
    extra = metric_keys(records)
    fig, axes = plt.subplots(1, 2 if extra else 1, figsize=(11 if extra else 7, 4), dpi=100, squeeze=False)
    loss_ax = axes[0][0]
    for key, style, label in (("loss", "-", "train loss"), ("eval_loss", "o-", "eval loss")):
        points = series(records, key)
        if points:
            loss_ax.plot(*zip(*points, strict=True), style, label=label)
    loss_ax.set(xlabel="optimizer step", ylabel="loss (trained tokens)", title=f"{title}: loss")
    loss_ax.grid(alpha=0.3)
    if loss_ax.lines:
        loss_ax.legend()
    if extra:
        metric_ax = axes[0][1]
        for key in extra:
            metric_ax.plot(*zip(*series(records, key), strict=True), "o-", label=key[5:])
        metric_ax.set(xlabel="optimizer step", ylabel="score", title=f"{title}: eval metrics")
        metric_ax.grid(alpha=0.3)
        metric_ax.legend()
    fig.tight_layout()
    return _png(fig)


def compare_png(runs: dict[str, list[dict]]) -> bytes:
    """Train loss (solid) and eval loss (dashed, same colour) of several runs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for index, (name, records) in enumerate(runs.items()):
        colour = f"C{index % 10}"
        train = series(records, "loss")
        evals = series(records, "eval_loss")
        if train:
            ax.plot(*zip(*train, strict=True), "-", color=colour, label=f"{name} train")
        if evals:
            ax.plot(*zip(*evals, strict=True), "o--", color=colour, label=f"{name} eval")
    ax.set(xlabel="optimizer step", ylabel="loss (trained tokens)", title="loss by run")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _png(fig)


def write_png(data: bytes, out: Path) -> None:
    """Temp file + rename, like chattune.io's writers (they write text)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
