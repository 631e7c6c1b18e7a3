"""chattune: fine-tune chat LLMs with LoRA, then chat with, evaluate, export and serve them."""

import logging

__version__ = "0.1.0"


def _drop_hub_kernel_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes, on AVX512-BF16 CPUs, tries to fetch a 4-bit matmul kernel from the hub at import
    and logs a warning when it cannot, on every command even with nothing quantized. chattune never
    downloads at run time; bitsandbytes then uses its own CPU kernel, so the notice is noise."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_hub_kernel_notice)
