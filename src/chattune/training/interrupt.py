"""Ctrl-C / SIGTERM during training: finish the step, save a checkpoint, stop; a second one aborts.

The first SIGINT or SIGTERM only sets a flag; at the end of the current optimizer step the
callback asks the Trainer to save a checkpoint and stop, and `train()` raises
TrainingInterrupted (exit code 128 + signal: 130 for SIGINT, 143 for SIGTERM) so the CLI
can print the exact resume command. A second signal exits at once; the newest complete
checkpoint stays valid because checkpoints are renamed into place only when complete.
Under torchrun every rank stops at the same step (the flag is all-reduced each step).
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: Path, checkpoint: Path | None):
        self.signum, self.step, self.run_dir, self.checkpoint = signum, step, run_dir, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped after step {step}; checkpoint {checkpoint or '(none)'}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def resume_command(argv: list[str], run_dir: Path) -> str:
    """`chattune ARGV` (e.g. train CONFIG key=value ... --nproc 2) continuing `run_dir`: any
    run_dir= and --resume are replaced by run_dir=RUN_DIR --resume auto."""
    positional, options, args = [], [], iter(argv)
    for item in args:
        if item in ("--resume", "--nproc"):
            value = next(args, "")
            if item == "--nproc":
                options += [item, value]
        elif item.startswith("-"):
            options += [] if item.startswith("--resume=") else [item]
        elif item.partition("=")[0].strip() != "run_dir":
            positional.append(item)
    return shlex.join(["chattune", *positional, f"run_dir={run_dir}", *options, "--resume", "auto"])


class StopOnSignal(TrainerCallback):
    """Turns SIGINT/SIGTERM into 'save a checkpoint and stop' at the next step end."""

    def __init__(self):
        self.signum: int | None = None
        self.stopped_at: int | None = None  # global step of the checkpoint written on stop

    @contextmanager
    def handling_signals(self):
        """Install the handlers for the duration of trainer.train() (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"\n{name} again: aborting now; the newest complete checkpoint is kept\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, f"\n{name}: finishing the current step, then saving a checkpoint "
                    "(send it again to abort at once)\n".encode())

    def on_step_end(self, args, state, control, **kwargs):
        signum = _agreed_signal(self.signum, args)
        if signum:
            self.signum = signum
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def raise_if_stopped(self, run_dir: Path) -> None:
        """After trainer.train(): raise if it stopped on a signal (a signal after the last step is ignored)."""
        if self.stopped_at is None:
            return
        from chattune.rundir import CHECKPOINTS
        from chattune.training.checkpoints import latest_checkpoint

        raise TrainingInterrupted(self.signum, self.stopped_at, run_dir, latest_checkpoint(run_dir / CHECKPOINTS))


def _agreed_signal(signum: int | None, args) -> int:
    """The signal any rank received (0 for none); without torch.distributed, this process's."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return signum or 0
    import torch

    flag = torch.tensor([signum or 0], device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
