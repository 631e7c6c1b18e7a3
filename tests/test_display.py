"""What `chattune train` prints (training/display.py): a live line on a terminal, plain lines
elsewhere, JSON lines with --log-format json, one line with --quiet; never transformers' dict
per step."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from chattune import rundir
from chattune.training.display import TrainingDisplay
from chattune.training.display_text import (
    Smoother,
    StepView,
    duration,
    eta,
    eval_line,
    fit_status,
    step_line,
    summary_line,
    summary_rows,
)
from chattune.training.evaluate import BestTracker
from resume_helpers import TINY
from screen_helpers import run_in_pty, screen

ANSI = re.compile(r"\x1b[\[\]]")
RAW_DICT = re.compile(r"\{'(loss|eval_loss|train_runtime)'")
STEPS = 4
SUMMARY = {
    "steps": 6,
    "seconds": 130.0,
    "trained_tokens": 2600,
    "tokens_per_s": 55.5,
    "final_loss": 1.5,
    "train_loss": 1.75,
    "final_eval_loss": 1.6,
    "in_training_eval": {"metric": "loss", "best": 1.6, "best_step": 6, "adapter": "best = final"},
    "forgetting": {
        "kl_to_base": 0.0123,
        "base_loss": 2.0,
        "tuned_loss": 2.1,
        "threshold_kl": 0.15,
        "warning": False,
    },
}


def test_duration_and_eta():
    assert [duration(s) for s in (0, 9.4, 59.6, 130, 3725, 90061)] == [
        "0s",
        "9s",
        "1m00s",
        "2m10s",
        "1h02m",
        "1d01h",
    ]
    assert eta(step=5, total=10, start_step=0, elapsed=20.0) == 20.0
    assert (
        eta(step=8, total=10, start_step=6, elapsed=4.0) == 4.0
    )  # a resumed run: this session's pace
    assert eta(step=3, total=10, start_step=3, elapsed=5.0) is None


def test_smoothing_starts_at_the_first_loss_and_follows_the_recent_ones():
    smoother = Smoother(beta=0.5)
    assert smoother.value is None and smoother.add(4.0) == 4.0  # bias-corrected: not pulled to 0
    assert smoother.add(2.0) == pytest.approx((0.5 * 0.5 * 4 + 0.5 * 2) / 0.75)
    for _ in range(30):
        smoother.add(1.0)
    assert smoother.value == pytest.approx(1.0)


def test_lines_and_summary_read_like_the_docs():
    view = StepView(
        step=12,
        total=96,
        loss=1.958,
        smoothed=1.9,
        lr=5.7e-4,
        grad_norm=1.916,
        tokens_per_s=1234.4,
        eta=130,
    )
    assert (
        step_line(view) == "step 12/96  loss 1.958  lr 5.7e-04  grad 1.92  1,234 tok/s  eta 2m10s"
    )
    for width in (160, 80, 50):  # a narrow terminal drops the least needed parts, never loss or ETA
        head, bar, tail = fit_status(view, width)
        assert (
            len(head) + 2 + bar + 2 + len(tail) <= width
            and "loss 1.900" in tail
            and "eta 2m10s" in tail
        )
    assert fit_status(view, 160)[1:] == (
        24,
        "loss 1.900 (last 1.958)  lr 5.7e-04  grad 1.92  1,234 tok/s  eta 2m10s",
    )
    best = BestTracker(higher_is_better=False)
    best.update(4, 1.5)
    assert (
        eval_line(4, 96, {"eval_loss": 1.5}, best) == "eval step 4/96  eval_loss 1.500  best so far"
    )
    best.update(8, 1.7)
    assert eval_line(8, 96, {"eval_loss": 1.7}, best).endswith(
        "eval_loss 1.700  best 1.500 at step 4"
    )
    rows = dict(summary_rows(SUMMARY, Path("runs/x")))
    assert rows["trained"] == "6 steps in 2m10s, 20 trained tok/s (56 tok/s in all)"
    assert (
        "best loss 1.600 at step 6" in rows["held-out"]
        and "KL to base 0.0123" in rows["forgetting"]
    )
    assert rows["loss curve"] == str(Path("runs/x") / rundir.LOSS_PLOT)
    assert summary_line(SUMMARY, Path("runs/x")).startswith("done runs/x: 6 steps in 2m10s")


def _feed(display: TrainingDisplay, records: list[dict]) -> None:
    """Callbacks and records in the Trainer's order: step end, its log record, then the eval."""
    state = SimpleNamespace(global_step=0, max_steps=2)
    display.on_train_begin(None, state, None)
    for record in records:
        state.global_step = record["step"]
        if "loss" in record:
            display.on_step_end(None, state, None)
        display.record(record)
        if "eval_loss" in record:
            display.on_evaluate(None, state, None)
    display.on_train_end(None, state, None)
    display.finish(SUMMARY, Path("runs/x"))


RECORDS = [
    {
        "step": 1,
        "loss": 2.0,
        "lr": 1e-3,
        "grad_norm": 1.0,
        "trained_tokens_per_s": 10.0,
        "max_steps": 2,
    },
    {
        "step": 2,
        "loss": 1.5,
        "lr": 5e-4,
        "grad_norm": 0.5,
        "trained_tokens_per_s": 12.0,
        "max_steps": 2,
    },
    {"step": 2, "eval_loss": 1.6, "max_steps": 2},
]


@pytest.mark.parametrize("log_format, quiet", [("plain", False), ("json", False), ("plain", True)])
def test_each_format_prints_what_it_promises(log_format, quiet, capsys):
    _feed(TrainingDisplay(log_format, quiet=quiet), RECORDS)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    if log_format == "json":
        assert [json.loads(line) for line in lines] == RECORDS and "run dir" in err
    elif quiet:
        assert lines == [summary_line(SUMMARY, Path("runs/x"))] and err == ""
    else:
        assert lines[0].startswith("step 1/2  loss 2.000  lr 1.0e-03  grad 1.00  10 tok/s  eta")
        assert lines[2] == "eval step 2/2  eval_loss 1.600  best so far" and lines[3] == "done"


def test_only_rank_zero_prints(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    display = TrainingDisplay("plain")
    display.format = "live"  # even where a terminal would get the live line
    _feed(display, [])
    assert capsys.readouterr() == ("", "") and display._live is None


def test_preference_stages_get_the_display(tiny_model_dir, tmp_path, capsys):
    """DPO through TRL's trainer: the same plain lines, its reward margin among them, no dict."""
    from chattune.config import load_config
    from chattune.data.builtin_pairs import identity_pairs, write_jsonl
    from chattune.training.trainer import train

    pairs = write_jsonl(
        identity_pairs("Chattune Assistant", "the chattune team")[:8], tmp_path / "pairs.jsonl"
    )
    train(
        load_config(
            None,
            [
                f"model.name={tiny_model_dir}",
                f"run_dir={tmp_path / 'run'}",
                f"data.path={pairs}",
                "train.stage=dpo",
                "train.max_steps=2",
                "train.batch_size=2",
                "train.grad_accum=1",
                "train.precision=fp32",
                "train.device=cpu",
                "train.forgetting=false",
            ],
        )
    )
    out, err = capsys.readouterr()
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(steps) == 2 and all("margin" in line and "tok/s" in line for line in steps), out
    assert not RAW_DICT.search(out + err) and f"run dir     {tmp_path / 'run'}" in out


def _argv(tiny_model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "chattune",
        "train",
        f"model.name={tiny_model_dir}",
        f"run_dir={run_dir}",
        *TINY,
        f"train.max_steps={STEPS}",
        "data.eval_ratio=0.25",
        "train.eval_every=2",
        *extra,
    ]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "80"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_terminal_gets_one_live_line_eval_lines_and_the_summary(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    code, raw = run_in_pty(_argv(tiny_model_dir, run_dir), dict(os.environ), columns=160)
    lines = screen(raw, 160)
    assert code == 0, "\n".join(lines[-40:])
    assert not RAW_DICT.search(raw), "transformers printed its dict"
    status = [line for line in lines if line.startswith("step ")]
    assert len(status) == 1, "one live line, redrawn in place:\n" + "\n".join(lines)
    assert re.match(
        rf"step {STEPS}/{STEPS} +━+ +loss \d+\.\d+ \(last \d+\.\d+\) +lr [\d.e+-]+ +grad [\d.]+ "
        r"+[\d,]+ tok/s +eta 0s$",
        status[0],
    ), status[0]
    assert raw.count(f"step {STEPS - 1}/{STEPS}") >= 1  # the line was drawn at earlier steps too
    evals = [line for line in lines if line.startswith("eval step ")]
    assert [e.split()[2] for e in evals] == ["2/4", "4/4"] and "best" in evals[-1]
    assert (
        f"run dir     {run_dir}" in lines and f"loss curve  {run_dir / rundir.LOSS_PLOT}" in lines
    )
    assert any(line.startswith("trained     4 steps in ") and "tok/s" in line for line in lines)
    assert any(line.startswith("held-out    eval_loss final ") for line in lines)
    assert any(line.startswith("forgetting  KL to base ") for line in lines)


@pytest.mark.slow
def test_a_pipe_gets_one_plain_line_per_logging_step(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    done = _run(_argv(tiny_model_dir, run_dir, "train.forgetting=false"))
    records = rundir.RunDir(run_dir).metrics()
    lines = done.stdout.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == len([r for r in records if "loss" in r]) == STEPS
    assert all(
        re.match(r"step \d/4  loss [\d.]+  lr \S+  grad \S+  [\d,]+ tok/s  eta \d+s$", s)
        for s in steps
    ), steps
    assert len([line for line in lines if line.startswith("eval step ")]) == 2
    assert not ANSI.search(done.stdout) and not RAW_DICT.search(done.stdout + done.stderr)
    assert f"  run dir     {run_dir}" in lines


@pytest.mark.slow
def test_log_format_json_is_metrics_jsonl_on_stdout(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    done = _run(_argv(tiny_model_dir, run_dir, "train.forgetting=false", "--log-format", "json"))
    printed = [json.loads(line) for line in done.stdout.splitlines()]  # every line is JSON
    assert printed == rundir.RunDir(run_dir).metrics() and len(printed) == STEPS + 2
    assert "run dir" in done.stderr and not RAW_DICT.search(done.stderr)


@pytest.mark.slow
def test_quiet_prints_only_the_summary_line(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    done = _run(_argv(tiny_model_dir, run_dir, "train.forgetting=false", "--quiet"))
    assert done.stderr == ""
    assert done.stdout.splitlines() == [summary_line(rundir.RunDir(run_dir).summary(), run_dir)]
    assert (
        done.stdout.startswith(f"done {run_dir}: {STEPS} steps in ")
        and "eval_loss final" in done.stdout
    )
