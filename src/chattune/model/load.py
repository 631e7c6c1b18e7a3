"""Load the tokenizer and base model for a config; pick device and precision.

Pad-token fix: a tokenizer without a pad token gets its EOS as pad. That is safe here
because labels come from the template's assistant spans, never from pad ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chattune.models import ModelSourceError, check_weights, resolve_model

if TYPE_CHECKING:
    from chattune.config import ModelConfig


def load_tokenizer(model_cfg: ModelConfig):
    """The tokenizer of `model.tokenizer` if set (seed 003 borrows one), else of the model."""
    borrowed = Path(model_cfg.tokenizer).expanduser() if model_cfg.tokenizer else None
    if borrowed and any((borrowed / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return open_tokenizer(str(borrowed), model_cfg.revision, model_cfg.trust_remote_code)  # no weights needed
    source = resolve_model(model_cfg.tokenizer or model_cfg.name, model_cfg.revision)
    return open_tokenizer(source, model_cfg.revision, model_cfg.trust_remote_code)


def open_tokenizer(source: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as err:
        if not Path(source).is_dir():
            raise
        raise ModelSourceError(
            f"{source}: no usable tokenizer in this folder (tokenizer.json / tokenizer_config.json; "
            f"{type(err).__name__}: {str(err).splitlines()[0][:200]}); copy the model's tokenizer files "
            "there, or borrow one with model.tokenizer=PATH") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_base_model(model_cfg: ModelConfig, dtype=None, device: str = "cpu", compute_dtype=None):
    """The base model in `dtype` (fp32 by default); with model.quantize, its linear layers in
    4/8-bit (bitsandbytes) computing in `compute_dtype` (default `dtype`)."""
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(model_cfg.name, model_cfg.revision)
    check_weights(source)
    dtype = dtype or torch.float32
    quantized = {}
    if getattr(model_cfg, "quantize", "none") != "none":
        from chattune.model.quant import bnb_config

        quantized = {"quantization_config": bnb_config(model_cfg, compute_dtype or dtype), "device_map": {"": device}}
    model = AutoModelForCausalLM.from_pretrained(
        source,
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        dtype=dtype,
        **quantized,
    )
    return model if quantized else model.to(device)  # bitsandbytes places quantized weights itself


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 make bf16 matmuls several times faster than fp32 on CPU."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def cpu_has_fast_fp16() -> bool:
    """AMX-FP16 (Granite Rapids and later) runs fp16 matmuls natively; elsewhere CPU fp16 is emulated."""
    import torch

    try:
        return bool(torch.cpu._is_amx_fp16_supported())
    except AttributeError:
        return False


def pick_precision(preference: str, device: str) -> str:
    """'auto' -> bf16 where the hardware runs it fast, else fp32."""
    import torch

    if preference != "auto":
        return preference
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def slow_precision_warning(precision: str, device: str) -> str | None:
    """A warning when bf16/fp16 is forced on a CPU that only emulates it (measured ~100x slower)."""
    fast = {"bf16": cpu_has_fast_bf16, "fp16": cpu_has_fast_fp16}.get(precision)
    if device != "cpu" or fast is None or fast():
        return None
    units = "AMX/AVX512-BF16" if precision == "bf16" else "AMX-FP16"
    return (f"train.precision={precision} on a CPU without {units}: {precision} matmuls are emulated here "
            "(a bf16 training step ran ~100x slower than fp32 on an AVX2-only CPU); train.precision=auto picks fp32")


def model_skeleton(model_cfg: ModelConfig):
    """The model's module tree on the meta device, read from its config without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model(model_cfg.name, model_cfg.revision)
    config = AutoConfig.from_pretrained(
        source, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
