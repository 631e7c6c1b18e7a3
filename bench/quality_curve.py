"""The quality bench's held-out curve: a TrainerCallback that scores the adapter at fixed intervals.

Every `every_examples` trained examples (and at the end) the callback stops the clock, writes
the adapter's weights to a scratch folder and has a scorer process (bench/quality_scorer.py:
the fp32 base, the same held-out rows and `common.heldout_loss` for every contender) score
them; the training process's memory and dtypes are untouched, so its peak RSS stays its own.
It stops training once the training clock (scoring excluded) passes the time budget. Trained
tokens are counted exactly by wrapping the dataloader's collate_fn (labels != -100 per
micro-batch, in the order the Trainer consumes them). It does not train or pick anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from bench.common import REPO


class Scorer:
    """A scorer subprocess: the fp32 base plus the held-out rows, loaded once, scoring adapters on request."""

    def __init__(self, n_eval: int, scratch: Path):
        self.scratch = scratch
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.quality_scorer", "--eval", str(n_eval)],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.base_loss = float(self._expect("ready"))

    def _expect(self, word: str) -> str:
        """The value after `word` on the scorer's next line that starts with it (other prints skipped)."""
        while line := self.proc.stdout.readline():
            if line.startswith(word):
                return line[len(word):].strip()
        raise RuntimeError(f"the quality scorer ended (exit {self.proc.poll()}) before saying {word!r}")

    def score(self, model) -> float:
        """Held-out loss of `model`'s current LoRA weights (written as fp32 safetensors)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        self.scratch.mkdir(parents=True, exist_ok=True)
        peft_model = getattr(model, "module", model)
        state = {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
        save_file(state, str(self.scratch / "adapter_model.safetensors"))
        peft_model.peft_config["default"].save_pretrained(str(self.scratch))
        self.proc.stdin.write(f"{self.scratch}\n")
        self.proc.stdin.flush()
        return float(self._expect("loss"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


class HeldoutCurve(TrainerCallback):
    """Held-out loss against training seconds (scoring excluded), examples and trained tokens."""

    def __init__(self, scorer: Scorer, every_examples: int, budget_s: float):
        self.scorer, self.every, self.budget_s = scorer, every_examples, budget_s
        self.points: list[dict] = []
        self.train_seconds, self._since, self.scoring_seconds = 0.0, None, 0.0
        self.micro_steps, self.batch_counts = 0, []  # (examples, real tokens, trained tokens) per micro-batch

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        loader = getattr(train_dataloader, "base_dataloader", train_dataloader)  # accelerate wraps the DataLoader
        inner = loader.collate_fn

        def counting_collate(features):
            batch = inner(features)
            real = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
            self.batch_counts.append((len(features), int(real), int((batch["labels"] != -100).sum())))
            return batch

        loader.collate_fn = counting_collate
        self._since = time.perf_counter()

    def on_substep_end(self, args, state, control, **kwargs):
        self.micro_steps += 1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.micro_steps += 1
        elapsed = self._clock()
        examples = self.consumed()[0]
        if examples // self.every > (self.points[-1]["examples"] if self.points else 0) // self.every:
            self._record(state, model)
        if elapsed >= self.budget_s:
            if not self.points or self.points[-1]["step"] != state.global_step:
                self._record(state, model)
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._clock()
        if not self.points or self.points[-1]["step"] != state.global_step:
            self._record(state, model)

    def _clock(self) -> float:
        now = time.perf_counter()
        self.train_seconds += now - self._since
        self._since = now
        return self.train_seconds

    def consumed(self) -> tuple[int, int, int]:
        """(examples, real tokens, trained tokens) of the micro-batches trained so far."""
        done = self.batch_counts[: self.micro_steps]
        return tuple(sum(c[i] for c in done) for i in range(3))

    def _record(self, state, model) -> None:
        started = time.perf_counter()
        loss = self.scorer.score(model)
        examples, tokens, trained = self.consumed()
        self.points.append({
            "step": state.global_step, "examples": examples, "tokens": tokens, "trained_tokens": trained,
            "train_seconds": round(self.train_seconds, 2), "heldout_loss": round(loss, 5),
        })
        print(json.dumps({"point": self.points[-1]}), file=sys.stderr, flush=True)
        self._since = time.perf_counter()  # the scoring pause is not training time
        self.scoring_seconds += self._since - started
