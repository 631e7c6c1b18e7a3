"""Where chattune keeps what it converts or fetches ($CHATTUNE_HOME): folders built whole or not at
all, the file hash that keys them, and the error for a model name that cannot be resolved.
Nothing here converts, downloads or loads a model."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_HASH_CHUNK = 8 << 20
STALE_SECONDS = 3600  # a temporary folder older than this was abandoned (kill -9, power loss)


class ModelSourceError(ValueError):
    """A model name that cannot be resolved, with what to do about it."""


def chattune_home() -> Path:
    return Path(os.environ.get("CHATTUNE_HOME", Path.home() / ".cache" / "chattune"))


def build_folder_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Make `target` by `build(tmp)` in a temporary sibling renamed into place: never half there.

    A `target` left by an interrupted or outdated build is the caller's to judge; this removes it.
    Temporaries of builds killed outright are removed once stale; young ones may belong to a build
    running right now, so they stay."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the cache may be shared
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def remove_stale_temporaries(parent: Path, name: str) -> None:
    now = time.time()
    for leftover in parent.glob(f".{name}-*"):
        if now - leftover.stat().st_mtime > STALE_SECONDS:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
