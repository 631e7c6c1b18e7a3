"""Training jobs of the web UI: each one a `chattune train` process; start, stop (SIGINT), resume, watch.

A job runs in its own process, so the UI stays responsive, a crash cannot take the UI down, and
stop is the CLI's own interruption path: SIGINT makes the trainer write a checkpoint and exit 130
(training/interrupt.py); resume is `chattune train RUN/config.yaml --resume RUN`. No training logic
lives here: progress and curves are read from the run dir's metrics.jsonl as the trainer writes it.
Each job's process takes the run dir's writer lock itself (runlock.py); resume refuses at once a
run dir another process is writing.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chattune import rundir, runlock
from chattune.io import write_text_atomic

LOG_TAIL_LINES = 40
INTERRUPTED_CODES = {130, 143}  # SIGINT / SIGTERM: stopped with a checkpoint


@dataclass
class Job:
    id: str
    run_dir: Path
    argv: list[str]
    log: Path
    process: subprocess.Popen
    stopping: bool = False
    resumed_from: str | None = None

    def state(self) -> str:
        code = self.process.poll()
        if code is None:
            return "stopping" if self.stopping else "running"
        if code == 0:
            return "finished"
        return "stopped" if code in INTERRUPTED_CODES or self.stopping else "failed"

    def view(self) -> dict:
        """What the UI shows: state, progress, loss and eval curves, the end of the log."""
        records = rundir.RunDir(self.run_dir).metrics() if self.run_dir.is_dir() else []
        steps = [r for r in records if "loss" in r]
        last = records[-1] if records else {}
        return {"id": self.id, "run": self.run_dir.name, "run_dir": str(self.run_dir), "state": self.state(),
                "returncode": self.process.poll(), "step": last.get("step", 0),
                "max_steps": last.get("max_steps"), "loss": [[r["step"], r["loss"]] for r in steps],
                "eval_loss": [[r["step"], r["eval_loss"]] for r in records if "eval_loss" in r],
                "log": self.log_tail(), "command": " ".join(self.argv[2:])}

    def log_tail(self) -> str:
        if not self.log.is_file():
            return ""
        lines = self.log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()
        return "\n".join(line for line in lines[-LOG_TAIL_LINES:] if line.strip())


@dataclass
class Jobs:
    """Every job this UI started; `work` holds their config files and logs (never the run dirs)."""

    work: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def start(self, cfg) -> Job:
        """Train `cfg` (a validated RunConfig whose run_dir is free) in a new process."""
        self.work.mkdir(parents=True, exist_ok=True)
        job_id = f"job{next(self._ids)}"
        config_file = self.work / f"{job_id}.yaml"
        write_text_atomic(config_file, cfg.to_yaml())
        return self._launch(job_id, Path(cfg.run_dir), ["train", str(config_file)])

    def resume(self, run_dir: Path, config: dict) -> Job:
        """Continue an interrupted run from its newest checkpoint (the CLI's --resume auto), with the
        config it was trained with (ui/views.py run_config)."""
        running = [j for j in self.jobs.values() if j.run_dir == run_dir and j.process.poll() is None]
        if running:
            raise ValueError(f"{run_dir.name} is still training ({running[0].id})")
        if who := runlock.busy_holder(run_dir):  # a CLI train, another UI: the job would be refused
            raise ValueError(f"{run_dir.name} is being written by another chattune process ({who})")
        if not config:
            raise ValueError(f"{run_dir.name} has no checkpoint to resume from")
        job_id = f"job{next(self._ids)}"
        config_file = self.work / f"{job_id}.yaml"
        write_text_atomic(config_file, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        job = self._launch(job_id, run_dir, ["train", str(config_file), f"run_dir={run_dir}", "--resume", "auto"])
        job.resumed_from = str(run_dir)
        return job

    def _launch(self, job_id: str, run_dir: Path, argv: list[str]) -> Job:
        log = self.work / f"{job_id}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "chattune", *argv]
        with log.open("w", encoding="utf-8") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL)
        job = Job(job_id, run_dir, [sys.executable, "-m", "chattune", *argv], log, process)
        with self.lock:
            self.jobs[job_id] = job
        return job

    def stop(self, job_id: str) -> Job:
        """SIGINT: the trainer saves a checkpoint at the next step and exits (resume continues it)."""
        job = self.jobs[job_id]
        if job.process.poll() is None:
            job.stopping = True
            job.process.send_signal(signal.SIGINT)
        return job

    def for_run(self, run_dir: Path) -> Job | None:
        found = [j for j in self.jobs.values() if j.run_dir == run_dir]
        return found[-1] if found else None

    def close(self) -> None:
        """Stop what still runs when the UI exits (each keeps its checkpoint)."""
        for job in self.jobs.values():
            if job.process.poll() is None:
                job.process.send_signal(signal.SIGINT)
        for job in self.jobs.values():
            try:
                job.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.process.kill()
