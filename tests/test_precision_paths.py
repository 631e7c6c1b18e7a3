"""Every precision `train.precision: auto` can pick runs every stage, on any CPU.

CI's CPU decides what `auto` picks (bf16 on AMX/AVX512-BF16, fp32 elsewhere), so a path that
only one kind of machine takes went untested on the others: seed 002's classifier crashed at
its first in-training generation eval under bf16. Here each precision is forced on the tiny
model (bf16 is emulated, slowly, on CPUs without it; the tiny model keeps that to seconds).
"""

from __future__ import annotations

import json

import pytest

from chattune.config import load_config

PRECISIONS = ["bf16", "fp32"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_in_training_generation_eval_runs_under_each_precision(tiny_model_dir, tmp_path, precision):
    """configs/classify.yaml's shape: eval_every + a generation metric + patience, with packing."""
    from chattune.train.trainer import train

    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "data.path=builtin:topic-classify",
        "data.eval_ratio=0.05", "data.max_length=96", "train.max_steps=4", "train.batch_size=2",
        "train.grad_accum=1", "train.eval_every=2", "train.metric=accuracy", "train.eval_samples=4",
        "train.eval_max_new_tokens=4", "train.patience=3", f"train.precision={precision}",
    ])
    outcome = train(cfg)
    assert outcome.summary["precision"] == precision
    best = outcome.summary["in_training_eval"]
    assert best["metric"] == "accuracy" and best["evaluations"] == 2
    assert 0.0 <= best["best"] <= 1.0
    records = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [2, 4]
    assert (outcome.run_dir / "adapter" / "adapter_model.safetensors").is_file()
