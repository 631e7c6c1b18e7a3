"""chattune: fine-tune chat LLMs with LoRA, then chat with, evaluate, export and serve them.

The public Python API (chattune/api.py) is imported on first use, so `import chattune` and
`chattune --help` stay instant: `chattune.train`, `chattune.load`, `chattune.evaluate`,
`chattune.export`, `chattune.inspect_data`, `chattune.Run`. `%load_ext chattune` adds the
`%%chat` cell magic (chattune/magic.py).
"""

import logging

__version__ = "0.1.0"

__all__ = ["Run", "evaluate", "export", "inspect_data", "load", "load_ipython_extension", "train"]

_API = {"Run", "evaluate", "export", "inspect_data", "load", "train", "resolve_config"}


def __getattr__(name: str):
    if name in _API:
        from chattune import api

        return getattr(api, name)
    raise AttributeError(f"module 'chattune' has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    """`%load_ext chattune`: register the %%chat cell magic."""
    from chattune.magic import register

    register(ipython)


def _drop_hub_kernel_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes, on AVX512-BF16 CPUs, tries to fetch a 4-bit matmul kernel from the hub at import
    and logs a warning when it cannot, on every command even with nothing quantized. chattune never
    downloads at run time; bitsandbytes then uses its own CPU kernel, so the notice is noise."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_hub_kernel_notice)

# One line when a core library (torch, transformers, peft, trl, datasets, accelerate) is outside the
# tested range; importlib.metadata only, never raises (chattune/versions.py says the rule).
from chattune.versions import warn_untested  # noqa: E402

warn_untested()
