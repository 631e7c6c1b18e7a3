"""A GGUF file as a base model: checked, then converted once into an HF folder in $CHATTUNE_HOME.

Before any work the file's header is read: its architecture must be one that transformers' GGUF
loader builds as a causal LM, and every tensor type one that gguf-py can dequantize; otherwise
ModelSourceError lists what works. The converted folder is named by the file's sha256, so a copied
or renamed file is found again and an edited one is converted anew; its marker also records the
path, size and mtime it was made from, so a later call on the same unchanged file skips the hash.
The tokenizer and chat template come from the GGUF itself. This module fetches nothing
(model/wheel_gguf.py does) and names no models (models.py does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from chattune.model.home import ModelSourceError, build_folder_once, chattune_home, file_sha256

COMPLETE_MARKER = "chattune-converted.json"
# transformers' GGUF table also holds non-model sections and encoder-decoder families
_NOT_CAUSAL = {"general", "tokenizer", "t5", "umt5"}


@dataclass(frozen=True)
class GGUFHeader:
    architecture: str
    name: str
    tensor_types: frozenset[str]


def causal_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_CAUSAL)


def dequantizable_types() -> set[str]:
    """The GGML tensor types gguf-py turns back into floats (asked of gguf-py, one block each)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    usable = set()
    for qtype in GGMLQuantizationType:
        if qtype not in GGML_QUANT_SIZES:
            continue
        try:
            quants.dequantize(np.zeros(GGML_QUANT_SIZES[qtype][1], np.uint8), qtype)
        except (NotImplementedError, ValueError, KeyError):
            continue
        usable.add(qtype.name)
    return usable


def read_header(path: Path) -> GGUFHeader:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as err:
        raise ModelSourceError(
            f"{path}: not a readable GGUF file ({type(err).__name__}: {err})"
        ) from None
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ModelSourceError(
            f"{path}: a GGUF without general.architecture; chattune cannot tell what model it is"
        )
    name = reader.fields.get("general.name")
    return GGUFHeader(
        str(field.contents()),
        str(name.contents()) if name else path.stem,
        frozenset(t.tensor_type.name for t in reader.tensors),
    )


def check_gguf(path: Path) -> GGUFHeader:
    """Refuse a GGUF that transformers can't load or gguf-py cannot dequantize; name what works."""
    header = read_header(path)
    architectures = causal_architectures()
    if header.architecture not in architectures:
        raise ModelSourceError(
            f"{path}: GGUF architecture {header.architecture!r} cannot be loaded by transformers "
            f"as a causal LM; these can: {', '.join(architectures)}"
        )
    unknown = sorted(header.tensor_types - dequantizable_types())
    if unknown:
        raise ModelSourceError(
            f"{path}: tensor types {', '.join(unknown)} cannot be dequantized by gguf-py; "
            f"these can: {', '.join(sorted(dequantizable_types()))}. Re-quantize the file "
            "(llama-quantize) to one of them, or give the model's HF folder"
        )
    return header


def file_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def gguf_models_dir() -> Path:
    return chattune_home() / "models"


def converted_folder(path: Path) -> Path:
    """The HF folder converted from the GGUF at `path`: found by stamp or content, else made now."""
    stamp = file_stamp(path)
    for marker in gguf_models_dir().glob(f"gguf-*/{COMPLETE_MARKER}"):
        recorded = _read_marker(marker)
        if recorded.get("stamp") == stamp:
            return marker.parent
    check_gguf(path)
    sha = file_sha256(path)
    target = gguf_models_dir() / f"gguf-{sha[:16]}"
    recorded = _read_marker(target / COMPLETE_MARKER)
    if recorded.get("sha256") == sha:
        (target / COMPLETE_MARKER).write_text(
            json.dumps({**recorded, "stamp": stamp})
        )  # the same bytes, moved
        return target
    source = {"gguf": path.name, "sha256": sha, "stamp": stamp}
    return build_folder_once(target, lambda tmp: convert_with_marker(path, tmp, source))


def convert_with_marker(gguf_path: Path, out_dir: Path, source: dict) -> None:
    convert_gguf(gguf_path, out_dir)
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(source))


def _read_marker(marker: Path) -> dict:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF into a plain (unquantized) fp32 HF model folder, tokenizer included."""
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    console.print(
        f"[bold]Converting[/] {gguf_path.name} to an HF folder (once; cached in {out_dir.parent})"
    )
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    plain = _unmarked_copy(quantized)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    console.print(
        f"[green]Converted[/] {sum(p.numel() for p in plain.parameters()) / 1e6:.0f}M parameters"
    )


def _unmarked_copy(quantized):
    """The GGUF loader marks its model as quantized, which blocks saving and training; the same
    tensors in a model built from the config without that mark are an ordinary model. Built on the
    meta device and given the loaded tensors themselves: no second copy of the weights is made."""
    import torch
    from transformers import AutoModelForCausalLM

    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    for (
        name,
        buffer,
    ) in quantized.named_buffers():  # non-persistent ones (rotary tables) are not in the state dict
        if _on_meta(plain, name):
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(leaf, buffer, persistent=False)
    plain.tie_weights()
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"GGUF conversion left tensors unset: {', '.join(left[:5])}")
    plain.generation_config = quantized.generation_config
    return plain


def _on_meta(model, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    tensor = getattr(model.get_submodule(owner), leaf, None)
    return tensor is not None and tensor.is_meta
