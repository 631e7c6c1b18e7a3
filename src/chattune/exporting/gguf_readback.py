"""The GGUF gate's read-back in little memory: merged model freed first, file pages released.

The gate compares the file loaded back with transformers against base + adapter measured before
the merge, so the merged fp32 model is freed once the file is written (`release_merged`) and
never sits beside the loaded-back one: on Qwen2.5-0.5B (2.5 GB of fp32 weights) the two side by
side made a q8_0 export peak at 7.1 GB RSS. --gguf-type auto merges again only after a refused
type (`merged_again`).

transformers' GGUF loader maps the file and dequantizes every tensor from that map into one dict
of fp32 tensors, then builds the model around them. A file page once read stays in the process's
RSS for as long as the map is open, so the whole file (676 MB for Qwen2.5-0.5B in q8_0) sat beside
the dequantized model. Here each tensor's pages are handed back as soon as it is dequantized
(MADV_DONTNEED on the read-only map: a clean file page is read again from the page cache if it is
touched again), so what transformers builds is unchanged and only its map's residency goes.
"""

from __future__ import annotations

import contextlib
import mmap
from pathlib import Path

from chattune.exporting.merge import load_run, merge
from chattune.training.memory import trim_heap


def release_merged(loaded) -> None:
    """Drop the merged model (its only reference: `loaded.model`) and hand its pages back."""
    import gc

    loaded.model = None
    gc.collect()
    trim_heap()


def merged_again(loaded, console) -> None:
    """The merged model back where `release_merged` dropped it: the run loaded and merged again
    (the same load and merge, the same weights); nothing when the model is still there."""
    if loaded.model is not None:
        return
    console.print("merging again for the next type (the merged model was freed to read the "
                  "refused file back)", highlight=False)
    again = load_run(loaded.run.path)
    merge(again)
    loaded.model = again.model


def load_gguf(folder: Path, name: str):
    """A GGUF file as (fp32 transformers model, tokenizer), the way `from_pretrained` reads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with pages_released_after_dequantizing():
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name,
                                                     dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


@contextlib.contextmanager
def pages_released_after_dequantizing():
    """While open, gguf-py's `dequantize` (which transformers imports when it loads a GGUF) hands
    the file pages of the tensor it just read back to the kernel; its result is the same."""
    import gguf

    original = gguf.dequantize

    def dequantize(data, qtype):
        result = original(data, qtype)
        release_file_pages(data)
        return result

    gguf.dequantize = dequantize
    try:
        yield
    finally:
        gguf.dequantize = original


def release_file_pages(array) -> bool:
    """Drop the resident pages of the read-only file map under `array` (a np.memmap view, as
    GGUFReader hands out); True if it did. Anything else (a writable or private map, a plain
    array, a platform without madvise) is left alone."""
    mapping = getattr(array, "_mmap", None)
    if mapping is None or getattr(array, "mode", None) != "r" or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    mapping.madvise(mmap.MADV_DONTNEED)
    return True
