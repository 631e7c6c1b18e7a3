"""Shared settings of the resume tests: the tiny run's config, its saved adapter and logged losses."""

from __future__ import annotations

from pathlib import Path

from chattune import rundir
from chattune.config import load_config

# 16 examples, 4 per optimizer step: an epoch is 4 steps, so 6 steps cross an epoch boundary.
# lora.dropout stays on (0.1): the resumed run must restore the dropout RNG too.
TINY = ["name=tiny", "data.size=16", "train.batch_size=2", "train.grad_accum=2", "train.lr=1e-2",
        "train.precision=fp32", "train.device=cpu", "lora.dropout=0.1"]


def resume_cfg(tiny_model_dir, run_dir, *extra):
    return load_config(None, [f"model.name={tiny_model_dir}", f"run_dir={run_dir}", *TINY, *extra])


def saved_adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / rundir.ADAPTER / "adapter_model.safetensors"))


def logged_losses(run_dir: Path) -> dict[int, float]:
    records = [r for r in rundir.RunDir(run_dir).metrics() if "loss" in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records}
