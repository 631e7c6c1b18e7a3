"""The prepared-data cache: a key from everything that decides prepare()'s result, and atomic entries.

The key hashes the data files' bytes (sha256), the tokenizer (its serialized vocabulary,
merges, normalizer and added tokens, its class, name and special tokens), the applied chat
template and stop ids, every data.* setting, the seed, and chattune's data code itself, so
a change to any of them misses. An entry is a folder under $CHATTUNE_HOME/data-cache/
(the encoded Arrow table plus meta.json), built under a temporary name and renamed into
place; the newest few are kept. It does not encode, lint or count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chattune.config import DataConfig

CACHE_VERSION = "1"
CACHE_DIR = "data-cache"
META = "meta.json"
KEEP = 4  # entries kept; older ones are removed when a new one is written
MIN_BYTES = 1 << 20  # data files smaller than this are not cached: they encode in about a second
STALE_SECONDS = 3600  # a temporary folder older than this was abandoned


def cache_root() -> Path:
    from chattune.models import chattune_home

    return chattune_home() / CACHE_DIR


def data_files(data_cfg: DataConfig) -> list[str]:
    """Every file or folder prepare() reads for `data_cfg` (built-in sets have none)."""
    paths = [s.path for s in data_cfg.sources] if data_cfg.sources else [data_cfg.path]
    paths += [data_cfg.eval_path] if data_cfg.eval_path else []
    retrieval = getattr(data_cfg, "retrieval", None)
    paths += [retrieval.corpus] if retrieval and retrieval.corpus else []
    return [p for p in paths if not p.startswith("builtin:")]


def cache_key(data_cfg: DataConfig, tokenizer, seed: int, stop_ids) -> tuple[str, int] | None:
    """(key, bytes of data read), or None when a file cannot be read (prepare then names the problem)."""
    digest = hashlib.sha256()

    def add(label: str, value: bytes) -> None:
        digest.update(f"{label}:{len(value)}:".encode())
        digest.update(value)

    add("version", CACHE_VERSION.encode())
    add("code", _code_digest())
    add("settings", json.dumps(_settings(data_cfg), sort_keys=True, ensure_ascii=False).encode())
    add("seed", str(seed).encode())
    add("tokenizer", tokenizer_digest(tokenizer))
    add("template", json.dumps(tokenizer.chat_template, sort_keys=True).encode())
    add("stops", json.dumps(sorted(stop_ids)).encode())
    size = 0
    for path in data_files(data_cfg):
        found = _path_digest(Path(path))
        if found is None:
            return None
        add("file", path.encode() + b"\0" + found[0])
        size += found[1]
    return digest.hexdigest()[:32], size


def _settings(data_cfg: DataConfig) -> dict:
    return data_cfg.model_dump(mode="json") if hasattr(data_cfg, "model_dump") else dict(vars(data_cfg))


def tokenizer_digest(tokenizer) -> bytes:
    """What decides the ids: the fast tokenizer's full serialization, else its vocabulary; plus name and specials."""
    parts = [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")),
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the padding/truncation state a previous call may have left
        state = json.loads(backend.to_str())
        state.pop("padding", None)
        state.pop("truncation", None)
        parts.append(json.dumps(state, sort_keys=True, ensure_ascii=False))
    else:
        parts.append(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False))
    parts.append(json.dumps(sorted(getattr(tokenizer, "get_added_vocab", dict)().items()), ensure_ascii=False))
    return hashlib.sha256("\0".join(parts).encode("utf-8")).digest()


@lru_cache(maxsize=1)
def _code_digest() -> bytes:
    """chattune's data code and the libraries that encode: a new version of either misses."""
    import datasets
    import tokenizers
    import transformers

    digest = hashlib.sha256(f"{datasets.__version__} {tokenizers.__version__} {transformers.__version__}".encode())
    here = Path(__file__).parent
    for path in sorted([*here.glob("*.py"), *here.glob("*.jsonl")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.digest()


def _path_digest(path: Path) -> tuple[bytes, int] | None:
    """sha256 of a file's bytes, or of every file in a folder (names included); with the byte count."""
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        digest, size = hashlib.sha256(), 0
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else "").encode() + b"\0")
            with file.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
        return digest.digest(), size
    except OSError:
        return None


def load_entry(key: str):
    """(meta, encoded table) of a complete entry, or None; a damaged entry is removed."""
    folder = cache_root() / key
    if not (folder / META).is_file():
        return None
    try:
        from datasets import Dataset, concatenate_datasets

        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION:
            raise ValueError("another cache version")
        parts = [Dataset.from_file(str(folder / name)) for name in meta["files"]]
        table = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    except Exception:  # any unreadable entry is a miss, never a failure
        shutil.rmtree(folder, ignore_errors=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(folder)  # recently used: kept longest
    return meta, table


@contextlib.contextmanager
def staging(key: str):
    """A fresh temporary folder for one entry; removed on the way out unless commit() renamed it."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f".tmp-{key}-{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def commit(folder: Path, key: str, meta: dict, table) -> None:
    """Write meta.json beside the encoded files, then rename the folder into place (atomic)."""
    meta = {**meta, "version": CACHE_VERSION,
            "files": [Path(f["filename"]).name for f in table.cache_files]}
    (folder / META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    target = cache_root() / key
    try:
        os.rename(folder, target)
    except OSError:  # another process committed the same key first: theirs is as good
        return
    prune(cache_root(), keep=KEEP)


def prune(root: Path, keep: int = KEEP) -> None:
    """Keep the `keep` most recently used entries; drop abandoned temporary folders."""
    entries, now = [], time.time()
    for path in root.iterdir():
        with contextlib.suppress(OSError):
            if path.name.startswith(".tmp-"):
                if now - path.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir():
                entries.append((path.stat().st_mtime, path))
    for _, path in sorted(entries, reverse=True)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
