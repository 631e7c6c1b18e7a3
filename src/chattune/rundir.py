"""The run dir contract: what training writes and everything after it reads.

Layout of a run dir:
    config.yaml          the fully resolved RunConfig
    adapter/             PEFT adapter (loads with plain PeftModel.from_pretrained)
    tokenizer/           tokenizer files, including the chat template used in training
    chat_template.jinja  the exact chat template used (also inside tokenizer/)
    data_stats.json      examples, tokens, trained tokens, truncated/dropped with reasons
    metrics.jsonl        one JSON object per logged step (step, loss, lr, tokens/s, ...)
    loss.png             the loss curve
    summary.json         final numbers of the run
    init_adapter/        lora.init=pissa/olora only: the initial adapter (model/adapters.py)
All files are written to a temporary name and renamed, so a reader never sees half a file;
a full disk during a write ends in DiskFull (one line: the path and the fix), its temporary removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chattune.faults import WRITTEN, fault_point

CONFIG = "config.yaml"
ADAPTER = "adapter"
TOKENIZER = "tokenizer"
TEMPLATE = "chat_template.jinja"
DATA_STATS = "data_stats.json"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
SUMMARY = "summary.json"


SPACE_MARGIN = 32 * 2**20  # tokenizer, template, metrics, plots, tracker logs


class RunDirError(ValueError):
    """A folder that is not a usable run dir."""


@contextlib.contextmanager
def removed_if_left_empty(path: Path):
    """On an error inside the block, remove `path` if it is still an empty folder; re-raise."""
    try:
        yield
    except BaseException:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def estimated_size(trainable_params: int, checkpoints: int) -> int:
    """Bytes a run dir may hold at its fullest: the fp32 adapter three times (adapter/, its
    atomic replacement, last_adapter/) and each checkpoint's adapter plus AdamW's two moments."""
    adapter = 4 * trainable_params
    return 3 * adapter + checkpoints * 3 * adapter + SPACE_MARGIN


def check_free_space(path: Path, need: int) -> None:
    free = shutil.disk_usage(path).free
    if free < need:
        raise RunDirError(
            f"{path}: only {free / 2**20:.1f} MiB free on this disk, but the run needs about {need / 2**20:.0f} MiB "
            "(adapter, checkpoints, logs); free some space or choose another output_dir or run_dir"
        )


class DiskFull(RunDirError):
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


# Temporaries of the atomic writes below are named .NAME.XXXXXXXX (plots: .NAME.tmp.png)
TEMPORARY_OF = (CONFIG, ADAPTER, TOKENIZER, TEMPLATE, DATA_STATS, METRICS, LOSS_PLOT, SUMMARY)


def clean_temporaries(path: Path, names: tuple[str, ...] = ()) -> list[Path]:
    """Delete what atomic writes left in `path` when killed mid-write (the run dir's files and `names`)."""
    prefixes = tuple(f".{name}." for name in (*TEMPORARY_OF, *names))
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


@dataclass
class RunDir:
    path: Path

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER

    @property
    def tokenizer(self) -> Path:
        return self.path / TOKENIZER

    def config(self):
        from chattune.config import load_config

        return load_config(self.path / CONFIG)

    def metrics(self) -> list[dict]:
        file = self.path / METRICS
        if not file.is_file():
            return []
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / ADAPTER).is_dir()


def open_run_dir(path: str | Path) -> RunDir:
    run = RunDir(Path(path))
    missing = [name for name in (CONFIG, ADAPTER, TOKENIZER) if not (run.path / name).exists()]
    if missing:
        raise RunDirError(f"{run.path}: not a complete run dir (missing {', '.join(missing)})")
    return run
