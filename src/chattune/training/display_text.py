"""Turn a training run's progress and summary into text: pure functions, no printing, no state.

The status line's parts (and which to drop on a narrow terminal), a plain line per logging step and
per evaluation, the smoothed loss, the ETA, and the end-of-run summary from summary.json's entries.
training/display.py prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chattune import rundir
from chattune.training.evaluate import BestTracker

SMOOTHING = 0.9  # the EMA's weight of the past: about the last 10 logged losses
BAR_MIN, BAR_MAX = 8, 24  # the live line's bar: left out below BAR_MIN columns


class Smoother:
    """Exponential moving average of the logged losses, bias-corrected (the first is itself)."""

    def __init__(self, beta: float = SMOOTHING):
        self.beta, self._sum, self._weight = beta, 0.0, 0.0

    def add(self, value: float) -> float:
        self._sum = self.beta * self._sum + (1 - self.beta) * value
        self._weight = self.beta * self._weight + (1 - self.beta)
        return self.value

    @property
    def value(self) -> float | None:
        return self._sum / self._weight if self._weight else None


def duration(seconds: float) -> str:
    """45s, 2m10s, 1h05m, 2d03h: two units at most."""
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d{hrs:02d}h"
    if hours:
        return f"{hours}h{mins:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def eta(step: int, total: int, start_step: int, elapsed: float) -> float | None:
    """Seconds left at this session's pace (a resumed run counts from its checkpoint); None before
    the session's first step."""
    done = step - start_step
    if done <= 0 or total <= 0 or elapsed <= 0:
        return None
    return max(total - step, 0) * elapsed / done


@dataclass
class StepView:
    """The latest of everything the status line shows."""

    step: int = 0
    total: int = 0
    loss: float | None = None  # the last logged loss
    smoothed: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None  # trained tokens/s over the last logging interval
    margin: float | None = None  # preference stages: rewards/margins
    eta: float | None = None


def step_fields(view: StepView, smoothed: bool, leave: tuple = ()) -> list[str]:
    """The status line's parts after step/total; `smoothed`: the EMA first, the last loss beside
    it; `leave`: parts to leave out ("last", "margin", "lr", "grad", "tok/s")."""
    parts = []
    if view.loss is not None:
        if smoothed and view.smoothed is not None:
            last = "" if "last" in leave else f" (last {view.loss:#.4g})"
            parts.append(f"loss {view.smoothed:#.4g}{last}")
        else:
            parts.append(f"loss {view.loss:#.4g}")
    shown = {
        "margin": (view.margin, lambda v: f"margin {v:.3g}"),
        "lr": (view.lr, lambda v: f"lr {v:.1e}"),
        "grad": (view.grad_norm, lambda v: f"grad {v:#.3g}"),
        "tok/s": (view.tokens_per_s, lambda v: f"{round(v):,} tok/s"),
    }
    parts += [
        text(value)
        for name, (value, text) in shown.items()
        if value is not None and name not in leave
    ]
    if view.eta is not None:
        parts.append(f"eta {duration(view.eta)}")
    return parts


def fit_status(view: StepView, width: int) -> tuple[str, int, str]:
    """(step/total, the bar's width, the rest) for a terminal `width` wide: the least needed parts
    go first (the last loss, grad, lr, margin, tok/s; never the loss or the ETA), then the bar."""
    head = f"step {view.step}/{view.total}"
    tail = ""
    for leave in (
        (),
        ("last",),
        ("last", "grad"),
        ("last", "grad", "lr"),
        ("last", "grad", "lr", "margin"),
        ("last", "grad", "lr", "margin", "tok/s"),
    ):
        tail = "  ".join(step_fields(view, smoothed=True, leave=leave))
        room = width - len(head) - len(tail) - 4  # two gaps of two
        if room >= BAR_MIN:
            return head, min(room, BAR_MAX), tail
    return head, 0, tail


def step_line(view: StepView) -> str:
    """One logging step as a plain line: the logged loss itself, as metrics.jsonl has it."""
    return "  ".join([f"step {view.step}/{view.total}", *step_fields(view, smoothed=False)])


def eval_line(step: int, total: int, values: dict, best: BestTracker) -> str:
    """One evaluation: its figures, then whether it is the best so far (the first key decides)."""
    parts = [f"eval step {step}/{total}", *(f"{key} {value:#.4g}" for key, value in values.items())]
    if best.best_step == step:
        parts.append("best so far")
    elif best.best is not None:
        parts.append(f"best {best.best:#.4g} at step {best.best_step}")
    return "  ".join(parts)


def summary_rows(
    summary: dict, run_dir: Path, best: BestTracker | None = None
) -> list[tuple[str, str]]:
    """The end-of-run block as (label, text) rows, from summary.json's entries."""
    seconds = summary.get("seconds") or 0.0
    trained_rate = summary.get("trained_tokens", 0) / max(seconds, 1e-9)
    rows = [
        (
            "trained",
            f"{summary.get('steps', 0)} steps in {duration(seconds)}, "
            f"{round(trained_rate):,} trained tok/s "
            f"({round(summary.get('tokens_per_s') or 0):,} tok/s in all)",
        )
    ]
    if summary.get("final_loss") is not None:
        mean = summary.get("train_loss")
        rows.append(
            (
                "loss",
                f"final {summary['final_loss']:#.4g}"
                + (f", mean {mean:#.4g}" if mean is not None else ""),
            )
        )
    if held := held_out(summary, best):
        rows.append(("held-out", held))
    if forgetting := forgetting_text(summary.get("forgetting")):
        rows.append(("forgetting", forgetting))
    rows += [("run dir", str(run_dir)), ("loss curve", str(run_dir / rundir.LOSS_PLOT))]
    return rows


def held_out(summary: dict, best: BestTracker | None) -> str | None:
    """Final and best held-out figures: the in-training eval's metric, else the eval loss."""
    parts = []
    if summary.get("final_eval_loss") is not None:
        parts.append(f"eval_loss final {summary['final_eval_loss']:#.4g}")
    if (entry := summary.get("in_training_eval")) and entry.get("best") is not None:
        parts.append(
            f"best {entry['metric']} {entry['best']:#.4g} at step {entry['best_step']}"
            + (f" (adapter: {entry['adapter']})" if entry.get("adapter") else "")
        )
    elif best is not None and best.best is not None:
        parts.append(f"best {best.best:#.4g} at step {best.best_step}")
    return ", ".join(parts) or None


def forgetting_text(entry: dict | None) -> str | None:
    """summary.json's "forgetting" in one phrase (training/forgetting.py)."""
    if not entry:
        return None
    if "skipped" in entry:
        return entry["skipped"]
    text = (
        f"KL to base {entry['kl_to_base']:.4f} nats/token, general-answer loss "
        f"{entry['base_loss']:#.4g} -> {entry['tuned_loss']:#.4g}"
    )
    return text + (f" (warning: above {entry['threshold_kl']:g})" if entry.get("warning") else "")


def summary_line(summary: dict, run_dir: Path, best: BestTracker | None = None) -> str:
    """The whole run in one line (--quiet)."""
    rows = dict(summary_rows(summary, run_dir, best))
    parts = [f"done {run_dir}: {rows['trained']}"]
    parts += [f"{label} {rows[label]}" for label in ("loss", "held-out") if label in rows]
    return "; ".join(parts)
