"""Merge a LoRA adapter into its base one safetensors shard at a time, without loading the model.

Each shard of the base is read, the delta of every adapted weight in it is added (computed in
fp32 as peft's merge does: W + (B @ A) * scaling, DoRA rescaling each row by magnitude / ||W + dW||),
stored in the base tensor's dtype (or `dtype`), written under the same file name, and freed before
the next shard is read: peak memory is one shard's tensors, the bytes save_file serialises them
to, and the adapter. The index file is rewritten with the output's sizes. What this cannot merge
exactly (AdaLoRA, LoRA on embeddings, biases, fan_in_fan_out layers, a weight not stored under
its module name or not as a plain float, a quantized checkpoint, a tied embedding, .bin weights)
raises NotShardable with the reason; the caller merges the whole model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from chattune.adapter_base import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from chattune.model.checkpoint import FLOAT_KINDS, INDEX, SINGLE, read_headers

_KEY = re.compile(r"base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)")
# adapter_config.json settings whose merge is not W + (B @ A) * scaling on `<module>.weight`
_UNSUPPORTED = ("fan_in_fan_out", "lora_bias", "layer_replication", "target_parameters",
                "trainable_token_indices", "modules_to_save", "alora_invocation_tokens")


class NotShardable(Exception):
    """This base + adapter cannot be merged shard by shard exactly; the message says why."""


@dataclass
class Delta:
    """One adapted weight: LoRA A [r, in], B [out, r], scaling, DoRA magnitude [out] or None."""

    a: object
    b: object
    scaling: float
    magnitude: object = None


@dataclass
class ShardPlan:
    """The base's shards (file names in `folder`) and the delta for each adapted weight name."""

    folder: Path
    shards: list[str]
    indexed: bool  # the base has model.safetensors.index.json (the output gets one too)
    deltas: dict[str, Delta] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)  # every stored tensor's shape
    kinds: dict[str, str] = field(default_factory=dict)  # and its safetensors dtype (F32, BF16, ...)
    dtype: object = None  # the base's dtype: the one most floating-point bytes are stored in


def base_shards(source: str, revision: str | None = None) -> tuple[Path, list[str], bool]:
    """(folder, shard names, indexed) of the base's safetensors weights, local or in the hub cache."""
    index = _base_file(source, INDEX, revision)
    if index is not None:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
        for name in names:
            _base_file(source, name, revision, required=True)
        return index.parent, names, True
    single = _base_file(source, SINGLE, revision)
    if single is None:
        raise NotShardable(f"{source}: no {SINGLE} or {INDEX} (only safetensors bases merge shard by shard)")
    return single.parent, [SINGLE], False


def _base_file(source: str, name: str, revision: str | None, required: bool = False) -> Path | None:
    folder = Path(source).expanduser()
    if folder.is_dir():
        found = folder / name if (folder / name).is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, name, revision=revision)
        found = Path(cached) if isinstance(cached, str) else None  # the base was loaded, so it is cached
    if found is None and required:
        raise NotShardable(f"{source}: {name} is named in {INDEX} but missing")
    return found


def read_adapter(adapter_dir: Path) -> dict[str, Delta]:
    """Module name -> Delta from a peft LoRA/DoRA/rsLoRA adapter; NotShardable for anything else."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise NotShardable(f"peft_type {config.get('peft_type')}: only LoRA, rsLoRA and DoRA adapters merge shard by "
                           "shard (AdaLoRA's ranknum is set by peft when it loads)")
    if unsupported := [key for key in _UNSUPPORTED if config.get(key)]:
        raise NotShardable(f"adapter_config.json sets {', '.join(unsupported)}")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise NotShardable(f"no {ADAPTER_WEIGHTS} in {adapter_dir}")
    parts: dict[str, dict] = {}
    for key, tensor in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise NotShardable(f"adapter tensor {key} is not a LoRA A/B matrix or DoRA magnitude")
        parts.setdefault(match.group(1), {})[match.group(2).split(".")[0]] = tensor.float()
    return {module: _delta(module, found, config) for module, found in parts.items()}


def _delta(module: str, found: dict, config: dict) -> Delta:
    from peft.utils.other import get_pattern_key

    if "lora_A" not in found or "lora_B" not in found:
        raise NotShardable(f"adapter module {module} lacks its lora_A or lora_B matrix")
    if config.get("use_dora") != ("lora_magnitude_vector" in found):
        raise NotShardable(f"adapter module {module}: DoRA magnitude and use_dora disagree")
    patterns = config.get("alpha_pattern") or {}
    alpha = patterns.get(get_pattern_key(patterns.keys(), module), config["lora_alpha"])
    r = found["lora_A"].shape[0]  # peft's r for this module (rank_pattern applied) is the tensor's
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return Delta(found["lora_A"], found["lora_B"], scaling, found.get("lora_magnitude_vector"))


def scan_base(source: str, revision: str | None = None) -> ShardPlan:
    """The base's shards, each tensor's shape (headers only) and the base's dtype; no deltas yet."""
    folder, shards, indexed = base_shards(source, revision)
    headers = read_headers(folder, shards)
    return ShardPlan(folder, shards, indexed, shapes=headers.shapes, kinds=headers.kinds,
                     dtype=headers.dominant_dtype())


def plan_merge(source: str, revision: str | None, adapter_dir: Path, tied: frozenset[str] = frozenset()) -> ShardPlan:
    """Where every adapted weight lives in the base's shards; NotShardable if one does not fit.

    `tied`: module names whose weight is shared (a tied input embedding and LM head).
    """
    plan = scan_base(source, revision)
    config = plan.folder / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("quantization_config"):
        raise NotShardable("the base checkpoint is quantized (quantization_config in its config.json)")
    modules = read_adapter(Path(adapter_dir))
    if shared := sorted(set(modules) & set(tied)):
        raise NotShardable(f"{', '.join(shared)} shares its weight with another module (tied embeddings)")
    for module, delta in modules.items():
        key, want = f"{module}.weight", [delta.b.shape[0], delta.a.shape[1]]
        if plan.shapes.get(key) != want:
            got = "absent" if key not in plan.shapes else f"shape {plan.shapes[key]}"
            raise NotShardable(f"the base stores {key} {got}, the adapter expects {want}")
        if plan.kinds[key] not in FLOAT_KINDS:
            raise NotShardable(f"the base stores {key} as {plan.kinds[key]}, not a plain float type")
        plan.deltas[key] = delta
    return plan


def merged_weight(weight, delta: Delta, dtype):
    """W + (B @ A) * scaling in fp32 (DoRA: each row times magnitude / its norm), stored in `dtype`."""
    import torch

    merged = weight.float()
    lora = (delta.b @ delta.a) * delta.scaling  # peft's get_delta_weight
    if delta.magnitude is None:
        merged += lora
    else:  # peft's DoRA merge: the norm is taken of the unmerged weight plus the delta, row by row
        merged = merged + lora
        merged = (delta.magnitude / torch.linalg.norm(merged, dim=1)).view(-1, 1) * merged
    return merged.to(dtype)


def read_shard(path: Path) -> tuple[dict, dict]:
    """Every tensor of one safetensors file, and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as tensors:
        keys = tensors.keys()  # safe_open is not iterable itself
        return {key: tensors.get_tensor(key) for key in keys}, tensors.metadata() or {}


def merge_shards(plan: ShardPlan, out_dir: Path, dtype=None) -> None:
    """Write the merged shards (and index) into `out_dir`, one shard in memory at a time."""
    weight_map, total = {}, 0
    for name in plan.shards:
        sizes = _merge_shard(plan, name, Path(out_dir), dtype)
        weight_map.update(dict.fromkeys(sizes, name))
        total += sum(sizes.values())
    if plan.indexed:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (Path(out_dir) / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _merge_shard(plan: ShardPlan, name: str, out_dir: Path, dtype) -> dict[str, int]:
    """Read, merge, write and drop one shard; returns each tensor's size in bytes."""
    from safetensors.torch import save_file

    tensors, metadata = read_shard(plan.folder / name)
    for key in tensors:
        target = dtype if dtype is not None and tensors[key].is_floating_point() else tensors[key].dtype
        if key in plan.deltas:
            tensors[key] = merged_weight(tensors[key], plan.deltas[key], target)
        else:
            tensors[key] = tensors[key].to(target)
    save_file(tensors, str(out_dir / name), metadata={**metadata, "format": "pt"})
    return {key: tensor.nbytes for key, tensor in tensors.items()}
