"""Checkpoints on disk: write each one atomically, find the newest complete one, rotate.

A checkpoint is RUN_DIR/checkpoints/checkpoint-STEP holding what transformers' Trainer
saves (adapter weights, optimizer, scheduler, RNG states, trainer_state.json) plus
chattune's own state (chattune_state.json, written last). It is written into
checkpoints/.tmp-checkpoint-STEP/ and renamed into place only when every file is on disk,
so a crash or `kill -9` at any moment leaves either the whole checkpoint or none of it, and a
full disk ends in one DiskFull error naming the checkpoint, its staging folder removed.
This module does not decide *when* to save (the Trainer's save_steps and the signal
callback do) nor how a resume is planned (train/resume.py).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from chattune.faults import fault_point
from chattune.model.adapters import quiet_pruned_ranks
from chattune.rundir import checksum_problems, located_disk_full, write_checksums

CHECKPOINTS = "checkpoints"
PREFIX = "checkpoint-"
STAGING = ".tmp-checkpoint-"
RETIRED = ".old-checkpoint-"
STATE = "chattune_state.json"  # chattune's part, written last
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


def latest_intact_checkpoint(root: Path) -> tuple[Path | None, dict[Path, list[str]]]:
    """The newest complete checkpoint whose files still match their checksums, and the damaged newer ones."""
    damaged = {}
    for path in reversed(complete_checkpoints(root)):
        problems = checksum_problems(path)
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


class AtomicCheckpoints:
    """Mixin for transformers.Trainer: every checkpoint is staged, then renamed; then rotation.

    Set `progress` (`.before_save(trainer)` on every rank, `.write(folder, step)` on the main
    one; see train/resume.py) and `keep_checkpoints` on the trainer. Only the main process
    renames and rotates; all ranks write their own files (RNG state per rank) into the same
    staging folder.
    """

    progress = None
    keep_checkpoints = 2
    _staging_root: Path | None = None

    def _get_output_dir(self, trial) -> str:
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Stage, commit and rotate; a full disk ends in DiskFull naming the checkpoint, its staging removed."""
        root = Path(self.args.output_dir)
        staging = root / f"{STAGING}{self.state.global_step}"
        try:
            with located_disk_full(root / f"{PREFIX}{self.state.global_step}"):
                self._stage_and_commit(model, trial, root, staging)
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)  # the newest complete checkpoint stays the last one
            raise
        self.accelerator.wait_for_everyone()

    def _stage_and_commit(self, model, trial, root: Path, staging: Path) -> None:
        name = f"{PREFIX}{self.state.global_step}"
        main = self.args.should_save
        if self.progress is not None:
            self.progress.before_save(self)  # every rank: collective work (e.g. summing counters)
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            fault_point("checkpoint:staging-made")
        self.accelerator.wait_for_everyone()
        self._staging_root = staging
        try:
            with quiet_pruned_ranks(model):  # AdaLoRA ranks pruned to 0 are not unsharded tensors
                super()._save_checkpoint(model, trial)  # writes staging/checkpoint-STEP
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if main:
            fault_point("checkpoint:trainer-files")
            if self.progress is not None:
                self.progress.write(staging / name, self.state.global_step)
            fault_point("checkpoint:chattune-state")
            commit(staging / name, root / name)
            shutil.rmtree(staging, ignore_errors=True)
            fault_point("checkpoint:staging-removed")
            rotate(root, self.keep_checkpoints)
            fault_point("checkpoint:rotated")
