"""Wire a run's trackers and in-training evaluation into the Trainer, and finish them.

Checks happen before the model loads (missing tracker package, metric without eval data).
At the end the best adapter (by train.metric) is restored into the model so the run dir's
adapter/ is the best; the final weights are saved to last_adapter/ when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chattune.config import ConfigError, RunConfig
from chattune.io import save_dir_atomic
from chattune.rundir import LAST_ADAPTER
from chattune.training.distributed import is_main


def wants_eval_loop(cfg: RunConfig) -> bool:
    t = cfg.train
    return bool(t.eval_every or t.patience or t.metric != "loss")


def check_monitoring(cfg: RunConfig, has_eval: bool) -> None:
    """Refuse, before any model loads, what cannot run."""
    from chattune.training.tracking import check_available, tracker_names

    try:
        check_available(tracker_names(cfg.train.tracking))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if wants_eval_loop(cfg) and not has_eval:
        raise ConfigError(
            "train.eval_every / train.patience / train.metric need held-out data: "
            "set data.eval_ratio (e.g. 0.1) or data.eval_path"
        )


@dataclass
class Monitoring:
    trackers: list = field(default_factory=list)
    callbacks: list = field(default_factory=list)
    eval_loop: object | None = None

    def start(self, cfg: RunConfig) -> None:
        for tracker in self.trackers:
            tracker.start(cfg.model_dump(mode="json"))

    def log_predictions(self, step: int, rows: list[dict]) -> None:
        for tracker in self.trackers:
            tracker.log_predictions(step, rows)

    def close(self, failed: bool = False) -> None:
        for tracker in self.trackers:
            tracker.finish(failed)

    def keep_best(self, model, run_path: Path, final_step: int) -> dict:
        """Save the final adapter aside and restore the best one; returns the eval summary."""
        from chattune.model.adapters import adapter_writer
        from chattune.training.evaluate import restore_adapter

        loop = self.eval_loop
        if loop is None or loop.best_state is None:
            return {}
        summary = loop.summary()
        if loop.tracker.best_step != final_step:
            if is_main():
                save_dir_atomic(run_path / LAST_ADAPTER, adapter_writer(model))
            restore_adapter(model, loop.best_state)
            summary["adapter"] = f"best (step {loop.tracker.best_step}); final weights in {LAST_ADAPTER}/"
        else:
            summary["adapter"] = "best = final"
        return summary


def build_monitoring(cfg: RunConfig, run_path: Path, tokenizer, eval_conversations, metrics_logger) -> Monitoring:
    from chattune.data.templates import stop_token_ids
    from chattune.metrics import default_labels
    from chattune.training.evaluate import EvalLoop, eval_samples
    from chattune.training.tracking import build_trackers

    trackers, callbacks = build_trackers(cfg, run_path) if is_main() else ([], [])  # rank 0 tracks
    monitoring = Monitoring(trackers, callbacks)
    metrics_logger.listeners.extend(tracker.log for tracker in trackers)
    if wants_eval_loop(cfg):
        t = cfg.train
        references = [c.messages[-1]["content"] for c in eval_conversations if c.messages[-1]["role"] == "assistant"]
        monitoring.eval_loop = EvalLoop(
            t.metric, tokenizer, eval_samples(eval_conversations, t.eval_samples), stop_token_ids(tokenizer),
            patience=t.patience, max_new_tokens=t.eval_max_new_tokens,
            labels=t.labels or default_labels(references),
            emit=metrics_logger.add, emit_predictions=monitoring.log_predictions,
        )
        monitoring.callbacks.append(monitoring.eval_loop)
    return monitoring
