"""One writer per run dir: an advisory lock (flock) that every command writing a run dir holds.

train, `--resume`, eval (its folder inside a run dir) and export (its target) take the lock
before they write; a second writer is refused at once (RunDirBusy) with the PID and command line
of the holder, which the holder wrote into the lock file. The kernel drops a flock when its
process dies (kill -9, OOM), so a lock file left by a dead process never blocks: the decision is
the flock alone, the PID in the file is only the message. The holder removes the file on release;
an acquirer checks that the file it locked is still the one at the path (a release between its
open and its flock would otherwise leave two holders). Locks are per open file, so two holds of
one path in one process conflict too: hold() keeps one per path and scope() releases them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shlex
import sys
from pathlib import Path

from chattune.rundir import LOCK, RunDirError

COMMAND_SHOWN = 300  # characters of the holder's command line in a refusal


class RunDirBusy(RunDirError):
    """Another process is writing this run dir (or export target) now."""


def _command_line() -> str:
    return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


class WriterLock:
    """A held flock on `path` (a lock file); release() removes the file, then unlocks."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # still locked: a newcomer re-checks the inode and retries
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(lock_file: Path) -> str:
    """'pid N: COMMAND' from a lock file ('an unknown process' when it says nothing yet)."""
    try:
        record = json.loads(Path(lock_file).read_text(encoding="utf-8") or "{}")
        command = " ".join(str(record["command"]).split())  # one line, whatever the argv held
        if len(command) > COMMAND_SHOWN:
            command = command[:COMMAND_SHOWN] + "..."
        return f"pid {record['pid']}: {command}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


def busy(subject: Path, who: str) -> RunDirBusy:
    return RunDirBusy(f"{subject}: another chattune process is writing here ({who}); "
                      "wait for it to finish or stop it, then run this again")


def lock_file(lock_path: Path, subject: Path) -> WriterLock:
    """Take the flock on `lock_path` or raise RunDirBusy naming `subject` and the holder."""
    lock_path = Path(lock_path)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise RunDirError(f"{subject}: cannot write here ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy(subject, holder(lock_path)) from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # released and removed between our open and our flock: lock the new file
    record = json.dumps({"pid": os.getpid(), "command": _command_line()}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    return WriterLock(lock_path, fd)


def lock_run_dir(run_path: Path) -> WriterLock:
    """The writer lock of the run dir `run_path` (an existing folder)."""
    return lock_file(Path(run_path) / LOCK, Path(run_path))


_HELD: dict[Path, WriterLock] = {}


def hold(run_path: Path) -> None:
    """Lock `run_path` for this process until the enclosing scope() ends (a no-op when held)."""
    key = Path(run_path).resolve()
    if key not in _HELD:
        _HELD[key] = lock_run_dir(run_path)


@contextlib.contextmanager
def scope():
    """Release, at the end of the block, every lock hold() took inside it."""
    before = set(_HELD)
    try:
        yield
    finally:
        for key in [k for k in _HELD if k not in before]:
            _HELD.pop(key).release()


def releasing(func):
    """Decorate `func` so that the locks hold() takes while it runs are released when it returns."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with scope():
            return func(*args, **kwargs)

    return wrapper


def busy_holder(run_path: Path) -> str | None:
    """Who holds `run_path`'s lock now ('pid N: COMMAND'); None when nobody does (a probe: it
    keeps nothing and leaves the file as it is)."""
    path = Path(run_path) / LOCK
    if Path(run_path).resolve() in _HELD:
        return None  # this process is the writer
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: nobody writes it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # dropped again by the close below
        return None
    except BlockingIOError:
        return holder(path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def writing_inside(out: Path | None, default_run: Path | None = None):
    """Hold the lock of the run dir that `out` (or, without it, `default_run`) lies in, if any."""
    from chattune.rundir import enclosing_run_dir

    run = enclosing_run_dir(out) if out is not None else default_run
    with lock_run_dir(run) if run is not None else contextlib.nullcontext():
        yield
