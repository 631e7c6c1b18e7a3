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


def prepare_for_training(model, gradient_checkpointing: bool, precision: str = "fp32"):
    """The k-bit training recipe for a quantized base; a full-precision model is returned unchanged.

    peft's `prepare_model_for_kbit_training` freezes the base, upcasts its non-quantized weights
    (embeddings, norms, an unquantized head) to fp32 and, when train.gradient_checkpointing asks
    for it, turns that on. The upcast guards fp16, whose norms overflow; a bf16 run keeps them in
    bf16 (`freeze_keeping_dtype`), as a LoRA run on a bf16 base does and as LLaMA-Factory and
    unsloth do, so the model computes in one dtype inside and outside autocast (the forgetting guard
    runs outside it). Measured on a 4-layer slice of bench/scale.py's 1.1B model (hidden 2048, vocabulary
    49,152), bf16, 2 steps of 128 tokens, AMD EPYC (AVX2): peak RSS 1,889 MB with peft's upcast, 1,293 MB
    kept in bf16, losses equal to 3 digits (bench/README.md). fp16 and fp32 runs keep peft's recipe.
    """
    if not is_quantized(model):
        return model
    keep_standard_4bit_path(model)
    if precision == "bf16":
        return freeze_keeping_dtype(model, gradient_checkpointing)
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def freeze_keeping_dtype(model, gradient_checkpointing: bool):
    """peft's k-bit preparation without its fp32 upcast: every base weight frozen in the dtype it loaded in,
    and with gradient checkpointing, the inputs of the checkpointed layers made to require grad."""
    for param in model.parameters():
        param.requires_grad = False
    if gradient_checkpointing:
        model.enable_input_require_grads()
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()  # transformers 5 renamed it
    return model


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
