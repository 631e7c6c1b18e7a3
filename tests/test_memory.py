"""training/memory.py: with the mmap threshold fixed, freed activation-sized tensors leave the heap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chattune.training.memory import _glibc

PROBE = """
import ctypes, json, sys
import torch
from chattune.training.memory import _glibc, release_freed_tensors

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = _glibc()
libc.mallinfo2.restype = MallInfo2
was_set = release_freed_tensors(int(sys.argv[1]))
big = torch.empty(4 << 20, dtype=torch.uint8)  # freeing a 4 MiB mapping raises glibc's dynamic threshold
del big
before = libc.mallinfo2().hblkhd
activation = torch.empty(1 << 20, dtype=torch.uint8)  # an activation-sized tensor: 1 MiB
print(json.dumps({"was_set": was_set, "mapped_growth": libc.mallinfo2().hblkhd - before}))
"""


def _probe(threshold_kb: int) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(threshold_kb)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt only (Linux); a no-op elsewhere")
def test_fixed_threshold_gives_activations_their_own_mapping():
    fixed = _probe(128)
    assert fixed["was_set"] is True
    assert fixed["mapped_growth"] >= 1 << 20  # its own mapping: returned to the OS when freed
    default = _probe(0)
    assert default["was_set"] is False
    assert default["mapped_growth"] == 0  # glibc's default put it on the heap, where freed space stays in RSS


def test_the_export_command_fixes_the_threshold_before_it_exports(monkeypatch):
    """`chattune export` only (a process that ends with it); the Python API leaves the caller's allocator alone."""
    from chattune import api
    from chattune.cli import main
    from chattune.training import memory

    calls = []
    monkeypatch.setattr(memory, "release_freed_tensors", lambda kb: calls.append(("threshold", kb)))
    monkeypatch.setattr(api, "export", lambda *args, **kwargs: calls.append(("export", args[:2])))
    assert main(["export", "runs/some-run", "--out", "exports/x"]) == 0
    assert calls == [("threshold", memory.EXPORT_MMAP_THRESHOLD_KB), ("export", ("runs/some-run", "exports/x"))]
    assert memory.EXPORT_MMAP_THRESHOLD_KB == 1024


def test_config_escape_hatch_validates():
    from chattune.config import ConfigError, load_config
    from chattune.training.memory import threshold_for

    assert load_config(None, []).train.mmap_threshold_kb == "auto"
    assert threshold_for("auto", quantized=False) == 0, "it costs LoRA tokens/s: glibc's default"
    assert threshold_for("auto", quantized=True) == 1024, "QLoRA chose memory"
    assert threshold_for(0, quantized=True) == 0 and threshold_for(512, quantized=False) == 512
    assert load_config(None, ["train.mmap_threshold_kb=1024"]).train.mmap_threshold_kb == 1024
    with pytest.raises(ConfigError, match="mmap_threshold_kb"):
        load_config(None, ["train.mmap_threshold_kb=-1"])


ARENAS = """
import ctypes, threading
from chattune.training.memory import _glibc, bound_allocator_caches
import sys
if sys.argv[1] == "bound":
    bound_allocator_caches()
def allocate():
    blocks = [ctypes.create_string_buffer(256) for _ in range(200)]
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
_glibc().malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True, env=env)
    return done.stderr.count("Arena ")


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt only (Linux); a no-op elsewhere")
def test_bounded_allocator_keeps_threads_in_one_arena():
    assert _arenas("free") > 1  # glibc's default: a thread that finds the main arena busy makes its own
    assert _arenas("bound") == 1


ONEDNN = """
import torch
from chattune.training.memory import ONEDNN_CACHE_CAPACITY, bound_allocator_caches
bound_allocator_caches()
w = torch.randn(16, 16, dtype=torch.bfloat16)
for rows in [*range(1, ONEDNN_CACHE_CAPACITY + 2), 1]:  # one more shape than the cache holds, then the first again
    torch.randn(rows, 16, dtype=torch.bfloat16) @ w
"""


def test_onednn_primitive_cache_is_bounded_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}  # oneDNN logs to stdout
    done = subprocess.run([sys.executable, "-c", ONEDNN], capture_output=True, text=True, check=True,
                          env={**env, "ONEDNN_VERBOSE": "profile_create"})
    creates = [line for line in (done.stdout + done.stderr).splitlines() if ",create:cache_" in line and ",matmul," in line]
    if not creates:
        pytest.skip("torch does not run bf16 matmuls through oneDNN on this CPU: no primitive cache to bound")
    assert ",create:cache_miss," in creates[-1], "the first shape was evicted: the cache holds 64, not 1024"
    from chattune.training import memory

    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "2048"  # the user's choice stays
    try:
        assert "onednn_primitive_cache" not in memory.bound_allocator_caches()
        assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "2048"
    finally:
        del os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
