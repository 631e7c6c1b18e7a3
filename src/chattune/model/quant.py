"""Quantize the frozen base with bitsandbytes (QLoRA): load settings, training prep, dequantization.

Not here: adapters (adapters.py) and the export merge (exporting/merge.py), which uses `dequantize`.

On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit weight into a CPU layout on its
first eval-mode, no-grad forward. That path rounds the block scales to bf16, is not differentiable
(a training step after an in-training evaluation would lose the gradient through every base layer)
and leaves a weight that `dequantize_4bit` no longer reads correctly. Training and export switch it
off with `keep_standard_4bit_path`; chat and serve keep bitsandbytes' default.
"""

from __future__ import annotations

import importlib.util

from chattune.config import ConfigError, ModelConfig


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def require_bitsandbytes(what: str) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{what} needs bitsandbytes: pip install 'chattune[qlora]'")


def compute_dtype(precision: str):
    """The dtype 4-bit layers dequantize to and multiply in: the training precision."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def bnb_config(model_cfg: ModelConfig, dtype):
    """transformers' BitsAndBytesConfig for model.quantize / quant_type / double_quant."""
    from transformers import BitsAndBytesConfig

    require_bitsandbytes(f"model.quantize={model_cfg.quantize}")
    if model_cfg.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_cfg.quant_type,
        bnb_4bit_use_double_quant=model_cfg.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def keep_standard_4bit_path(model) -> None:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights (see the module docstring)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def prepare_for_training(model, gradient_checkpointing: bool):
    """peft's k-bit recipe for a quantized base; a full-precision model is returned unchanged.

    `prepare_model_for_kbit_training` freezes the base and upcasts its non-quantized weights
    (embeddings, norms, an unquantized head) to fp32; it turns on gradient checkpointing only
    when train.gradient_checkpointing asks for it. (Keeping the frozen embedding and head in bf16
    saved ~200 MB of peak RSS on bench/scale.py's 1.1B model, but the model then mixes dtypes
    outside autocast: the forgetting guard's fp32 hidden states met a bf16 head. Not done.)
    """
    if not is_quantized(model):
        return model
    from peft import prepare_model_for_kbit_training

    keep_standard_4bit_path(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def dequantize(model):
    """The quantized model as a plain fp32 model holding the weights its 4/8-bit layers compute with."""
    import torch

    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            raise RuntimeError("4-bit weights were repacked for CPU inference; call keep_standard_4bit_path first")
    model = model.dequantize(dtype=torch.float32)
    model.is_loaded_in_4bit = model.is_loaded_in_8bit = False  # transformers leaves these set
    return model
