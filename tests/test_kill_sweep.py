"""kill -9 at every phase of a checkpoint commit and of the final save, then `--resume auto` (issue 21).

The run ends mid-epoch (16 examples, 4 per step: 4 steps an epoch; max_steps=5) with a checkpoint
every 2 steps and one kept, so its commits at steps 2, 4 and 5 rotate the one before. For each
point of chattune.faults the training CLI (`python -m chattune train ... --resume auto`, the same
command a requeued job runs) is started with CHATTUNE_KILL_AT there and must die of SIGKILL; the
same command, run again, must finish a run equal to the uninterrupted one: the same adapter tensors,
the same steps and tokens in summary.json, metrics.jsonl with steps 1..5 once each and the same
losses, the same checkpoints, and no temporary or staging folder left behind. The killed runs and
the reference are subprocesses, two at a time; the resumes run the same argv through chattune.cli.main in this
process (an import of torch + transformers saved per phase: about half the sweep's time).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import chattune.io as fileio
from chattune import faults, rundir
from resume_helpers import TINY, saved_adapter

STEPS = 5
ARGS = [*TINY, f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_checkpoints=1"]
ULPS = 4 * torch.finfo(torch.float32).eps  # fp32 training on CPU: the same ops on the same data
LAST_COMMIT = {"checkpoint:retired-aside": 2}  # rotation retires a checkpoint at the 2nd and 3rd commit only
SWEEP = (
    *(f"{p}@{LAST_COMMIT.get(p, 3)}" for p in faults.CHECKPOINT_PHASES),  # the commit of step 5, the last one
    "checkpoint:fsynced@1", "checkpoint:renamed@1",  # the first commit: before it nothing, after it step 2
    *faults.FINAL_PHASES,
    f"{faults.WRITTEN}:{rundir.ADAPTER}", f"{faults.WRITTEN}:{rundir.SUMMARY}",  # a temporary complete, not renamed
)


def _command(tiny_model_dir: Path, run_dir: Path) -> list[str]:
    return ["train", f"model.name={tiny_model_dir}", f"run_dir={run_dir}", *ARGS, "--resume", "auto"]


def _run_cli(argv: list[str], kill_at: str | None = None, log: Path | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if kill_at:
        env[faults.ENV] = kill_at
    with open(log or os.devnull, "w") as out:  # a file, not a pipe: a full pipe would block the child
        return subprocess.run([sys.executable, "-m", "chattune", *argv], env=env, stdout=out, stderr=out,
                              timeout=600).returncode


def _hidden(run_dir: Path) -> list[str]:
    """Temporaries of atomic writes, staging or retired checkpoints: none may outlive a finished run."""
    return [str(p.relative_to(run_dir)) for p in run_dir.rglob(".*")]


def _adapter_problems(reference: Path, run_dir: Path, worst: list[float]) -> list[str]:
    """Equal up to 4 fp32 ulps of each tensor's scale (the same ops on the same data, maybe reordered);
    appends the largest |difference| seen to `worst`."""
    want, got = saved_adapter(reference), saved_adapter(run_dir)
    if want.keys() != got.keys() or not want:
        return [f"adapter keys differ: {sorted(want.keys() ^ got.keys())[:3]}"]
    problems = []
    for name in want:
        if want[name].shape != got[name].shape:
            problems.append(f"adapter {name}: shape {tuple(got[name].shape)}")
            continue
        diff = (want[name] - got[name]).abs().max().item()
        worst.append(diff)
        if diff > ULPS * want[name].abs().max().item():
            problems.append(f"adapter {name}: max |diff| {diff:.3g}")
    return problems


def _differences(reference: Path, run_dir: Path, worst: list[float]) -> list[str]:
    """What differs between a resumed run dir and the uninterrupted one (empty: equal)."""
    problems = _adapter_problems(reference, run_dir, worst)
    summary, want_summary = (json.loads((d / rundir.SUMMARY).read_text()) for d in (run_dir, reference))
    for key in ("steps", "tokens", "trained_tokens"):
        if summary.get(key) != want_summary.get(key):
            problems.append(f"summary {key}: {summary.get(key)} != {want_summary.get(key)}")
    steps = [r["step"] for r in rundir.RunDir(run_dir).metrics() if "loss" in r]
    if steps != list(range(1, STEPS + 1)):
        problems.append(f"metrics.jsonl steps {steps}")
    losses = {r["step"]: r["loss"] for r in rundir.RunDir(run_dir).metrics() if "loss" in r}
    want_losses = {r["step"]: r["loss"] for r in rundir.RunDir(reference).metrics() if "loss" in r}
    problems += [f"step {s} loss {losses.get(s)} != {loss}" for s, loss in want_losses.items()
                 if losses.get(s) is None or abs(losses[s] - loss) > ULPS * abs(loss)]
    if summary.get("final_loss") != losses.get(STEPS):
        problems.append(f"summary final_loss {summary.get('final_loss')} is not step {STEPS}'s loss")
    files, want_files = (sorted(p.name for p in d.iterdir()) for d in (run_dir, reference))
    if files != want_files:
        problems.append(f"run dir holds {files}, the uninterrupted one {want_files}")
    kept, want_kept = (sorted(p.name for p in (d / "checkpoints").iterdir()) for d in (run_dir, reference))
    if kept != want_kept:
        problems.append(f"checkpoints {kept} != {want_kept}")
    if hidden := _hidden(run_dir):
        problems.append(f"left behind: {hidden}")
    problems += [f"{name}/ damaged: {p}" for name in (rundir.ADAPTER,) for p in fileio.checksum_problems(run_dir / name)]
    return problems


def test_every_fault_point_in_the_code_is_swept():
    """A point added to the code but not to chattune.faults (so not to the sweep) fails here."""
    source = Path(faults.__file__).parent
    used = set()
    for path in source.rglob("*.py"):
        used |= set(re.findall(r'fault_point\("([^"]+)"\)', path.read_text(encoding="utf-8")))
    named = {*faults.CHECKPOINT_PHASES, *faults.FINAL_PHASES}
    assert used == named, f"in the code only: {used - named}; in faults.py only: {named - used}"
    swept = {point.partition("@")[0] for point in SWEEP}
    assert named <= swept


def test_fault_point_kills_at_the_nth_time_only(tmp_path):
    code = ("from chattune.faults import fault_point\n"
            "fault_point('a'); fault_point('x'); print('alive', flush=True); fault_point('x'); print('still alive')\n")
    for spec, code_out, printed in (("x@2", -signal.SIGKILL, "alive\n"), ("x", -signal.SIGKILL, ""),
                                    ("x@3", 0, "alive\nstill alive\n"), ("", 0, "alive\nstill alive\n")):
        env = {**os.environ, faults.ENV: spec}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (code_out, printed), spec


def _check_phase(point: str, killed: int, tiny_model_dir: Path, reference: Path, run_dir: Path, capsys,
                 worst) -> list[str]:
    """The CLI was killed at `point` (exit code `killed`); run the same command again: what went wrong."""
    from chattune.cli import main

    if killed != -signal.SIGKILL:
        return [f"the first run was not killed there (exit code {killed}): the point was not reached"]
    capsys.readouterr()
    resumed, said = main(_command(tiny_model_dir, run_dir)), capsys.readouterr().err
    if resumed != 0:
        return [f"--resume auto exited {resumed}: {said[-800:]}"]
    if (point == faults.FINAL_PHASES[-1]) != ("already finished" in said):  # killed after summary.json: a no-op
        return [f"'already finished' {'not ' if 'already finished' not in said else ''}said on resume"]
    try:
        return _differences(reference, run_dir, worst)
    except Exception as err:  # e.g. a cut line in metrics.jsonl: counted, and the sweep goes on
        return [f"{type(err).__name__}: {err}"]


def _first_runs(tiny_model_dir: Path, tmp_path: Path) -> list[int]:
    """The reference run and every killed run, two at a time (each is mostly a single-threaded import)."""
    def first(index: int) -> int:
        if index < 0:
            return _run_cli(_command(tiny_model_dir, tmp_path / "reference"), log=tmp_path / "reference.log")
        run_dir = tmp_path / f"run-{index}"
        return _run_cli(_command(tiny_model_dir, run_dir), kill_at=SWEEP[index], log=run_dir.with_suffix(".log"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(first, range(-1, len(SWEEP))))


@pytest.mark.slow
def test_kill_9_at_every_phase_then_resume_equals_the_uninterrupted_run(tiny_model_dir, tmp_path, capsys):
    reference = tmp_path / "reference"
    reference_code, *killed = _first_runs(tiny_model_dir, tmp_path)
    assert reference_code == 0
    assert not _hidden(reference) and [p.name for p in (reference / "checkpoints").iterdir()] == ["checkpoint-5"]
    failures, worst = {}, [0.0]
    for index, point in enumerate(SWEEP):
        run_dir = tmp_path / f"run-{index}"
        if problems := _check_phase(point, killed[index], tiny_model_dir, reference, run_dir, capsys, worst):
            failures[point] = problems
    with capsys.disabled():
        print(f"\nkill-9 sweep: {1 + 2 * len(SWEEP)} runs, {len(SWEEP)} phases, {len(failures)} failures "
              f"(max |adapter diff| {max(worst):.3g})")
    assert not failures, "\n".join(f"{point}: {'; '.join(p)}" for point, p in failures.items())
