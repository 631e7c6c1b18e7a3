"""Where an export may write: checked before any work, held by one export, cleared of leftovers.

`--out` is refused, `--force` or not, when it is or lies inside a run dir (rundir.holds_a_run:
its contract files) or the base model's folder, or when it holds the run or the base: an export
replaces its whole folder. It is refused when it is a file, or when its parent cannot be written
(a real probe file, so a read-only disk is caught for root too), all before the fidelity gate.
With `--force` an existing folder is replaced only when it is an earlier export. While one export
writes OUT it holds a lock next to it (runlock.py), and first removes the temporary folders an
interrupted export to OUT left (io.clean_temporaries: `.OUT.XXXXXXXX`, `.OUT.old`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from chattune import rundir, runlock
from chattune.config import ConfigError
from chattune.exporting.merge import REPORT
from chattune.io import clean_temporaries


class ExportTargetError(ConfigError):
    """--out names a place an export must not (or cannot) write."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def protected_folders(run_path) -> list[tuple[str, Path]]:
    """(what, folder) an export of `run_path` must not write into: the run and its base model."""
    from chattune.models import resolve_model

    run = rundir.open_run_dir(run_path)
    cfg = run.config()
    found = [("the run dir", run.path.resolve())]
    base = Path(resolve_model(cfg.model.name, cfg.model.revision)).resolve()
    found.append(("the base model's folder", base))
    named = Path(cfg.model.name).expanduser()
    if named.exists():  # a local folder, or a .gguf file: its folder
        folder = named if named.is_dir() else named.parent
        found.append(("the base model's folder", folder.resolve()))
    return found


def check_target(run_path, out, force: bool) -> Path:
    """Refuse `out` (ExportTargetError, one line) unless an export of `run_path` may write it."""
    out = Path(out)
    where = out.resolve()
    if out.exists() and not out.is_dir():
        raise ExportTargetError(f"--out {out}: is a file, not a folder; an export writes a folder")
    if (run := rundir.enclosing_run_dir(where)) is not None:
        raise ExportTargetError(f"--out {out}: inside the run dir {run} (the export would replace "
                                "its adapter, checkpoints and metrics); choose a folder outside it")
    for what, folder in protected_folders(run_path):
        if _inside(where, folder):
            raise ExportTargetError(f"--out {out}: inside {what} {folder}; choose another folder")
        if _inside(folder, where):
            raise ExportTargetError(f"--out {out}: holds {what} {folder}, which the export would "
                                    "replace; choose another folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out}: already exists and is not empty; choose another --out "
                                  "or add --force")
        if not (out / REPORT).is_file():
            raise ExportTargetError(f"--out {out}: holds files that are not a chattune export "
                                    f"(no {REPORT}); --force replaces only an earlier export")
    _check_writable(out, where.parent)
    return out


def _check_writable(out: Path, parent: Path) -> None:
    """Probe the nearest existing folder above `out` with a real file (os.access trusts root)."""
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ExportTargetError(f"--out {out}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".chattune-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ExportTargetError(f"--out {out}: cannot write in {existing} ({err.strerror or err}); "
                                "choose another folder") from None


@contextlib.contextmanager
def writing(out: Path):
    """Hold OUT's export lock (a second export to OUT is refused) after removing the temporary
    folders an interrupted export to OUT left."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with runlock.lock_file(out.parent / f".{out.name}-export.lock", out):
        clean_temporaries(out.parent, (out.name,))
        yield
