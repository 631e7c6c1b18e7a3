"""Draw the loss curve of a run as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_loss(records: list[dict], out: Path, title: str = "loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (trained tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend(loc="upper left")
    plot_reward_margins(ax, records)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)


def plot_reward_margins(ax, records: list[dict]) -> None:
    """Preference stages: TRL's reward margin (chosen minus rejected), train and eval, on a right-hand axis."""
    curves = [(key, [(r["step"], r[key]) for r in records if key in r]) for key in ("rewards/margins",
                                                                                   "eval_rewards/margins")]
    curves = [(key, points) for key, points in curves if points]
    if not curves:
        return
    right = ax.twinx()
    for (key, points), style in zip(curves, ("-", "o--"), strict=False):
        right.plot(*zip(*points, strict=True), style, color="tab:green", label=key.replace("/", " "))
    right.set_ylabel("reward margin (chosen - rejected)")
    right.legend(loc="upper right")
