"""Deterministic fault injection for the reliability tests: `kill -9` this process at a named point.

With CHATTUNE_KILL_AT=NAME (or NAME@N: the N-th time that point is reached, counting from 1)
`fault_point(NAME)` sends SIGKILL to its own process, exactly as an OOM killer or a preempted
node would: no handler, no cleanup, no flush. Points sit between the phases of a checkpoint
commit (training/checkpoints.py), of the final save (training/trainer.py save_run) and of the atomic
writes under them (io.py); tests/test_kill_sweep.py kills the training CLI at each one.
Unset (always, outside those tests), a point costs one comparison.
"""

from __future__ import annotations

import os
import signal

ENV = "CHATTUNE_KILL_AT"

# In the order a run reaches them. A checkpoint commit: the staging folder made; the Trainer's files
# (weights, optimizer, scheduler, RNG, trainer_state.json) written into it; chattune_state.json;
# chattune_checksums.json; every file fsynced; the folder renamed into place; the staging parent
# removed; an old checkpoint renamed aside by rotation (not yet deleted); rotation done. The step's
# metrics.jsonl line is written before its checkpoint begins, so "staging-made" is also "logged, not saved".
CHECKPOINT_PHASES = (
    "checkpoint:staging-made", "checkpoint:trainer-files", "checkpoint:chattune-state", "checkpoint:checksums",
    "checkpoint:fsynced", "checkpoint:renamed", "checkpoint:staging-removed", "checkpoint:retired-aside",
    "checkpoint:rotated",
)
# The final save, each after that part of the run dir is in place; summary.json is written last.
FINAL_PHASES = (
    "final:adapter", "final:tokenizer", "final:template", "final:config", "final:data-stats", "final:loss-plot",
    "final:checkpoints-cleaned", "final:summary",
)
# Inside an atomic write (io.py): the temporary file or folder complete, not yet renamed to NAME.
WRITTEN = "written"

_armed = os.environ.get(ENV) or None
_target, _, _nth = (_armed or "").partition("@")
_count = 0


def fault_point(name: str, detail: str = "") -> None:
    """SIGKILL this process here when CHATTUNE_KILL_AT names this point (`name` or `name:detail`)."""
    if _armed is None:
        return
    if (f"{name}:{detail}" if detail else name) == _target:
        global _count
        _count += 1
        if _count == int(_nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
