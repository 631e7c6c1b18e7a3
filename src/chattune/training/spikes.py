"""Notice training-loss spikes: a logged loss far above the running level, and whether it stays up.

A spike is a logged loss above SPIKE_FACTOR x the median of the previous WINDOW logged losses and at
least SPIKE_NATS above it (the floor keeps a run near zero loss, 0.0003 -> 0.002, from counting). It
persists when PERSIST_STEPS logged steps after it all stay above PERSIST_FACTOR x that level. The
figures come from the case that prompted this (Qwen2.5-0.5B on seed 002 at the seed's lr 1e-3:
0.32 -> 0.38 -> 0.63 -> 2.92, grad norm 16 -> 68, nothing said): its level 0.38 makes 2.92 a 7.7x
spike. The running level is a median so one spike does not raise it. This module reports; it never
stops a run (training/callbacks.py stops at a non-finite loss).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from transformers import TrainerCallback

WINDOW = 5
SPIKE_FACTOR = 3.0
SPIKE_NATS = 0.5
PERSIST_FACTOR = 2.0
PERSIST_STEPS = 3


@dataclass
class SpikeWatch:
    """Running record of spikes over a sequence of logged (step, loss, grad_norm)."""

    history: list[float] = field(default_factory=list)
    spikes: list[dict] = field(default_factory=list)
    _open: dict | None = None  # the latest spike while its persistence is still undecided

    def add(self, step: int, loss: float, grad_norm: float | None = None) -> str | None:
        """Record one logged loss; "spike" or "persists" when this step makes one, else None."""
        watching = (
            self._open is not None
        )  # a spike's aftermath is judged for persistence, not as new spikes
        event = self._follow_open(loss)
        level = statistics.median(self.history[-WINDOW:]) if len(self.history) >= 2 else None
        self.history.append(loss)
        if (
            not watching
            and level is not None
            and loss > SPIKE_FACTOR * level
            and loss - level >= SPIKE_NATS
        ):
            spike = {
                "step": step,
                "loss": round(loss, 4),
                "level": round(level, 4),
                "persists": False,
            }
            if grad_norm is not None:
                spike["grad_norm"] = round(grad_norm, 3)
            self.spikes.append(spike)
            self._open = {"spike": spike, "high": 0}
            return "spike"
        return event

    def _follow_open(self, loss: float) -> str | None:
        if self._open is None:
            return None
        spike = self._open["spike"]
        if loss <= PERSIST_FACTOR * spike["level"]:
            self._open = None
            return None
        self._open["high"] += 1
        if self._open["high"] >= PERSIST_STEPS:
            spike["persists"] = True
            self._open = None
            return "persists"
        return None

    def summary(self, lr: float) -> dict | None:
        if not self.spikes:
            return None
        return {
            "spikes": self.spikes,
            "persisting": any(s["persists"] for s in self.spikes),
            "advice": advice(lr),
        }


def advice(lr: float) -> str:
    return (
        f"likely cause: a learning rate too high for this model (train.lr={lr:g}); "
        "try train.lr=auto or "
        "3-10x lower, a warmup (train.warmup_ratio=0.1), "
        "or tighter clipping (train.max_grad_norm=0.5)"
    )


def spike_line(spike: dict, lr: float) -> str:
    grad = f", grad norm {spike['grad_norm']:g}" if "grad_norm" in spike else ""
    ratio = spike["loss"] / spike["level"] if spike["level"] > 0 else float("inf")
    return (
        f"loss spike at step {spike['step']}: {spike['loss']:g} against a running level of "
        f"{spike['level']:g} ({ratio:.1f}x{grad}); {advice(lr)}"
    )


class LossSpikeCallback(TrainerCallback):
    """Prints a note at each spike and a warning when one persists; the summary keeps them all."""

    def __init__(self, console, lr: float = 0.0):
        self.console, self.lr, self.watch = (
            console,
            lr,
            SpikeWatch(),
        )  # lr: set once train.lr is resolved

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        event = self.watch.add(state.global_step, float(logs["loss"]), logs.get("grad_norm"))
        if event == "spike":
            self.console.print(
                f"[yellow]note[/]: {spike_line(self.watch.spikes[-1], self.lr)}", highlight=False
            )
        elif event == "persists":
            spike = next(s for s in reversed(self.watch.spikes) if s["persists"])
            self.console.print(
                f"[bold yellow]warning[/]: the loss has stayed above {PERSIST_FACTOR:g}x its level "
                f"since the spike at step {spike['step']}; {advice(self.lr)}",
                highlight=False,
            )
