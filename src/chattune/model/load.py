"""Load the tokenizer and base model for a config; pick device and precision.

Pad-token fix: a tokenizer without a pad token gets its EOS as pad. That is safe here
because labels come from the template's assistant spans, never from pad ids.
"""

from __future__ import annotations

import contextlib
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
    """The base model in `dtype` (fp32 by default), its weights read straight onto `device`; with
    model.quantize, its linear layers in 4/8-bit (bitsandbytes) computing in `compute_dtype` (default `dtype`)."""
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(model_cfg.name, model_cfg.revision)
    check_weights(source)
    dtype = dtype or torch.float32
    quantized = {}
    if getattr(model_cfg, "quantize", "none") != "none":
        from chattune.model.quant import bnb_config

        quantized = {"quantization_config": bnb_config(model_cfg, compute_dtype or dtype)}
    placement = weight_placement(device)
    with shards_read_not_mapped() if quantized or converts_dtype(source, dtype) else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
            dtype=dtype,
            **quantized,
            **placement,
        )
    return model if placement else model.to(device)  # ZeRO-3 only: it partitions the weights itself


def converts_dtype(source: str, dtype) -> bool:
    """Whether loading `source` in `dtype` changes the stored bytes (a bf16 checkpoint loaded in fp32); True when
    the stored dtype cannot be read from safetensors headers."""
    from chattune.model.checkpoint import stored_dtype

    return stored_dtype(source) != dtype


@contextlib.contextmanager
def shards_read_not_mapped():
    """Read safetensors shards with pread instead of mmap while a model loads quantized or converted.

    transformers maps the shards (mmap). A weight loaded in its stored dtype stays a view of the mapping,
    whose pages come in as they are used; a weight that is converted (to fp32, or quantized by bitsandbytes)
    is copied, but every page it was read from stays resident until the load ends, and so do the pages
    behind small tensors kept as views (norms). Measured on the 1.1B bf16 model of bench/scale.py (AMD EPYC):
    loading it in fp32 peaked at 7,047 MB RSS with mmap and 4,990 MB with pread (the model alone: ~4,800);
    in 4-bit, 2,929 MB with mmap and 1,992 MB with pread (Zen 5). pread is transformers' own choice on
    Windows (modeling_utils picks the backend of `safe_open` by platform); here it is passed to that same
    call, for this load only. A load in the stored dtype keeps mmap: in bf16 that model was 361 MB
    resident after loading, against 2,734 MB read by pread.
    """
    import transformers.modeling_utils as modeling_utils

    mapped = modeling_utils.safe_open

    def by_pread(*args, **kwargs):
        return mapped(*args, **{**kwargs, "backend": "pread"})

    modeling_utils.safe_open = by_pread
    try:
        yield
    finally:
        modeling_utils.safe_open = mapped


def weight_placement(device: str) -> dict:
    """from_pretrained's arguments that read each weight straight onto `device`, without a full copy in CPU
    memory first. transformers 5 builds the model on the meta device and, given a device_map, places each
    tensor as it is read (modeling_utils.from_pretrained); it ignores low_cpu_mem_usage, kept for the
    record. A str device_map "cuda" means cuda:LOCAL_RANK (check_and_set_device_map), so each torchrun
    process loads onto its own GPU. DeepSpeed ZeRO-3 refuses a device_map: none there ({})."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return {}
    return {"device_map": device, "low_cpu_mem_usage": True}


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


INFERENCE_DTYPES = ("auto", "fp32", "bf16", "fp16")  # chat / predict / eval / serve --dtype


def torch_dtype(precision: str):
    """fp32 / bf16 / fp16 as a torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def trained_precision(run_cfg, recorded: str | None = None) -> str:
    """What a run's forward pass computed in: `recorded` (summary.json's precision, train.precision as it
    resolved on the training device), else train.precision ('auto' when that is all there is). bf16 base
    weights (train.base_dtype=bf16) make an fp32 run's forward bf16."""
    precision = recorded or run_cfg.train.precision
    if precision == "fp32" and run_cfg.train.base_dtype == "bf16":
        return "bf16"
    return precision


def precision_on_device(precision: str, device: str) -> str:
    """`precision` where `device` runs it natively, else fp32: bf16 on a GPU without bf16 or on a CPU
    without AMX/AVX512-BF16 (emulated there: ~85x slower), fp16 on any CPU; 'auto' is pick_precision's."""
    import torch

    if precision == "auto":
        return pick_precision("auto", device)
    if precision == "fp32":
        return "fp32"
    if device.split(":")[0] == "cuda":
        return "fp32" if precision == "bf16" and not torch.cuda.is_bf16_supported() else precision
    return "bf16" if precision == "bf16" and cpu_has_fast_bf16() else "fp32"


def inference_precision(run_cfg, device: str, override: str | None = None, recorded: str | None = None) -> str:
    """The precision chat, predict, eval and serve load in: `override` (--dtype) unless it is auto.

    On CUDA: for a run (`run_cfg`, `recorded` as trained_precision reads them) the one it trained in
    where the GPU runs it natively, else fp32; for a plain model (`run_cfg` None) bf16/fp16 as
    pick_precision says. On a CPU: fp32, where the fidelity of bf16 does not hold. Measured on seed
    004's test (tests/test_seeds.py: SmolLM2-135M trained 6 steps in bf16, Zen 5): scored in bf16 the
    held-out loss went 3.2948 -> 3.2316 (-1.9%), in fp32 3.2960 -> 3.1705 (-3.8%); pure bf16
    arithmetic rounds away much of a short-trained adapter's small change. `--dtype bf16` still loads
    bf16 on a CPU, half the memory, for a model whose fidelity the user has checked.
    """
    if override and override != "auto":
        if override not in INFERENCE_DTYPES:
            raise ValueError(f"dtype {override!r}: choose one of {', '.join(INFERENCE_DTYPES)}")
        return override
    if device.split(":")[0] != "cuda":
        return "fp32"
    if run_cfg is None:
        return pick_precision("auto", device)
    return precision_on_device(trained_precision(run_cfg, recorded), device)


def inference_dtype(run_cfg, device: str, override: str | None = None, recorded: str | None = None):
    """inference_precision as a torch dtype."""
    return torch_dtype(inference_precision(run_cfg, device, override, recorded))


def slow_precision_warning(precision: str, device: str, setting: str = "train.precision") -> str | None:
    """A warning when bf16/fp16 is forced (by `setting`) on a CPU that only emulates it (measured ~100x slower)."""
    fast = {"bf16": cpu_has_fast_bf16, "fp16": cpu_has_fast_fp16}.get(precision)
    if device != "cpu" or fast is None or fast():
        return None
    units = "AMX/AVX512-BF16" if precision == "bf16" else "AMX-FP16"
    return (f"{setting}={precision} on a CPU without {units}: {precision} matmuls are emulated here "
            f"(a bf16 training step ran ~100x slower than fp32 on an AVX2-only CPU); {setting}=auto picks fp32")


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
