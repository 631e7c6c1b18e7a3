"""Checkpoints on disk: write each one atomically, find the newest complete one, rotate.

A checkpoint is RUN_DIR/checkpoints/checkpoint-STEP holding what transformers' Trainer
saves (adapter weights, optimizer, scheduler, RNG states, trainer_state.json) plus
chattune's own state (chattune_state.json, written last). It is written into
checkpoints/.tmp-checkpoint-staging/ (the Trainer's output_dir) and renamed into place only when every file is on disk,
so a crash or `kill -9` at any moment leaves either the whole checkpoint or none of it, and a
full disk ends in one DiskFull error naming the checkpoint, its staging folder removed.
This module does not decide *when* to save (the Trainer's save_steps and the signal
callback do) nor how a resume is planned (training/resume.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from chattune.faults import fault_point
from chattune.io import CHECKSUMS, DiskFull, checksum_problems, is_disk_full, write_checksums
from chattune.model.adapters import quiet_pruned_ranks
from chattune.training.distributed import barrier, is_main

PREFIX = "checkpoint-"
STAGING = ".tmp-checkpoint-"
RETIRED = ".old-checkpoint-"
STATE = "chattune_state.json"  # chattune's part, written last
# chattune_state.json's "format": a checkpoint with it always has chattune_checksums.json; one
# without it may predate checksums. 3: checksums plus the training data's fingerprint.
FORMAT = 3
# Present in every committed checkpoint whatever the engine (DDP, FSDP and DeepSpeed name their
# weight and optimizer files differently); the rename is what guarantees the rest is complete.
REQUIRED = ("trainer_state.json", STATE)
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """A committed checkpoint: named checkpoint-STEP, with the files written last by every save."""
    path = Path(path)
    if checkpoint_step(path) is None or not path.is_dir():
        return False
    return all((path / name).is_file() for name in REQUIRED)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root` (RUN_DIR/checkpoints), oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_complete(p)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def damage(path: Path) -> list[str]:
    """What is wrong with a complete checkpoint's files ([] when intact).

    A checkpoint without chattune_checksums.json is damaged unless its chattune_state.json predates
    checksums (no "format" key): this version always writes them, so a missing file is a loss.
    """
    path = Path(path)
    if (path / CHECKSUMS).is_file():
        return checksum_problems(path)
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return [f"{path / STATE}: unreadable, and {CHECKSUMS} is missing"]
    if isinstance(state, dict) and "format" not in state:
        return []  # written before chattune kept checksums
    return [f"{path / CHECKSUMS}: missing (the checkpoint was written with checksums)"]


def latest_intact_checkpoint(root: Path) -> tuple[Path | None, dict[Path, list[str]]]:
    """The newest complete checkpoint whose files still match their checksums, and the damaged newer ones."""
    damaged = {}
    for path in reversed(complete_checkpoints(root)):
        problems = damage(path)
        if not problems:
            return path, damaged
        damaged[path] = problems
    return None, damaged


def clean_staging(root: Path) -> list[Path]:
    """Delete leftovers of interrupted saves (.tmp-/.old- dirs); returns what was removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    leftovers = [p for p in root.iterdir() if p.name.startswith((STAGING, RETIRED))]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def rotate(root: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints; incomplete dirs are neither counted nor touched."""
    found = complete_checkpoints(root)
    doomed = found[:-keep] if keep > 0 else []
    for path in doomed:
        retire(path)
    return doomed


def drop_after(root: Path, step: int) -> list[Path]:
    """Delete checkpoints newer than `step` (a resume from an older one rewrites that future)."""
    doomed = [p for p in complete_checkpoints(root) if checkpoint_step(p) > step]
    for path in doomed:
        retire(path)
    return doomed


def retire(path: Path) -> None:
    """Delete a checkpoint so no half-deleted one is ever visible under its real name."""
    gone = path.with_name(f"{RETIRED}{checkpoint_step(path)}")
    shutil.rmtree(gone, ignore_errors=True)
    os.replace(path, gone)
    fault_point("checkpoint:retired-aside")
    shutil.rmtree(gone, ignore_errors=True)


def commit(staged: Path, final: Path) -> None:
    """Checksum and fsync every staged file, then rename the folder to its final name (atomic on POSIX)."""
    write_checksums(staged)
    fault_point("checkpoint:checksums")
    for file in staged.rglob("*"):
        if file.is_file():
            _fsync(file)
    _fsync(staged)
    fault_point("checkpoint:fsynced")
    if final.exists():  # the same step saved again (a resume from an older checkpoint)
        retire(final)
    os.replace(staged, final)
    _fsync(final.parent)
    fault_point("checkpoint:renamed")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


STAGING_ROOT = f"{STAGING}staging"  # the Trainer's output_dir: it writes checkpoint-STEP in here, chattune commits


def staging_root(checkpoints: Path) -> Path:
    """Where the Trainer writes each checkpoint before AtomicCheckpoints renames it into `checkpoints`."""
    return Path(checkpoints) / STAGING_ROOT


class AtomicCheckpoints(TrainerCallback):
    """Every checkpoint the Trainer saves is staged, then committed by rename, then rotated.

    The Trainer's output_dir is `staging_root(RUN_DIR/checkpoints)`: it writes checkpoint-STEP there
    (every rank its own files, RNG state per rank). Before that save (on_step_end, when a save is
    due; this callback comes last, so every other callback has had its say) every rank runs
    `progress.before_save()` (collective work, e.g. summing token counts) and the main process
    makes an empty staging folder; after it (on_save) the main process writes `progress.write(folder,
    step)` (training/resume.py), commits and rotates, keeping `keep` complete checkpoints. A full disk
    while committing ends in DiskFull naming the checkpoint; the staging folder is removed.
    """

    def __init__(self, checkpoints: Path, progress=None, keep: int = 2):
        self.root, self.progress, self.keep = Path(checkpoints), progress, keep
        self.staging = staging_root(self.root)
        self.saving: Path | None = None  # the checkpoint being written, between on_step_end and on_save
        self._quiet = contextlib.ExitStack()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not control.should_save:
            return
        self.saving = self.root / f"{PREFIX}{state.global_step}"
        if self.progress is not None:
            self.progress.before_save()
        if args.should_save:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir(parents=True)
            fault_point("checkpoint:staging-made")
        self._quiet.enter_context(quiet_pruned_ranks(model))  # AdaLoRA ranks pruned to 0: not unsharded tensors
        barrier()

    def on_save(self, args, state, control, **kwargs):
        self._quiet.close()
        barrier()
        if args.should_save:
            self._commit(self.staging / self.saving.name, state.global_step)
        barrier()
        self.saving = None

    @contextlib.contextmanager
    def located_failures(self):
        """Around trainer.train(): a failure removes the staging folder (the newest complete checkpoint stays
        the last one); a full disk while a checkpoint is written ends in DiskFull naming that checkpoint."""
        try:
            yield
        except BaseException as err:
            self._quiet.close()
            saving, self.saving = self.saving, None
            if is_main():
                shutil.rmtree(self.staging, ignore_errors=True)
            if saving is not None and not isinstance(err, DiskFull) and is_disk_full(err, saving):
                raise DiskFull(saving) from err
            raise

    def _commit(self, staged: Path, step: int) -> None:
        fault_point("checkpoint:trainer-files")
        if self.progress is not None:
            self.progress.write(staged, step)
        fault_point("checkpoint:chattune-state")
        commit(staged, self.root / staged.name)
        shutil.rmtree(self.staging, ignore_errors=True)
        fault_point("checkpoint:staging-removed")
        rotate(self.root, self.keep)
        fault_point("checkpoint:rotated")
