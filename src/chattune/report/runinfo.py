"""Read what a run dir holds for reports: config, summary, data stats, metrics, saved evals.

Missing optional files read as empty; only config.yaml is required. The reading itself is
rundir.RunDir's; this module gathers it into one RunInfo and picks what a report headlines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chattune import rundir
from chattune.rundir import SavedEval


@dataclass
class RunInfo:
    path: Path
    config: dict
    summary: dict
    data_stats: dict
    records: list[dict]
    evals: list[SavedEval]

    @property
    def name(self) -> str:
        return self.path.name

    def best_metric(self) -> str:
        """In-training best, else the latest saved eval's first metric, else '-'."""
        best = self.summary.get("in_training_eval") or {}
        if best.get("best") is not None:
            return f"{best['metric']} {best['best']:.4f} @{best['best_step']}"
        for saved in reversed(self.evals):
            for name, value in (saved.summary.get("metrics") or {}).items():
                return f"{name} {value:.4f} (eval)"
        return "-"


def read_run(path: str | Path) -> RunInfo:
    run = rundir.RunDir(Path(path))
    if not (run.path / rundir.CONFIG).is_file():
        raise rundir.RunDirError(f"{run.path}: not a run dir (no {rundir.CONFIG})")
    return RunInfo(
        path=run.path,
        config=run.config_dict(),
        summary=run.summary(),
        data_stats=run.data_stats(),
        records=run.metrics(),
        evals=run.evals(),
    )


def find_runs(parent: str | Path) -> list[Path]:
    """Run dirs directly inside `parent` (or `parent` itself), sorted by name."""
    parent = Path(parent)
    if (parent / rundir.CONFIG).is_file():
        return [parent]
    return sorted(p for p in parent.iterdir() if (p / rundir.CONFIG).is_file()) if parent.is_dir() else []
