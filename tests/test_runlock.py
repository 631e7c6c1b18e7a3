"""One writer per run dir (issue 37 item 1): the flock every writer takes, and who it refuses.

The lock test proper runs two real `chattune train --resume auto` processes on one run dir: the
second, started while the first holds the lock (the first is paused with SIGSTOP so the overlap is
certain), is refused with exit 2 and one line naming the first's PID and command; the first then
finishes exactly like a lone run with the same seed (adapter tensors, losses, steps, files).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chattune import rundir, runlock
from chattune.config import load_config
from resume_helpers import TINY, saved_adapter

HOLD = ("import sys, time\nfrom chattune import runlock\nrunlock.lock_run_dir(sys.argv[1])\n"
        "print('held', flush=True)\ntime.sleep(600)\n")


@contextlib.contextmanager
def held_by_another_process(run_dir: Path):
    """A second process holding `run_dir`'s writer lock; killed with SIGKILL on exit (a stale lock)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_second_writer_is_refused_with_the_holders_pid_and_command(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with held_by_another_process(run) as holder:
        with pytest.raises(runlock.RunDirBusy) as refused:
            runlock.lock_run_dir(run)
        message = str(refused.value)
        assert f"pid {holder.pid}: " in message and "runlock.lock_run_dir" in message
        assert message.startswith(f"{run}: another chattune process is writing here")
        assert "\n" not in message
        assert runlock.busy_holder(run) == runlock.holder(run / rundir.LOCK) != "an unknown process"
    # killed with kill -9: its lock file is still there, naming a dead process, and does not block
    assert json.loads((run / rundir.LOCK).read_text())["pid"] == holder.pid
    assert runlock.busy_holder(run) is None
    with runlock.lock_run_dir(run):
        assert json.loads((run / rundir.LOCK).read_text())["pid"] == os.getpid()
    assert not (run / rundir.LOCK).exists(), "released: the lock file goes"


def test_hold_is_once_per_process_and_scope_releases(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with runlock.scope():
        runlock.hold(run)
        runlock.hold(run)  # the same process again: not a second writer
        assert runlock.busy_holder(run) is None  # this process is the writer
        assert (run / rundir.LOCK).is_file()
    assert not (run / rundir.LOCK).exists()


def test_a_fresh_train_into_a_locked_run_dir_is_refused_not_called_not_empty(tmp_path):
    from chattune.training.trainer import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, [f"run_dir={run}"])
    with held_by_another_process(run) as holder, pytest.raises(runlock.RunDirBusy, match=f"pid {holder.pid}: "):
        prepare_run_dir(cfg)
    with runlock.scope():  # the stale lock file alone does not make the folder "not empty"
        assert prepare_run_dir(load_config(None, [f"run_dir={run}"])) == run


def test_eval_into_a_run_dir_being_written_is_refused_before_the_model_loads(tiny_run, tmp_path,
                                                                            write_jsonl):
    from chattune import api

    data = write_jsonl([{"instruction": "hi", "output": "hello"}])
    with held_by_another_process(tiny_run) as holder:
        with pytest.raises(runlock.RunDirBusy, match=f"pid {holder.pid}: "):
            api.evaluate(tiny_run, data, "exact")
        with pytest.raises(runlock.RunDirBusy, match=f"pid {holder.pid}: "):  # --out inside it too
            api.evaluate("some-model", data, "exact", out=tiny_run / "eval" / "mine")
    assert not (tiny_run / rundir.EVAL_DIR / "mine").exists()


def test_the_ui_refuses_to_resume_a_run_dir_another_process_writes(tmp_path):
    from chattune.ui.jobs import Jobs

    run = tmp_path / "run"
    run.mkdir()
    refusal = "being written by another chattune process \\(pid {}: "
    with held_by_another_process(run) as holder, \
            pytest.raises(ValueError, match=refusal.format(holder.pid)):
        Jobs(tmp_path / "work").resume(run, {"name": "x"})


def _train_argv(tiny_model_dir: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "chattune", "train", f"model.name={tiny_model_dir}", f"run_dir={run_dir}",
            *TINY, "train.max_steps=6", "train.save_every=2", "--resume", "auto"]


def _wait_for_lock_of(run_dir: Path, pid: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "the first training ended before it was seen holding the lock"
        with contextlib.suppress(OSError, ValueError):
            if json.loads((run_dir / rundir.LOCK).read_text())["pid"] == pid:
                return
        time.sleep(0.05)
    raise AssertionError("the first training never took the lock")


def test_two_trainings_on_one_run_dir_one_is_refused_the_other_equals_a_lone_run(tiny_model_dir, tmp_path):
    shared, lone = tmp_path / "shared", tmp_path / "lone"
    env = {**os.environ, "CHATTUNE_KILL_AT": ""}
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(_train_argv(tiny_model_dir, shared), stdout=log, stderr=log, env=env)
    try:
        _wait_for_lock_of(shared, first.pid, first)
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock, certainly, while the second one starts
        second = subprocess.run(_train_argv(tiny_model_dir, shared), capture_output=True, text=True, env=env,
                                timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert second.returncode == 2, second.stderr[-2000:]
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"pid {first.pid}: " in lines[0] and "-m chattune train" in lines[0]
    assert lines[0].startswith(f"error: {shared}: another chattune process is writing here")

    assert subprocess.run(_train_argv(tiny_model_dir, lone), capture_output=True, env=env,
                          timeout=600).returncode == 0
    want, got = saved_adapter(lone), saved_adapter(shared)
    assert want.keys() == got.keys() and want
    assert all(torch.equal(want[name], got[name]) for name in want), "the adapter differs from a lone run's"
    losses = {d: [(r["step"], r["loss"]) for r in rundir.RunDir(d).metrics() if "loss" in r] for d in (shared, lone)}
    assert losses[shared] == losses[lone] and [s for s, _ in losses[shared]] == list(range(1, 7))
    summaries = {d: json.loads((d / rundir.SUMMARY).read_text()) for d in (shared, lone)}
    assert all(summaries[shared][k] == summaries[lone][k] for k in ("steps", "tokens", "trained_tokens", "final_loss"))
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in lone.iterdir())
    assert not (shared / rundir.LOCK).exists() and not (lone / rundir.LOCK).exists()
