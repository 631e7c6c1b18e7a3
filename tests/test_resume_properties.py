"""Property test (hypothesis): a run stopped at a random step and resumed equals the straight run (issue 21).

For random (max_steps, batch_size, grad_accum, save_every, dataset size) one run trains straight
through; another stops at a random step and `--resume auto` continues it. They must end with the
same adapter (a few fp32 ulps), the same steps and tokens in summary.json and the same metrics.jsonl
steps (1..max_steps, once each) and losses. Stops are drawn from the two ways a run really stops early:
- a signal (SIGINT while a step is logged): the interrupt path saves a checkpoint at whatever step it
  stops, not only at save_every multiples, and resume continues exactly there;
- a crash right after a step is logged (an exception out of the metrics writer: what kill -9 leaves
  on disk): metrics.jsonl is ahead of the newest save_every checkpoint, or there is no checkpoint at
  all, so resume must cut the metrics back and replay steps with the same data order and RNG.
A first session with a smaller train.max_steps is not used: the lr schedule follows max_steps, so that
run continued would by design not equal the straight one. In-process on the tiny Llama, a few seconds
an example; the kill -9 subprocess sweep over save phases is tests/test_kill_sweep.py.
"""

from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chattune import rundir
from chattune.config import load_config
from chattune.training.checkpoints import checkpoint_step, latest_checkpoint
from resume_helpers import logged_losses, saved_adapter

pytestmark = pytest.mark.slow
EXAMPLES = settings(max_examples=10, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ULPS = 4 * torch.finfo(torch.float32).eps  # the same fp32 ops on the same data, maybe summed in another order


class Crash(RuntimeError):
    """Stands for a process death right after a step's metrics line reached the disk."""


@st.composite
def schedules(draw):
    steps = draw(st.integers(2, 7))
    how = draw(st.sampled_from(["signal", "crash"]))
    return {
        "size": draw(st.integers(3, 20)), "batch_size": draw(st.integers(1, 3)), "grad_accum": draw(st.integers(1, 3)),
        "max_steps": steps, "save_every": draw(st.one_of(st.none(), st.integers(1, steps))), "how": how,
        # a signal during step k's log stops the run after step k + 1 (the flag is read at each step's end)
        "at": draw(st.integers(1, steps - 1 if how == "signal" else steps)),
    }


def _cfg(tiny_model_dir: Path, run_dir: Path, plan: dict):
    save_every = "null" if plan["save_every"] is None else plan["save_every"]
    return load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={run_dir}", "name=prop", f"data.size={plan['size']}",
        f"train.batch_size={plan['batch_size']}", f"train.grad_accum={plan['grad_accum']}", "train.lr=1e-2",
        f"train.max_steps={plan['max_steps']}", f"train.save_every={save_every}", "train.precision=fp32",
        "train.device=cpu", "lora.dropout=0.1",
    ])


def _stop_while_logging(step: int, how: str):
    """A MetricsLogger.add that, after writing step `step`'s line, raises SIGINT or crashes."""
    from chattune.training.callbacks import MetricsLogger

    original = MetricsLogger.add

    def add(self, record):
        original(self, record)
        if record.get("step") == step and "loss" in record:
            if how == "crash":
                raise Crash(f"died after logging step {step}")
            signal.raise_signal(signal.SIGINT)

    return add


def _stopped_run(tiny_model_dir: Path, run_dir: Path, plan: dict) -> None:
    from chattune.training.callbacks import MetricsLogger
    from chattune.training.interrupt import TrainingInterrupted
    from chattune.training.trainer import train

    expected = TrainingInterrupted if plan["how"] == "signal" else Crash
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MetricsLogger, "add", _stop_while_logging(plan["at"], plan["how"]))
        with pytest.raises(expected) as stop:
            train(_cfg(tiny_model_dir, run_dir, plan))
    newest = latest_checkpoint(run_dir / "checkpoints")
    newest = checkpoint_step(newest) if newest else 0
    if plan["how"] == "signal":
        assert stop.value.step == plan["at"] + 1 == newest
    else:  # step `at` logged, its checkpoint (if due) not written: the newest is an earlier save_every multiple
        every = plan["save_every"]
        assert newest == ((plan["at"] - 1) // every * every if every else 0)
        assert [r["step"] for r in rundir.RunDir(run_dir).metrics()] == list(range(1, plan["at"] + 1))
    event(f"{plan['how']}: resumed from {'a checkpoint' if newest else 'step 0'}")
    assert not (run_dir / rundir.SUMMARY).exists(), "a stopped run is not a finished one"


@EXAMPLES
@given(plan=schedules())
def test_stop_anywhere_then_resume_equals_the_straight_run(tiny_model_dir, tmp_path, plan):
    from chattune.training.trainer import train

    base = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example: tmp_path is shared by all of them
    straight, resumed = base / "straight", base / "resumed"
    train(_cfg(tiny_model_dir, straight, plan))
    _stopped_run(tiny_model_dir, resumed, plan)
    train(_cfg(tiny_model_dir, resumed, plan), resume="auto")

    want, got = saved_adapter(straight), saved_adapter(resumed)
    assert want.keys() == got.keys() and want
    for name in want:
        assert (want[name] - got[name]).abs().max().item() <= ULPS * want[name].abs().max().item(), (name, plan)
    summary, want_summary = (json.loads((d / rundir.SUMMARY).read_text()) for d in (resumed, straight))
    assert summary["steps"] == want_summary["steps"] == plan["max_steps"], plan
    assert (summary["tokens"], summary["trained_tokens"]) == (want_summary["tokens"], want_summary["trained_tokens"])
    losses, want_losses = logged_losses(resumed), logged_losses(straight)  # each asserts no step is logged twice
    assert list(losses) == list(want_losses) == list(range(1, plan["max_steps"] + 1)), plan
    assert losses == pytest.approx(want_losses, rel=ULPS), plan
