"""Check the CLI's numeric flags against their ranges before a command does any work.

argparse checks a flag's type; this checks its range (a batch size of 0, a port past 65535, a
negative temperature), so a bad flag is one ConfigError line before any model loads, not a
library's error after it. Flags are looked up by name on the parsed arguments; a command without
one simply has no such attribute.
"""

from __future__ import annotations

import math
from argparse import Namespace

# attribute -> (flag, lowest allowed, highest allowed or None, lowest excluded)
RANGES = {
    "nproc": ("--nproc", 1, None, False),
    "n": ("--n", 0, None, False),
    "max_new_tokens": ("--max-new-tokens", 1, None, False),
    "batch_size": ("--batch-size", 1, None, False),
    "max_tokens": ("--max-tokens", 1, None, False),
    "max_queue": ("--max-queue", 1, None, False),
    "port": ("--port", 0, 65535, False),
    "temperature": ("--temperature", 0.0, None, False),
    "top_p": ("--top-p", 0.0, 1.0, True),
    "tolerance": ("--tolerance", 0.0, None, True),
}
INT_MAX = 2**31 - 1  # counts larger than this overflow the libraries they are passed to


def check_flags(args: Namespace) -> None:
    """Raise ConfigError naming the first flag of `args` out of its range."""
    from chattune.config import ConfigError

    for name, (flag, low, high, open_low) in RANGES.items():
        value = getattr(args, name, None)
        if value is None or isinstance(value, bool):
            continue
        if problem := _out_of_range(value, low, high, open_low):
            raise ConfigError(f"{flag} {value}: {problem}")
    if getattr(args, "allow_data_change", False) and not getattr(args, "resume", None):
        raise ConfigError("--allow-data-change continues a run on changed data: "
                          "give it with --resume")


def _out_of_range(value, low, high, open_low: bool) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if open_low and value <= low:
        return f"must be greater than {low}" + (f" and at most {high}" if high is not None else "")
    if not open_low and value < low:
        return f"must be at least {low}" + (f" and at most {high}" if high is not None else "")
    if high is not None and value > high:
        return f"must be at most {high}"
    if isinstance(value, int) and value > INT_MAX:
        return f"must be at most {INT_MAX}"
    return None
