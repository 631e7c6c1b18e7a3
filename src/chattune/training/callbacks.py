"""Trainer callbacks: stop at a non-finite loss or gradient; append each logged step to metrics.jsonl."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from chattune.training.distributed import is_main


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite: nothing more is trained or saved."""


class StopOnNonFinite(TrainerCallback):
    """Raises at the first logged step whose loss or gradient norm is not finite.

    Runs before MetricsLogger, so metrics.jsonl never holds NaN/Infinity, and before the
    Trainer's save of that step, so no checkpoint or adapter with non-finite weights is written.
    """

    def __init__(self, precision: str, lr: float):
        self.precision, self.lr = precision, lr

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: logs[k] for k in ("loss", "grad_norm", "eval_loss") if k in (logs or {})
               and isinstance(logs[k], int | float) and not math.isfinite(logs[k])}
        if bad:
            found = ", ".join(f"{k} {v}" for k, v in bad.items())
            raise TrainingDiverged(
                f"step {state.global_step}: {found}; training stopped and nothing was saved from this step. "
                f"Likely causes: train.lr={self.lr:g} too high (try 10x lower), train.precision={self.precision} "
                "(try train.precision=fp32), or data rows with no trained token (chattune data inspect)")


PREFERENCE_METRICS = ("rewards/", "kl", "log_odds", "nll_loss")  # logged by TRL's DPO, KTO and ORPO trainers


class MetricsLogger(TrainerCallback):
    """Writes {step, epoch, loss, lr, grad_norm, tokens_per_s, ...} lines; flushes each line."""

    def __init__(self, path: Path, counter):
        self.path = path
        self.counter = counter  # object with .tokens and .trained_tokens (running totals)
        self._last_time = None
        self._last_tokens = 0
        self._last_trained = 0
        self.records: list[dict] = []
        self.listeners: list = []  # called with each record (experiment trackers)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens, self._last_trained = self.counter.tokens, self.counter.trained_tokens  # resumed: not 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm", "adalora_penalty"):
            if key in logs:
                record["lr" if key == "learning_rate" else key] = float(logs[key])
        for key, value in logs.items():  # TRL's preference metrics: rewards/chosen, rewards/margins, kl, ...
            if key.removeprefix("eval_").startswith(PREFERENCE_METRICS):
                record[key] = float(value)
        if "loss" in logs:
            self._add_throughput(record)
        if len(record) <= 2:
            return  # a summary log (train_runtime etc.), not a step
        record["max_steps"] = state.max_steps  # progress for readers of a live run (the web UI)
        self.add(record)

    def add(self, record: dict) -> None:
        """Keep, append to metrics.jsonl and pass on one record (also used by in-training eval)."""
        self.records.append(record)
        if not is_main():
            return  # several processes: rank 0 alone writes metrics.jsonl and feeds the trackers
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        for listener in self.listeners:
            listener(record)

    def _add_throughput(self, record: dict) -> None:
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        record["tokens_per_s"] = round((self.counter.tokens - self._last_tokens) / elapsed, 1)
        record["trained_tokens_per_s"] = round((self.counter.trained_tokens - self._last_trained) / elapsed, 1)
        record["tokens_seen"] = self.counter.tokens
        record["trained_tokens"] = self.counter.trained_tokens
        self._last_time, self._last_tokens, self._last_trained = now, self.counter.tokens, self.counter.trained_tokens
