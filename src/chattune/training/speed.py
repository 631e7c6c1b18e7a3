"""Speed settings of a run: base-weight dtype, the packed/padded collator, the loss path.

Each lever here is measured in bench/README.md and has a config escape hatch
(train.packing, train.skip_prompt_logits, train.base_dtype, train.compile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chattune.data.collate import make_collator

if TYPE_CHECKING:
    from chattune.config import RunConfig, TrainConfig


def base_weight_dtype(train_cfg: TrainConfig, precision: str):
    """Frozen base weights in bf16 when training in bf16 (LoRA weights stay fp32 via peft)."""
    import torch

    choice = train_cfg.base_dtype
    if choice == "auto":
        choice = "bf16" if precision == "bf16" else "fp32"
    return torch.bfloat16 if choice == "bf16" else torch.float32


def collator_for(train_cfg: TrainConfig, tokenizer, model):
    """Packing also switches SDPA models to per-example attention (no dense [L, L] mask)."""
    if train_cfg.packing:
        from chattune.model.attention import use_packed_attention

        use_packed_attention(model.get_base_model() if hasattr(model, "get_base_model") else model)
    return make_collator(train_cfg.packing, tokenizer.pad_token_id)


def lora_in_autocast_dtype(model, precision: str) -> int:
    """Let LoRA layers compute in the autocast dtype instead of copying each input to fp32.

    peft casts every adapter input to the (fp32) LoRA weight dtype; under bf16/fp16
    autocast the matmul casts it straight back, so each of the 7 adapted inputs per layer
    was copied twice and kept once more for backward. With the cast off, autocast casts
    the tiny LoRA weights instead; the fp32 master weights and their gradients are
    unchanged. Returns the number of layers switched (0 in fp32).

    peft.helpers.disable_input_dtype_casting (peft 0.21) sets the same flag on the same layers
    (measured on a tiny Llama: 14 of 14) but as a context manager that restores it on exit; here
    the switch lasts from setup_model through the Trainer's run until without_training_autocast,
    and tests/test_performance.py::test_lora_computes_in_autocast_dtype_without_changing_the_result
    checks the count returned.
    """
    if precision not in ("bf16", "fp16"):
        return 0
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, "cast_input_dtype_enabled")]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def without_training_autocast(model, precision: str):
    """The trained model as loading it would give it: no bf16/fp16 autocast, LoRA inputs cast again.

    The Trainer (accelerate) wraps `model.forward` in autocast for bf16/fp16 and keeps it there, so
    the model train() hands back kept scoring in bf16: on the quality bench's 96 rows x 2 epochs
    (AMD EPYC Zen 4) its held-out loss read 3.1134, while the same adapter on a freshly loaded fp32
    base reads 3.0533 (fp32 training: 3.0525): the "bf16 learns less" of issue 14 was bf16 scoring.
    """
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    if precision in ("bf16", "fp16"):
        from peft.tuners.lora import LoraLayer

        for layer in model.modules():
            if isinstance(layer, LoraLayer) and hasattr(layer, "cast_input_dtype_enabled"):
                layer.cast_input_dtype_enabled = True
    return model


CPU_MICRO_BATCH_TOKENS = 384  # fastest and leanest measured on the EPYC (bench/README.md)


def micro_batch_budget(cfg: RunConfig, device: str) -> int:
    """Tokens per forward pass (0: no limit): `auto` bounds CPU runs, where RAM is the limit; not AdaLoRA.

    AdaLoRA adds its orthogonality penalty to every forward's loss, so pieces would count it twice.
    """
    budget = cfg.train.micro_batch_tokens
    if budget == "auto":
        budget = CPU_MICRO_BATCH_TOKENS if device == "cpu" else 0
    return 0 if cfg.lora.method == "adalora" else budget


def batch_tokens(inputs: dict) -> int:
    """Real (non-pad) tokens in a batch: packed batches have no padding and no attention_mask."""
    mask = inputs.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
