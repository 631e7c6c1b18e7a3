"""Atomic file I/O for every stage: write to a temporary name and rename, located disk-full errors, checksums.

A reader never sees half a file: text, JSON and whole folders are written under a temporary
name (.NAME.XXXXXXXX) in the target's folder and renamed into place. A full disk during a write
ends in DiskFull (one line: the path and the fix), its temporary removed. Folders committed by
training carry sha256 checksums of their files, so a later reader can refuse a damaged copy.
This module knows no file names of its own but CHECKSUMS; the run dir's names are in rundir.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from chattune.faults import WRITTEN, fault_point


class DiskFull(ValueError):
    """A write failed because the disk (or the user's quota) is full; what it was writing is not left half-written."""

    def __init__(self, path: Path, resume: bool = False):
        self.path, self.resume = Path(path), resume
        super().__init__(f"{path}: no space left on device (nothing was left half-written); "
                         f"{RESUME_FIX if resume else PLAIN_FIX}")


PLAIN_FIX = "free some space on that disk or choose another output folder"
RESUME_FIX = ("free some space on that disk, then run the same command with --resume auto (it continues from the newest "
              "complete checkpoint), or start again with another output_dir or run_dir")


FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# safetensors wraps Rust's io::Error: "I/O error: No space left on device (os error 28)"
FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "(os error 28)", "(os error 122)")
# torch.save's zip writer loses the errno: "[enforce fail at inline_container.cc:672] . unexpected pos 576
# vs 534" (measured on a full tmpfs); a full disk only when the disk written to is full indeed
TORCH_WRITE_FAILED = "inline_container.cc"
NEARLY_FULL = 16 * 2**20


def is_disk_full(err: BaseException | None, path: Path | None = None) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception's chain, also when a library re-raised it as text;
    torch's failed writes count when the disk holding `path` has under NEARLY_FULL bytes free."""
    while err is not None:
        if isinstance(err, DiskFull) or (isinstance(err, OSError) and err.errno in FULL_ERRNOS):
            return True
        text = str(err)
        if any(message in text for message in FULL_MESSAGES):
            return True
        if path is not None and TORCH_WRITE_FAILED in text and _free_bytes(path) < NEARLY_FULL:
            return True
        err = err.__cause__ or err.__context__
    return False


def _free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


@contextlib.contextmanager
def located_disk_full(path: Path, resume: bool = False):
    """A full disk inside the block becomes DiskFull naming `path` (a DiskFull from deeper down is kept)."""
    try:
        yield
    except DiskFull as err:
        if resume and not err.resume:  # the path written deepest, the fix of the outermost caller
            raise DiskFull(err.path, resume=True) from err
        raise
    except Exception as err:
        if not is_disk_full(err, path):
            raise
        raise DiskFull(path, resume) from err


def clean_temporaries(path: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete what atomic writes of `names` left in `path` when killed mid-write (.NAME.XXXXXXXX;
    plots: .NAME.tmp.png)."""
    prefixes = tuple(f".{name}." for name in names)
    leftovers = [p for p in Path(path).iterdir() if p.name.startswith(prefixes)] if Path(path).is_dir() else []
    for leftover in leftovers:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return leftovers


def drop_cut_line(path: Path) -> None:
    """Truncate a line-per-record file after its last complete line (an append cut by a full disk)."""
    if not path.is_file():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with located_disk_full(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; run dirs are meant to be shared
            fault_point(WRITTEN, path.name)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_dir_atomic(target: Path, write) -> None:
    """Call write(tmp_dir), then rename tmp_dir to target; an old target is renamed aside first and
    deleted last, so no half-deleted folder is ever visible under the target's name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    with located_disk_full(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            write(tmp)
            os.chmod(tmp, 0o755)
            fault_point(WRITTEN, target.name)
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    shutil.rmtree(old, ignore_errors=True)


CHECKSUMS = "chattune_checksums.json"  # sha256 of every other file, written when a folder is committed


def write_checksums(folder: Path) -> None:
    """Record the size and sha256 of every file under `folder` (before it is renamed into place)."""
    sums = {str(f.relative_to(folder)): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n", encoding="utf-8")


def checksum_problems(folder: Path) -> list[str]:
    """What no longer matches the checksums written at commit time ([] when intact or never summed)."""
    record = Path(folder) / CHECKSUMS
    if not record.is_file():
        return []  # written before chattune kept checksums
    try:
        sums = json.loads(record.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return [f"{record}: unreadable"]
    problems = []
    for name, expected in sums.items():
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            problems.append(f"{path}: changed since it was written (checksum mismatch)")
    return problems


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
