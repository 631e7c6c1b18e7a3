"""Keep a training or export process's resident memory near what it uses: freed tensors go back to the OS.

glibc serves allocations below its mmap threshold from the heap, and that threshold grows
(up to 32 MiB) each time a large block is freed. Training tensors are activation-sized
(0.1-10 MiB) and change size every step (packed rows differ in length), so the heap
fragments and RSS climbs while the live tensors stay the same: on SmolLM2-135M (fp32,
4 examples per micro-step) RSS went 2.1 -> 2.9 GB in 6 steps. A fixed threshold gives
each larger tensor its own mapping, unmapped when freed. It is a trade, so LoRA keeps glibc's
default (train.mmap_threshold_kb: auto; QLoRA and export fix it, below): 1024 KiB cut that peak RSS
3.05 -> 2.48 GB for 10% fewer tokens/s, 128 KiB to 2.23 GB for 24% fewer (page faults);
with 2 examples per micro-step it made no difference (bench/README.md). glibc only.

bound_allocator_caches() is on by default on CPUs: one glibc malloc arena (torch's threads
otherwise each fragment their own) and a 64-entry oneDNN primitive cache (bf16 matmuls run
through oneDNN, every new packed length is a new primitive, and the default keeps 1024).
Measured on the quality bench (bench/README.md; Zen 5, bf16, seed 0, 24 steps): peak RSS
2706 MB with neither; cache 64 alone 2340; one arena and cache 64: 2144 (env) / 2126 (set
here), time to target 7-9 s and final loss as before; cache 32: 2087, the same speed; cache
16: 2010 but the first step 2x slower (primitives rebuilt within a step), so 64 leaves room
for models with more distinct matmul shapes. The user's MALLOC_ARENA_MAX /
ONEDNN_PRIMITIVE_CACHE_CAPACITY win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

EXPORT_MMAP_THRESHOLD_KB = 1024  # `chattune export`'s process: see release_freed_tensors
QUANTIZED_MMAP_THRESHOLD_KB = 1024  # train.mmap_threshold_kb=auto with model.quantize: see threshold_for
M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
M_ARENA_MAX = -8
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"  # read when oneDNN builds its first primitive
ONEDNN_CACHE_CAPACITY = 64  # 0 measured 4x slower (every matmul rebuilds its primitive)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def release_freed_tensors(threshold_kb: int) -> bool:
    """Fix glibc's mmap threshold at `threshold_kb` KiB (0: leave it); True if it was set.

    `chattune export` sets EXPORT_MMAP_THRESHOLD_KB for its whole process: its fidelity gate runs a
    few large forward passes (fp32 logits over the vocabulary, weights upcast a module at a time) whose
    freed blocks otherwise stay in the heap. On bench/scale.py's 1.1B bf16 export, the gate's
    measurement of the merged model peaked at 3,094 MB with glibc's default and 2,628 MB with 1024 KiB,
    in the same time (AMD EPYC, AVX2; one arena as well changed nothing more). It is a process-wide
    setting, so the Python API's export leaves it to the caller.
    """
    libc = _glibc()
    if threshold_kb <= 0 or libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_kb * 1024))


def threshold_for(setting, quantized: bool) -> int:
    """train.mmap_threshold_kb resolved: `auto` fixes it for a quantized base only, whose run chose memory
    over speed. On bench/scale.py's 1.1B bf16 model in 4-bit (fp32 compute, AMD EPYC AVX2, 2 steps), 1024 KiB
    cut the peak RSS from 2,525 to 2,283 MB (loading: 2,319 -> 2,016 MB, the shards' pread buffers no longer
    kept in the heap); the same losses."""
    if setting != "auto":
        return setting
    return QUANTIZED_MMAP_THRESHOLD_KB if quantized else 0


def bound_allocator_caches() -> dict[str, int]:
    """One malloc arena and a bounded oneDNN primitive cache, unless the environment chose; what was set."""
    bounded = {}
    if ONEDNN_CACHE_ENV not in os.environ:
        os.environ[ONEDNN_CACHE_ENV] = str(ONEDNN_CACHE_CAPACITY)
        bounded["onednn_primitive_cache"] = ONEDNN_CACHE_CAPACITY
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ and libc.mallopt(M_ARENA_MAX, 1):
        bounded["malloc_arenas"] = 1
    return bounded


def trim_heap() -> bool:
    """Hand the heap's free pages back to the OS now (glibc malloc_trim); True if any were.

    Called once after a quantized base loads: the shards read for it (model.load.shards_read_not_mapped)
    leave freed buffers in the heap. On bench/scale.py's 1.1B bf16 model in 4-bit, RSS after loading
    went 1,560 -> 1,272 MB (Zen 5).
    """
    libc = _glibc()
    return bool(libc is not None and hasattr(libc, "malloc_trim") and libc.malloc_trim(0))
