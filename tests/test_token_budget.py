"""train.micro_batch_tokens: pieces of whole examples within the budget, and the same training maths."""

import pytest
import torch

from adapter_helpers import REORDERED_SUM_RTOL, assert_same_sgd_training
from chattune.data.collate import PackCollator, PadCollator
from chattune.training.token_budget import example_groups, padded_groups, split_batch


def _examples(lengths):
    return [{"input_ids": list(range(10, 10 + n)), "labels": [-100] * 2 + list(range(12, 10 + n))} for n in lengths]


def test_groups_fill_the_budget_and_keep_long_examples_whole():
    assert example_groups([5, 3, 9, 2], 8) == [(0, 2), (2, 3), (3, 4)]
    assert example_groups([5, 3, 9, 2], 100) == [(0, 4)]
    assert example_groups([20], 8) == [(0, 1)], "an example over the budget is a piece of its own"
    assert padded_groups([5, 3, 9, 2], 10) == [(0, 2), (2, 3), (3, 4)]  # rows x longest row


def test_packed_pieces_are_the_row_cut_at_example_boundaries():
    batch = PackCollator()(_examples([5, 3, 9, 2]))
    pieces = split_batch(batch, 8)
    assert [p["input_ids"].shape[1] for p in pieces] == [8, 9, 2]
    for key in ("input_ids", "labels", "position_ids"):
        assert torch.equal(torch.cat([p[key] for p in pieces], dim=1), batch[key])
    assert pieces[0]["cu_seq_lens_q"].tolist() == [0, 5, 8] and pieces[0]["max_length_q"] == 5
    assert pieces[1]["cu_seq_lens_k"].tolist() == [0, 9] and pieces[2]["max_length_k"] == 2
    assert all(p["position_ids"][0, 0] == 0 and p["labels"][0, 0] == -100 for p in pieces)
    assert split_batch(batch, 0) == [batch] and split_batch(batch, 19) == [batch]


def test_padded_pieces_drop_their_own_padding():
    batch = PadCollator(pad_id=0)(_examples([5, 3, 9, 2]))
    pieces = split_batch(batch, 10)
    assert [tuple(p["input_ids"].shape) for p in pieces] == [(2, 5), (1, 9), (1, 2)]
    assert sum(int(p["attention_mask"].sum()) for p in pieces) == int(batch["attention_mask"].sum())
    assert torch.equal(pieces[0]["labels"], batch["labels"][:2, :5])


def _train(tiny_model_dir, tmp_path, name, extra):
    from safetensors.torch import load_file

    from chattune.config import load_config
    from chattune.training.trainer import train

    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / name}", "data.size=8", "train.max_steps=2",
        "train.batch_size=2", "train.grad_accum=2", "train.precision=fp32", "train.optim=sgd", "train.lr=0.5",
        *extra,
    ])
    outcome = train(cfg)
    return load_file(outcome.run_dir / "adapter" / "adapter_model.safetensors"), outcome.summary


@pytest.mark.parametrize("common", [
    ["train.packing=true"], ["train.packing=false"], ["train.packing=true", "train.skip_prompt_logits=false"],
], ids=["packed", "padded", "model-loss"])
def test_a_budget_changes_memory_not_the_optimizer_steps(tiny_model_dir, tmp_path, monkeypatch, common):
    """Two optimizer steps with one example per forward pass end at the same adapter as whole micro-batches."""
    from chattune.training import (
        counting_trainer as trainer_module,  # where the trainer calls split_batch
    )

    calls = []
    real_split = trainer_module.split_batch
    monkeypatch.setattr(trainer_module, "split_batch", lambda inputs, budget: calls.append(
        len(pieces := real_split(inputs, budget))) or pieces)
    whole, whole_summary = _train(tiny_model_dir, tmp_path, "whole", [*common, "train.micro_batch_tokens=0"])
    assert calls and set(calls) == {1}
    calls.clear()
    split, split_summary = _train(tiny_model_dir, tmp_path, "split", [*common, "train.micro_batch_tokens=1"])
    assert calls and set(calls) == {2}, "budget 1: every example of a 2-example micro-batch runs alone"
    assert split_summary["train_loss"] == pytest.approx(whole_summary["train_loss"], rel=REORDERED_SUM_RTOL)
    assert split_summary["tokens"] == whole_summary["tokens"] > 0
    assert_same_sgd_training(whole, split)


def test_auto_budget_bounds_cpu_runs_only():
    from chattune.config import load_config
    from chattune.training.speed import CPU_MICRO_BATCH_TOKENS, micro_batch_budget

    cfg = load_config(None, [])
    assert micro_batch_budget(cfg, "cpu") == CPU_MICRO_BATCH_TOKENS
    assert micro_batch_budget(cfg, "cuda") == 0
    assert micro_batch_budget(load_config(None, ["train.micro_batch_tokens=300"]), "cuda") == 300
    adalora = load_config(None, ["lora.method=adalora", "train.micro_batch_tokens=300"])
    assert micro_batch_budget(adalora, "cpu") == 0, "AdaLoRA's penalty is added once per forward"
