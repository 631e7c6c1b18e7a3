"""Training defaults that depend on the model: the LoRA learning rate `train.lr: auto` resolves to.

Two anchors, interpolated as a power law in the parameter count and clamped to them:
- 135M parameters: 2e-3, measured on the quality bench (`python -m bench quality --only chattune
  --seeds 1 --target 3.0 --set train.lr=...`, 128 huanhuan rows, batch 4 x accumulation 4, ~110 s
  of training each, AMD EPYC Zen 5, bf16; bench/README.md): held-out loss from 3.129 to 2.846 at
  1e-4 (seed 000's value), 2.595 at 1e-3 and 2.556 at 2e-3 after ~110 s; 2e-3 was lowest from
  the second scored point on. 4e-3 and above were not tried.
- 7B parameters: 2e-4, the LoRA/QLoRA learning rate the QLoRA paper and unsloth use for 7B
  chat models (seed 000 used 1e-4). Not measured here: no 7B model fits this project's CPUs.
In between (0.5B: ~9e-4, 1.5B: ~5e-4) the rule is an interpolation, not a measurement.
This module picks numbers; it trains nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chattune.config import ModelConfig, RunConfig

SMALL_MODEL = (135e6, 2e-3)  # (parameters, learning rate): measured
LARGE_MODEL = (7e9, 2e-4)  # literature value, not measured here


def auto_learning_rate(parameters: int) -> float:
    """The learning rate for a LoRA on a model of this many parameters (see the module docstring)."""
    (small_n, small_lr), (large_n, large_lr) = SMALL_MODEL, LARGE_MODEL
    slope = math.log(large_lr / small_lr) / math.log(large_n / small_n)
    lr = small_lr * (max(parameters, 1) / small_n) ** slope
    return float(f"{min(max(lr, large_lr), small_lr):.2g}")


def base_parameter_count(model_cfg: ModelConfig) -> int:
    """Parameters of the base model, counted on its meta-device skeleton (no weights are read)."""
    from chattune.model.load import model_skeleton

    return sum(p.numel() for p in model_skeleton(model_cfg).parameters())


def learning_rate(cfg: RunConfig) -> tuple[float, str]:
    """(the learning rate this run trains with, where it came from) for the run's log and summary."""
    if cfg.train.lr != "auto":
        return float(cfg.train.lr), "train.lr"
    parameters = base_parameter_count(cfg.model)
    lr = auto_learning_rate(parameters)
    return lr, f"train.lr auto for {parameters / 1e6:,.0f}M parameters"
