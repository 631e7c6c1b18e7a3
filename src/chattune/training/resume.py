"""Plan and restore a resumed run: find the checkpoint, refuse a changed config or data, trim metrics.

`--resume auto` continues the newest complete checkpoint of the config's run_dir; when that
run dir has no checkpoint and no finished adapter yet (a crash before the first save) it
starts from step 0 there, so a job script can always pass `--resume auto`. `--resume PATH`
takes a checkpoint folder or a run dir. The Trainer restores weights, optimizer, scheduler,
RNG and data position itself (`trainer.train(resume_from_checkpoint=...)`); this module adds
chattune's part: token counters, wall time, the in-training eval's best adapter, and
metrics.jsonl cut back to the checkpoint's step so no step is logged twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from chattune import rundir
from chattune.config import ConfigError, RunConfig
from chattune.io import clean_temporaries, write_json_atomic
from chattune.rundir import BEST_ADAPTER, CHECKPOINTS, INIT_ADAPTER, LAST_ADAPTER
from chattune.training import data_fingerprint
from chattune.training.checkpoints import (
    FORMAT,
    REQUIRED,
    STATE,
    checkpoint_step,
    clean_staging,
    damage,
    drop_after,
    is_complete,
    latest_intact_checkpoint,
    rotate,
)
from chattune.training.distributed import is_main

# Keys that may differ between the run dir and the config given to --resume: they change
# where files go, how long training runs (the lr schedule follows the new length from the
# resumed step on), how often it saves/logs, or which tracker sees it, never the math so far.
ALLOWED_CHANGES = (
    "run_dir", "output_dir", "train.epochs", "train.max_steps", "train.save_every", "train.keep_checkpoints",
    "train.logging_steps", "train.device", "train.compile", "train.tracking", "train.swanlab_mode",
    "train.swanlab_project",
)


class ResumeError(ConfigError):
    """--resume cannot continue this run as asked."""


@dataclass
class ResumePlan:
    run_dir: Path
    checkpoint: Path | None  # None: nothing saved yet, start from step 0 in run_dir
    cfg: RunConfig  # the given config, run_dir filled in
    state: dict = field(default_factory=dict)  # the checkpoint's chattune_state.json
    allow_data_change: bool = False  # --allow-data-change: changed data continues, and is recorded
    data_change: dict | None = None  # what check_data found and let through
    hashes: list | None = None  # the data's per-example hashes, once check_data computed them
    console: object = None  # where the notices go (a rich Console), or None

    @property
    def step(self) -> int:
        return checkpoint_step(self.checkpoint) if self.checkpoint else 0

    def finished_summary(self) -> dict | None:
        """The run dir's summary.json when the run already finished at this checkpoint's step."""
        path = self.run_dir / rundir.SUMMARY
        if self.checkpoint is None or not path.is_file() or not (self.run_dir / rundir.ADAPTER).is_dir():
            return None
        saved = (self.state.get("config") or {}).get("train", {})
        if any(saved.get(key) != getattr(self.cfg.train, key) for key in ("max_steps", "epochs")):
            return None  # asked to train longer (or shorter) than the finished run did
        summary = json.loads(path.read_text(encoding="utf-8"))
        return summary if summary.get("steps") == self.step else None

    def training_done(self, total_steps: int) -> bool:
        """The checkpoint is at the run's last step, or where early stopping ended it."""
        stopped_early = (self.state.get("eval") or {}).get("stopped_early_at")
        return self.checkpoint is not None and (self.step >= total_steps or stopped_early == self.step)

    def check_data(self, data) -> None:
        """Refuse, naming the change, training data that differs from what the checkpoint trained on
        (its examples' fingerprint; an older checkpoint: their counts). --allow-data-change: it
        continues and the change is recorded (CheckpointState.data_changes, summary.json)."""
        if self.checkpoint is None:
            return
        recorded = self.state.get("data_fingerprint")
        if recorded:
            hashes = self.hashes = data_fingerprint.row_hashes(data.train)
            if data_fingerprint.summary_of(hashes)["digest"] == recorded.get("digest"):
                return
            before = data_fingerprint.read_rows(self.checkpoint)
            source = getattr(data.train, "source", None)
            change = data_fingerprint.describe_change(before, hashes, source)
        else:
            saved = (self.state.get("data_stats") or {}).get("train")
            change = _count_change(saved, data.stats.get("train"))
            if not change:
                return
        if not self.allow_data_change:
            raise ResumeError(
                f"{self.checkpoint}: the training data changed since this checkpoint "
                f"({change}); an exact resume needs the same data: restore it, start a new run "
                "without --resume, or continue on the new data: --resume auto --allow-data-change"
            )
        self.data_change = {"step": self.step, "change": change}
        if self.console is not None:
            self.console.print(f"[yellow]warning[/]: --allow-data-change: continuing "
                               f"{self.checkpoint.name} on changed data ({escape(change)}); "
                               "recorded in the run", highlight=False, soft_wrap=True)


def _count_change(before: dict | None, now: dict | None) -> str:
    """A checkpoint from before data fingerprints: the example and token counts that differ."""
    keys = ("examples", "tokens", "trained_tokens")
    if not (before and now):
        return ""
    differ = [k for k in keys if before.get(k) != now.get(k)]
    return ", ".join(f"{k} {before.get(k)} -> {now.get(k)}" for k in differ)


def plan_resume(cfg: RunConfig, value: str, console=None,
                allow_data_change: bool = False) -> ResumePlan:
    """Where to continue from for --resume auto|PATH; checks the config before anything loads.
    A damaged checkpoint skipped for an older one is said in one line on `console`."""
    run_dir, checkpoint = _locate(cfg, value, console)
    cfg = cfg.model_copy(update={"run_dir": str(run_dir)})
    if checkpoint is None:
        return ResumePlan(run_dir, None, cfg, allow_data_change=allow_data_change,
                          console=console)
    state = json.loads((checkpoint / STATE).read_text(encoding="utf-8"))
    check_same_config(checkpoint, state.get("config") or {}, cfg)
    return ResumePlan(run_dir, checkpoint, cfg, state, allow_data_change=allow_data_change,
                      console=console)


def _locate(cfg: RunConfig, value: str, console=None) -> tuple[Path, Path | None]:
    if value == "auto":
        if not cfg.run_dir:
            raise ResumeError(
                "--resume auto needs the run dir to continue: add run_dir=RUN_DIR "
                "(the 'run dir' printed when the run started), or pass --resume RUN_DIR"
            )
        run_dir = Path(cfg.run_dir)
        checkpoint = _intact(run_dir / CHECKPOINTS, console)
        if checkpoint is None and (run_dir / rundir.ADAPTER).exists():
            raise ResumeError(f"{run_dir}: a finished run without checkpoints (train.save_every was off); "
                              "nothing to continue from")
        return run_dir, checkpoint
    path = Path(value)
    if checkpoint_step(path) is not None:
        if path.parent.name != CHECKPOINTS or not is_complete(path):
            missing = [n for n in REQUIRED if not (path / n).is_file()]
            raise ResumeError(f"--resume {value}: not a complete chattune checkpoint "
                              f"(expected RUN_DIR/{CHECKPOINTS}/checkpoint-STEP; missing: {', '.join(missing) or '-'})")
        if problems := damage(path):
            raise ResumeError(f"--resume {value}: the checkpoint is damaged: {'; '.join(problems)}")
        run_dir, checkpoint = path.parent.parent, path
    elif path.is_dir():
        run_dir, checkpoint = path, _intact(path / CHECKPOINTS, console)
        if checkpoint is None:
            raise ResumeError(f"--resume {value}: no complete checkpoint in {path / CHECKPOINTS}")
    else:
        raise ResumeError(f"--resume {value}: no such checkpoint or run dir")
    if cfg.run_dir and Path(cfg.run_dir).resolve() != run_dir.resolve():
        raise ResumeError(f"run_dir={cfg.run_dir} but --resume {value} belongs to the run dir {run_dir}; give one")
    return run_dir, checkpoint


def _intact(root: Path, console=None) -> Path | None:
    """The newest checkpoint that passes its checksums; damaged newer ones: one line, skipped."""
    checkpoint, damaged = latest_intact_checkpoint(root)
    named = "; ".join(f"{path.name}: {problems[0]}" for path, problems in damaged.items())
    if damaged and checkpoint is None:
        raise ResumeError(f"{root}: every checkpoint is damaged ({named}); "
                          "start a new run without --resume")
    if damaged and console is not None:
        console.print(f"[yellow]warning[/]: skipped damaged {escape(named)}; "
                      f"resuming from {checkpoint.name}", highlight=False, soft_wrap=True)
    return checkpoint


def check_same_config(checkpoint: Path, saved: dict, cfg: RunConfig) -> None:
    """Refuse, with the differing keys, a config that would not continue the same training."""
    defaults = _flat(RunConfig().model_dump(mode="json"))  # keys added since the checkpoint: their defaults
    before = {**defaults, **_flat(saved)}
    now = _flat(cfg.model_dump(mode="json"))
    differ = sorted(k for k in before.keys() | now.keys()
                    if before.get(k) != now.get(k) and k not in ALLOWED_CHANGES)
    if differ:
        lines = [f"  - {k}: run has {before.get(k)!r}, given {now.get(k)!r}" for k in differ]
        raise ResumeError(
            f"{checkpoint}: the config differs from the run being resumed:\n" + "\n".join(lines)
            + f"\nOnly these may change on resume: {', '.join(ALLOWED_CHANGES)}"
        )


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def trim_metrics(run: rundir.RunDir, step: int) -> list[dict]:
    """Keep the metrics records up to `step` (dropping a line cut by a crash) and rewrite the file."""
    path, records = run.metrics_file, []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                records.append(record)
    if is_main():
        run.write_metrics(records)
    return records


@dataclass
class CheckpointState:
    """chattune's state in a checkpoint: token counters, wall time, eval best, config, data
    stats, the training data's fingerprint and the data changes --allow-data-change let through."""

    cfg: RunConfig
    counter: object  # .tokens, .trained_tokens
    data_stats: dict
    eval_loop: object | None = None
    train_data: object = None  # the training examples, in order (fingerprinted at the first save)
    seconds_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    data_changes: list = field(default_factory=list)  # [{step, change}]: resumes on changed data
    _hashes: list | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def before_save(self) -> None:
        """On every rank before a checkpoint: fold token counts not yet summed into the totals."""
        if hasattr(self.counter, "sync"):
            from chattune.training import distributed

            self.counter.sync(distributed.sum_over_ranks)

    def write(self, folder: Path, step: int) -> None:
        state = {
            "format": FORMAT, "step": step, "tokens": self.counter.tokens,
            "trained_tokens": self.counter.trained_tokens, "seconds": round(self.seconds(), 3),
            "data_stats": self.data_stats, "config": self.cfg.model_dump(mode="json"),
        }
        if self.train_data is not None:
            if self._hashes is None:
                self._hashes = data_fingerprint.row_hashes(self.train_data)
            data_fingerprint.write_rows(folder, self._hashes)
            state["data_fingerprint"] = data_fingerprint.summary_of(self._hashes)
        if self.data_changes:
            state["data_changes"] = self.data_changes
        loop = self.eval_loop
        if loop is not None:
            t = loop.tracker
            state["eval"] = {"best": t.best, "best_step": t.best_step, "since_best": t.since_best,
                             "history": t.history, "stopped_early_at": loop.stopped_early_at}
            if loop.best_state is not None:
                from safetensors.torch import save_file

                save_file(loop.best_state, str(folder / BEST_ADAPTER))
        write_json_atomic(folder / STATE, state)  # last: marks chattune's part as complete

    def summary_notes(self) -> dict:
        """What summary.json records of the resumes: changes --allow-data-change let through."""
        return {"data_changes": self.data_changes} if self.data_changes else {}

    def restore(self, state: dict, folder: Path) -> None:
        self.counter.tokens = state.get("tokens", 0)
        self.counter.trained_tokens = state.get("trained_tokens", 0)
        self.seconds_before = state.get("seconds", 0.0)
        self.data_changes = list(state.get("data_changes") or [])
        saved, loop = state.get("eval"), self.eval_loop
        if loop is None or not saved:
            return
        t = loop.tracker
        t.best, t.best_step, t.since_best = saved["best"], saved["best_step"], saved["since_best"]
        t.history = [tuple(item) for item in saved["history"]]
        loop.stopped_early_at = saved.get("stopped_early_at")
        if (folder / BEST_ADAPTER).is_file():
            from safetensors.torch import load_file

            loop.best_state = load_file(str(folder / BEST_ADAPTER))


def restore_run(plan: ResumePlan, progress: CheckpointState, metrics_logger) -> None:
    """Cut metrics.jsonl back to the checkpoint, drop newer checkpoints and leftovers, restore counters."""
    metrics_logger.records = trim_metrics(rundir.RunDir(plan.run_dir), plan.step)
    if is_main():
        clean_temporaries(plan.run_dir, (*rundir.TEMPORARY_OF, LAST_ADAPTER, INIT_ADAPTER))  # writes cut by a kill or full disk
        clean_staging(plan.run_dir / CHECKPOINTS)
        drop_after(plan.run_dir / CHECKPOINTS, plan.step)
        rotate(plan.run_dir / CHECKPOINTS, plan.cfg.train.keep_checkpoints)  # killed after a commit, before rotation
    if plan.checkpoint is not None:
        progress.restore(plan.state, plan.checkpoint)
    if plan.data_change:
        progress.data_changes.append(plan.data_change)
    if plan.hashes is not None:
        progress._hashes = plan.hashes  # the same examples: not hashed again at the first save



def logged_mean_loss(records: list[dict]) -> float | None:
    """Mean training loss over all logged steps (a resumed Trainer only knows its own part)."""
    losses = [r["loss"] for r in records if "loss" in r]
    return sum(losses) / len(losses) if losses else None


def fit(trainer, plan: ResumePlan | None, total_steps: int):
    """trainer.train(), continuing the plan's checkpoint; at a checkpoint where training was done, the
    weights are only reloaded: the Trainer takes one more step before it checks max_steps (issue 21)."""
    if plan is None or plan.checkpoint is None:
        return trainer.train()
    if not plan.training_done(total_steps):
        return trainer.train(resume_from_checkpoint=str(plan.checkpoint))
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    set_peft_model_state_dict(trainer.model, load_file(str(plan.checkpoint / "adapter_model.safetensors")))
    trainer.state = TrainerState.load_from_json(str(plan.checkpoint / "trainer_state.json"))
    return TrainOutput(plan.step, 0.0, {})  # the loss: logged_mean_loss of the restored metrics
