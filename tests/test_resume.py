"""Checkpoints, exact resume and interruptions (SIGINT, SIGTERM, kill -9) on a tiny random Llama."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chattune import rundir
from chattune.config import load_config
from chattune.training import checkpoints as ck
from resume_helpers import TINY, logged_losses, resume_cfg, saved_adapter


def _interrupt_after_step(monkeypatch, step: int) -> None:
    """Deliver a real SIGINT while step `step` is being logged: training stops after step + 1."""
    from chattune.training.callbacks import MetricsLogger

    original = MetricsLogger.add

    def add(self, record):
        original(self, record)
        if record.get("step") == step and "loss" in record:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(MetricsLogger, "add", add)


def test_stop_at_3_and_resume_equals_straight_6(straight, tiny_model_dir, tmp_path, monkeypatch):
    from chattune.training.interrupt import TrainingInterrupted
    from chattune.training.trainer import train

    run_dir = tmp_path / "run"
    cfg = resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2")
    _interrupt_after_step(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg)
    monkeypatch.undo()
    assert stop.value.exit_code == 130 and stop.value.step == 3
    assert stop.value.checkpoint == run_dir / "checkpoints" / "checkpoint-3"
    assert not (run_dir / rundir.ADAPTER).exists(), "an interrupted run is not a finished run dir"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handlers are restored"

    train(resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2"), resume="auto")
    want, got = saved_adapter(straight), saved_adapter(run_dir)
    assert want.keys() == got.keys() and want
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6, rtol=0), name
    straight_losses, resumed_losses = logged_losses(straight), logged_losses(run_dir)
    assert list(resumed_losses) == [1, 2, 3, 4, 5, 6]
    for step, loss in straight_losses.items():
        assert resumed_losses[step] == pytest.approx(loss, abs=1e-6), step
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    want_summary = json.loads((straight / rundir.SUMMARY).read_text())
    assert summary["steps"] == 6 and summary["tokens"] == want_summary["tokens"]
    assert summary["train_loss"] == pytest.approx(want_summary["train_loss"], abs=1e-6)


def test_rotation_keeps_newest_complete_checkpoints(straight):
    root = straight / "checkpoints"
    kept = ck.complete_checkpoints(root)
    assert [p.name for p in kept] == ["checkpoint-4", "checkpoint-6"]  # saves at 2, 4, 6; keep 2
    for path in kept:
        for name in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt",
                     "rng_state.pth", "trainer_state.json", ck.STATE):
            assert (path / name).is_file(), (path, name)
        assert json.loads((path / "trainer_state.json").read_text())["global_step"] == ck.checkpoint_step(path)
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no staging leftovers"


def _fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        (path / ck.STATE).write_text("{}")
    return path


def test_incomplete_and_staging_dirs_are_ignored_then_cleaned(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _fake_checkpoint(root, step)
    _fake_checkpoint(root, 9, complete=False)  # e.g. copied by hand, half
    (root / ".tmp-checkpoint-7" / "checkpoint-7").mkdir(parents=True)  # a save killed mid-way
    assert ck.latest_checkpoint(root).name == "checkpoint-3"
    assert [p.name for p in ck.rotate(root, keep=2)] == ["checkpoint-1"]
    assert sorted(p.name for p in root.iterdir()) == [".tmp-checkpoint-7", "checkpoint-2", "checkpoint-3",
                                                      "checkpoint-9"]
    assert [p.name for p in ck.clean_staging(root)] == [".tmp-checkpoint-7"]
    assert ck.latest_checkpoint(root).name == "checkpoint-3"


def test_resume_refuses_a_changed_config(straight, tiny_model_dir):
    from chattune.training.resume import ResumeError, plan_resume

    changed = resume_cfg(tiny_model_dir, straight, "train.max_steps=6", "lora.r=16", "train.lr=0.5")
    with pytest.raises(ResumeError) as err:
        plan_resume(changed, "auto")
    text = str(err.value)
    assert "lora.r: run has 8, given 16" in text and "train.lr: run has 0.01, given 0.5" in text
    longer = plan_resume(resume_cfg(tiny_model_dir, straight, "train.max_steps=8", "train.keep_checkpoints=3"), "auto")
    assert longer.checkpoint.name == "checkpoint-6" and longer.step == 6


def test_resume_paths_and_auto_without_run_dir(straight, tiny_model_dir):
    from chattune.training.resume import ResumeError, plan_resume

    no_run_dir = load_config(None, [f"model.name={tiny_model_dir}", *TINY, "train.max_steps=6", "train.save_every=2"])
    with pytest.raises(ResumeError, match="add run_dir=RUN_DIR"):
        plan_resume(no_run_dir, "auto")
    by_checkpoint = plan_resume(no_run_dir, str(straight / "checkpoints" / "checkpoint-4"))
    assert by_checkpoint.step == 4 and Path(by_checkpoint.cfg.run_dir) == straight
    assert plan_resume(no_run_dir, str(straight)).step == 6
    with pytest.raises(ResumeError, match="belongs to the run dir"):
        plan_resume(resume_cfg(tiny_model_dir, straight.parent / "other"), str(straight))


def test_resume_refuses_changed_data(tiny_model_dir, tmp_path, write_jsonl):
    from chattune.training.resume import ResumeError
    from chattune.training.trainer import train

    rows = [{"instruction": f"question {i}", "output": f"answer number {i}"} for i in range(8)]
    data = write_jsonl(rows)
    run_dir = tmp_path / "run"
    args = [f"data.path={data}", "train.max_steps=1", "train.save_every=1"]
    train(resume_cfg(tiny_model_dir, run_dir, *args))
    write_jsonl([*rows[:-1], {"instruction": "question 7", "output": "a much longer answer than before"}])
    with pytest.raises(ResumeError, match="training data changed"):  # continued for a second step
        train(resume_cfg(tiny_model_dir, run_dir, *args, "train.max_steps=2"), resume="auto")


def test_trim_metrics_drops_later_steps_and_a_cut_line(tmp_path):
    from chattune.rundir import RunDir
    from chattune.training.resume import trim_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + '\n{"step": 5, "lo')
    kept = trim_metrics(RunDir(tmp_path), 3)
    assert [r["step"] for r in kept] == [1, 2, 3]
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_checkpoint_state_round_trip_keeps_eval_best(tmp_path):
    from types import SimpleNamespace

    from chattune.training.evaluate import BestTracker
    from chattune.training.resume import CheckpointState

    def loop():
        return SimpleNamespace(tracker=BestTracker(higher_is_better=False), best_state=None, stopped_early_at=None)

    saved = CheckpointState(load_config(None, []), SimpleNamespace(tokens=900, trained_tokens=300),
                            {"train": {"examples": 16}}, loop(), seconds_before=5.0)
    saved.eval_loop.tracker.update(2, 1.5)
    saved.eval_loop.tracker.update(4, 1.7)
    saved.eval_loop.best_state = {"lora_A": torch.arange(6.0).reshape(2, 3)}
    saved.write(tmp_path, step=4)
    state = json.loads((tmp_path / ck.STATE).read_text())
    assert state["step"] == 4 and state["seconds"] >= 5.0 and state["config"]["seed"] == 42

    restored = CheckpointState(load_config(None, []), SimpleNamespace(tokens=0, trained_tokens=0), {}, loop())
    restored.restore(state, tmp_path)
    assert (restored.counter.tokens, restored.counter.trained_tokens) == (900, 300)
    assert restored.seconds_before == state["seconds"]
    tracker = restored.eval_loop.tracker
    assert (tracker.best, tracker.best_step, tracker.since_best, tracker.history) == (1.5, 2, 1, [(2, 1.5), (4, 1.7)])
    assert torch.equal(restored.eval_loop.best_state["lora_A"], torch.arange(6.0).reshape(2, 3))


def test_resume_command_keeps_overrides_and_options():
    from chattune.training.interrupt import resume_command

    argv = ["train", "my cfg.yaml", "lora.r=4", "run_dir=old", "--nproc", "2", "--resume", "auto"]
    assert shlex.split(resume_command(argv, Path("runs/x"))) == [
        "chattune", "train", "my cfg.yaml", "lora.r=4", "run_dir=runs/x", "--nproc", "2", "--resume", "auto"]


# ---- subprocesses: real signals and kill -9 -------------------------------------------------------


def _chattune(*args: str) -> list[str]:
    return [sys.executable, "-m", "chattune", *args]


def _write_config(tmp_path: Path, tiny_model_dir: Path, **train) -> Path:
    import yaml

    config = {"name": "tiny", "model": {"name": str(tiny_model_dir)}, "data": {"size": 16},
              "train": {"batch_size": 2, "grad_accum": 1, "lr": 1e-2, "precision": "fp32", "device": "cpu", **train}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait_for(predicate, proc, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"training ended early with exit code {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _logged_steps(run_dir: Path) -> int:
    file = run_dir / rundir.METRICS
    return file.read_text().count('"loss"') if file.is_file() else 0


@pytest.mark.slow  # > ~15 s on 2 cores: subprocesses or many requests
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_prints_resume_command_and_it_finishes(sig, tiny_model_dir, tmp_path):
    config = _write_config(tmp_path, tiny_model_dir, max_steps=12, save_every=100)
    run_dir = tmp_path / "run"
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(_chattune("train", str(config), "lora.r=4", f"run_dir={run_dir}"),
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        _wait_for(lambda: _logged_steps(run_dir) >= 1, proc)
        proc.send_signal(sig)
        proc.wait(timeout=180)
    err = log.read_text()
    assert proc.returncode == 128 + sig, err[-2000:]
    printed = err.splitlines()[err.splitlines().index("continue with:") + 1].strip()
    command = shlex.split(printed)
    assert command == ["chattune", "train", str(config), "lora.r=4", f"run_dir={run_dir}", "--resume", "auto"]
    checkpoint = ck.latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and 1 <= ck.checkpoint_step(checkpoint) < 12
    assert _logged_steps(run_dir) == ck.checkpoint_step(checkpoint)

    done = subprocess.run(_chattune(*command[1:]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumingfrom{checkpoint}" in "".join(done.stderr.split())  # rich wraps long lines
    assert list(logged_losses(run_dir)) == list(range(1, 13))
    assert json.loads((run_dir / rundir.SUMMARY).read_text())["steps"] == 12


def _newest_step(run_dir: Path) -> int:
    latest = ck.latest_checkpoint(run_dir / "checkpoints")
    return ck.checkpoint_step(latest) if latest else 0


def _check_checkpoints(root: Path) -> int:
    """Every checkpoint-N is whole and loads; returns the newest step (0 for none)."""
    from safetensors.torch import load_file

    newest = 0
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith((ck.STAGING, ck.RETIRED)):
            continue  # a save or deletion cut short: ignored, cleaned by the next run
        step = ck.checkpoint_step(path)
        assert step is not None, path
        for name in ("adapter_config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            assert (path / name).is_file(), f"half-written checkpoint {path}: no {name}"
        assert load_file(str(path / "adapter_model.safetensors"))
        assert json.loads((path / "trainer_state.json").read_text())["global_step"] == step
        assert json.loads((path / ck.STATE).read_text())["step"] == step
        torch.load(path / "optimizer.pt", weights_only=True)
        newest = max(newest, step)
    return newest


@pytest.mark.slow  # > ~15 s on 2 cores: subprocesses or many requests
def test_kill_9_at_random_points_never_leaves_half_a_checkpoint(tiny_model_dir, tmp_path):
    steps = 24
    config = _write_config(tmp_path, tiny_model_dir, max_steps=steps, save_every=1, keep_checkpoints=2)
    run_dir = tmp_path / "run"
    command = _chattune("train", str(config), f"run_dir={run_dir}", "--resume", "auto")  # the same every time
    rng = random.Random(8)
    newest, kills = 0, 0
    for _ in range(3):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        previous = newest
        _wait_for(lambda previous=previous: _newest_step(run_dir) > previous, proc)
        time.sleep(rng.uniform(0.0, 0.4))  # lands anywhere: mid-step, mid-save, mid-rotation
        if proc.poll() is not None:  # a fast machine finished the run first
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        newest = _check_checkpoints(run_dir / "checkpoints")
        assert newest > previous, "each attempt got further"
    assert kills >= 1
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(logged_losses(run_dir)) == list(range(1, steps + 1))
    assert _check_checkpoints(run_dir / "checkpoints") == steps
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
