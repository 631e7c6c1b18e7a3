"""Read a local safetensors checkpoint's headers: each tensor's shape and stored type, the dominant dtype.

Headers only: no tensor data is read. Not here: finding the files of a hub id (models.py resolves it
to a folder first) and loading weights (load.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# safetensors dtype name -> (bytes per value, torch dtype name)
FLOAT_KINDS = {"F64": (8, "float64"), "F32": (4, "float32"), "BF16": (2, "bfloat16"), "F16": (2, "float16")}


@dataclass
class Headers:
    """Every stored tensor's shape and safetensors dtype name (F32, BF16, ...), over all shards."""

    shapes: dict[str, list[int]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def dominant_dtype(self):
        """The torch dtype most floating-point bytes are stored in; None when no float tensor is stored."""
        import torch

        sizes: dict[str, int] = {}
        for key, kind in self.kinds.items():
            if kind in FLOAT_KINDS:
                sizes[kind] = sizes.get(kind, 0) + FLOAT_KINDS[kind][0] * math.prod(self.shapes[key])
        return getattr(torch, FLOAT_KINDS[max(sizes, key=sizes.get)][1]) if sizes else None


def local_shards(folder: Path) -> list[str]:
    """The safetensors file names of a local model folder (from its index, else model.safetensors); [] if none."""
    index = folder / INDEX
    if index.is_file():
        return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    return [SINGLE] if (folder / SINGLE).is_file() else []


def read_headers(folder: Path, shards: list[str]) -> Headers:
    """Shape and stored type of every tensor in `shards` (file names inside `folder`)."""
    from safetensors import safe_open

    headers = Headers()
    for name in shards:
        with safe_open(str(folder / name), framework="pt") as tensors:
            keys = tensors.keys()  # safe_open is not iterable itself
            for key in keys:
                piece = tensors.get_slice(key)
                headers.shapes[key], headers.kinds[key] = piece.get_shape(), piece.get_dtype()
    return headers


def stored_dtype(source: str):
    """The dtype most of a local folder's safetensors bytes are in; None for a non-folder, other formats or
    unreadable headers (the caller then assumes the load converts)."""
    from safetensors import SafetensorError

    folder = Path(source)
    if not folder.is_dir():
        return None
    try:
        shards = local_shards(folder)
        return read_headers(folder, shards).dominant_dtype() if shards else None
    except (OSError, ValueError, KeyError, SafetensorError):
        return None
