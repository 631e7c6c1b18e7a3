"""The run dir a training writes: made and probed before training, locked for one writer, cleaned.

prepare_run_dir creates the folder (an unwritable place or a full disk fails before any model
loads) and takes its writer lock (runlock.py) for the rest of training; hold_resumed takes it
before a resume reads the run's checkpoints. located_disk_full_in_run turns a full disk anywhere
in a run into one line and removes what it left half-written. No training happens here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from chattune import rundir, runlock
from chattune.config import RunConfig
from chattune.io import DiskFull, clean_temporaries, drop_cut_line, located_disk_full
from chattune.training import distributed

# made by this process: removed again if a run fails before writing to it
CREATED_RUN_DIRS: set[Path] = set()


def prepare_run_dir(cfg: RunConfig, resuming: bool = False) -> Path:
    """Create the run dir now, so an unwritable output fails before training starts; lock it."""
    path = cfg.resolved_run_dir()
    if path.exists() and not path.is_dir():
        raise rundir.RunDirError(f"{path}: is a file, not a folder; choose another run_dir or "
                                 "output_dir")
    if path.is_dir() and (who := runlock.busy_holder(path)):
        raise runlock.busy(path, who)  # before "not empty": the lock file is in there
    if not resuming and path.exists() and any(p.name != rundir.LOCK for p in path.iterdir()):
        raise FileExistsError(f"{path}: run dir already exists and is not empty; choose another "
                              "run_dir (or continue it: --resume auto)")
    try:
        if not path.exists():
            CREATED_RUN_DIRS.add(path)
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise rundir.RunDirError(f"{path}: cannot write the run dir here ({err.strerror or err}); "
                                 "choose another output_dir or run_dir") from None
    made_here = path in CREATED_RUN_DIRS
    with rundir.removed_if_left_empty(path) if made_here else contextlib.nullcontext():
        rundir.check_free_space(path, rundir.SPACE_MARGIN)  # refused: a folder made here goes again
        runlock.hold(path)  # until train() returns (runlock.releasing)
    return path


def resumed_run_dir(cfg: RunConfig, resume: str) -> Path | None:
    """The existing run dir `--resume VALUE` continues, None when it is not there (yet)."""
    if resume == "auto":
        path = Path(cfg.run_dir) if cfg.run_dir else None
    else:
        path = Path(resume)
        path = path.parent.parent if path.parent.name == rundir.CHECKPOINTS else path
    return path if path is not None and path.is_dir() else None


def hold_resumed(cfg: RunConfig, resume: str | None) -> None:
    """Lock the run dir a resume continues before its checkpoints are read. Under torchrun the lock
    is taken by rank 0 in prepare_run_dir instead, whose errors reach every rank."""
    if resume and distributed.world_size() <= 1 and (path := resumed_run_dir(cfg, resume)):
        runlock.hold(path)


@contextlib.contextmanager
def located_disk_full_in_run(run_path: Path):
    """A full disk anywhere in a run: one DiskFull line naming what was being written and how to
    continue; temporaries and a metrics line cut mid-write are removed (nothing stays half-done)."""
    try:
        with located_disk_full(run_path, resume=True):  # e.g. metrics.jsonl: the run dir is named
            yield
    except DiskFull:
        if distributed.is_main():
            clean_temporaries(run_path, rundir.TEMPORARY_OF)
            drop_cut_line(rundir.RunDir(run_path).metrics_file)
        raise
