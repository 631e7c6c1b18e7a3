"""train/memory.py: with the mmap threshold fixed, freed activation-sized tensors leave the heap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chattune.train.memory import _glibc

PROBE = """
import ctypes, json, sys
import torch
from chattune.train.memory import _glibc, release_freed_tensors

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


def test_config_escape_hatch_validates():
    from chattune.config import ConfigError, load_config

    assert load_config(None, []).train.mmap_threshold_kb == 0  # opt-in: it costs tokens/s
    assert load_config(None, ["train.mmap_threshold_kb=1024"]).train.mmap_threshold_kb == 1024
    with pytest.raises(ConfigError, match="mmap_threshold_kb"):
        load_config(None, ["train.mmap_threshold_kb=-1"])
