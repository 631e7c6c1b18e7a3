"""Data: files and built-in sets -> conversations -> token ids with trained-token labels; `prepare` is the entry point."""

from chattune.data.prepare import Prepared, prepare

__all__ = ["Prepared", "prepare"]
