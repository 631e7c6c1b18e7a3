"""Read what a run dir holds for reports: config, summary, data stats, metrics, saved evals.

Missing optional files read as empty; only config.yaml is required.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chattune import rundir
from chattune.eval.runner import EVAL_DIR, EVAL_SUMMARY, PREDICTIONS


@dataclass
class SavedEval:
    path: Path
    summary: dict
    predictions: list[dict] = field(default_factory=list)


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


def _json(path: Path, default):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def saved_evals(run_path: Path) -> list[SavedEval]:
    """Every RUN_DIR/eval/*/summary.json, oldest first."""
    found = []
    for folder in sorted((run_path / EVAL_DIR).glob("*/")):
        summary = _json(folder / EVAL_SUMMARY, None)
        if summary is not None:
            found.append(SavedEval(folder, summary, _jsonl(folder / PREDICTIONS)))
    return sorted(found, key=lambda e: e.summary.get("created", ""))


def read_run(path: str | Path) -> RunInfo:
    run_path = Path(path)
    config_file = run_path / rundir.CONFIG
    if not config_file.is_file():
        raise rundir.RunDirError(f"{run_path}: not a run dir (no {rundir.CONFIG})")
    return RunInfo(
        path=run_path,
        config=yaml.safe_load(config_file.read_text(encoding="utf-8")) or {},
        summary=_json(run_path / rundir.SUMMARY, {}),
        data_stats=_json(run_path / rundir.DATA_STATS, {}),
        records=_jsonl(run_path / rundir.METRICS),
        evals=saved_evals(run_path),
    )


def find_runs(parent: str | Path) -> list[Path]:
    """Run dirs directly inside `parent` (or `parent` itself), sorted by name."""
    parent = Path(parent)
    if (parent / rundir.CONFIG).is_file():
        return [parent]
    return sorted(p for p in parent.iterdir() if (p / rundir.CONFIG).is_file()) if parent.is_dir() else []
