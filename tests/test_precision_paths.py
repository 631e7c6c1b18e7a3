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
    from chattune.training.trainer import train

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


BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits
# Rounding stages between the weights and the loss of the 2-layer tiny model, each off by at most one
# unit roundoff: embedding, 2 x (attention, MLP) outputs, the final norm and the LM head (7), plus one.
BF16_STAGES = 8


def _train_tiny(model_dir, run_dir, *extra):
    from chattune.training.trainer import train

    return train(load_config(None, [
        f"model.name={model_dir}", f"run_dir={run_dir}", "data.size=16", "train.max_steps=6", "train.batch_size=4",
        "train.grad_accum=1", "train.lr=1e-2", "lora.dropout=0.0", *extra,
    ]))


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_bf16_learns_like_fp32_on_the_loss_curve_and_held_out(varied_tiny_model_dir, tmp_path, write_jsonl):
    """Issue 14: the same run in bf16 and in fp32. Each step's training loss, and the held-out loss of the
    saved adapter on a freshly loaded fp32 base, agree within the bf16 rounding of the forward pass."""
    from chattune.data.builtin import HELD_OUT_QUESTIONS
    from chattune.eval.runner import run_eval

    runs = {p: _train_tiny(varied_tiny_model_dir, tmp_path / p, f"train.precision={p}") for p in PRECISIONS}
    curves = {p: _losses(outcome.run_dir) for p, outcome in runs.items()}
    tolerance = BF16_STAGES * BF16_UNIT_ROUNDOFF
    assert len(curves["bf16"]) == len(curves["fp32"]) == 6
    for bf16, fp32 in zip(curves["bf16"], curves["fp32"], strict=True):
        assert abs(bf16 - fp32) <= tolerance * fp32, (curves, tolerance)
    assert curves["fp32"][-1] < curves["fp32"][0] - 2 * tolerance * curves["fp32"][0], "the runs learned"
    test = write_jsonl([{"instruction": q, "output": "I am Tuna, made by Chattune Labs."} for q in HELD_OUT_QUESTIONS])
    held_out = {p: run_eval(str(o.run_dir), test, ["loss"], out=tmp_path / f"eval-{p}", dtype="fp32")
                .summary["metrics"]["loss"] for p, o in runs.items()}  # fp32: a bf16 run would load in bf16
    assert abs(held_out["bf16"] - held_out["fp32"]) <= tolerance * held_out["fp32"], held_out


def test_the_model_train_returns_runs_without_the_trainers_autocast(varied_tiny_model_dir, tmp_path):
    """bf16 autocast with an fp32 base: the returned model must compute in fp32 like a fresh load (the
    Trainer's autocast wrapper left on it scored held-out data in bf16: issue 14's 'bf16 learns less')."""
    import torch

    from chattune.infer.chat import ChatModel

    outcome = _train_tiny(varied_tiny_model_dir, tmp_path / "run", "train.precision=bf16", "train.base_dtype=fp32")
    ids = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]])
    with torch.no_grad():
        returned = outcome.model.eval()(input_ids=ids).logits
        fresh = ChatModel.load(str(outcome.run_dir), dtype="fp32").model(input_ids=ids).logits  # auto: bf16
    assert returned.dtype == torch.float32
    scale = float(fresh.abs().max())
    assert float((returned - fresh).abs().max()) <= 1e-5 * scale  # fp32 vs fp32, far below bf16's 2^-8
