"""`train.lr: auto`: the learning rate by model size hits its two anchors, clamps, and is what the run trains with."""

from __future__ import annotations

import pytest

from chattune.config import load_config
from chattune.training.defaults import (
    LARGE_MODEL,
    SMALL_MODEL,
    auto_learning_rate,
    base_parameter_count,
    learning_rate,
)


def test_anchors_clamps_and_monotone():
    assert auto_learning_rate(int(SMALL_MODEL[0])) == SMALL_MODEL[1]
    assert auto_learning_rate(int(LARGE_MODEL[0])) == pytest.approx(LARGE_MODEL[1])
    assert auto_learning_rate(1_000_000) == SMALL_MODEL[1]  # smaller than measured: not extrapolated upwards
    assert auto_learning_rate(70_000_000_000) == LARGE_MODEL[1]
    sizes = [135e6, 360e6, 5e8, 1.5e9, 3e9, 7e9]
    rates = [auto_learning_rate(int(n)) for n in sizes]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)


def test_explicit_lr_passes_through_and_auto_counts_the_skeleton(tiny_model_dir):
    assert learning_rate(load_config(None, [f"model.name={tiny_model_dir}", "train.lr=3e-4"])) == (3e-4, "train.lr")
    cfg = load_config(None, [f"model.name={tiny_model_dir}"])
    from transformers import AutoModelForCausalLM

    expected = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert base_parameter_count(cfg.model) == expected
    lr, source = learning_rate(cfg)
    assert lr == auto_learning_rate(expected) and "auto" in source


def test_run_trains_with_and_records_the_resolved_lr(tiny_model_dir, tmp_path):
    from chattune.training.trainer import train

    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "data.size=8",
                             "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1", "train.precision=fp32",
                             "train.device=cpu", "train.warmup_ratio=0", "train.scheduler=constant"])
    outcome = train(cfg)
    assert outcome.summary["lr"] == learning_rate(cfg)[0] == SMALL_MODEL[1]
    from chattune import rundir

    logged = [r["lr"] for r in rundir.RunDir(outcome.run_dir).metrics() if "lr" in r]
    assert logged and logged[0] == pytest.approx(SMALL_MODEL[1])
