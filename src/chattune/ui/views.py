"""What the web UI shows, as JSON: the config form, validation per field, runs, inspection; no HTTP.

Every value comes from the Python API (chattune/api.py) and the run dir readers (report/runinfo.py);
this module only reshapes them for the page.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from chattune import rundir
from chattune.config import ConfigError, RunConfig

# The fields the form edits (everything else: the YAML box, or the CLI's dotted keys).
FORM_FIELDS = ("name", "model.name", "model.quantize", "data.path", "data.max_length", "data.eval_ratio",
               "lora.method", "lora.r", "lora.alpha", "train.epochs", "train.max_steps", "train.lr",
               "train.batch_size", "train.grad_accum", "train.precision")
BUILTIN_DATA = ("builtin:self-cognition", "builtin:topic-classify")
_KEY_IN_LINE = re.compile(r"^\s*- (?:unknown key )?'?([A-Za-z_][\w.]*)'?[: ]")


def form_fields() -> list[dict]:
    """key, default, description and allowed values of each form field, read from the config model."""
    fields = []
    for key in FORM_FIELDS:
        section, _, name = key.rpartition(".")
        model = RunConfig.model_fields[section].annotation if section else RunConfig
        info = model.model_fields[name]
        choices = getattr(info.annotation, "__args__", None)
        literal = choices if choices and all(isinstance(c, str) for c in choices) else None
        fields.append({"key": key, "default": info.default if _plain(info.default) else None,
                       "help": info.description or "", "choices": list(literal) if literal else None})
    return fields


def _plain(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def field_errors(err: ConfigError) -> dict[str, list[str]]:
    """A ConfigError's lines by the dotted key they name ("" when none): shown next to that field."""
    found: dict[str, list[str]] = {}
    for line in str(err).splitlines()[1:] or str(err).splitlines():
        match = _KEY_IN_LINE.match(line)
        key = match.group(1) if match else ""
        found.setdefault(key, []).append(line.strip().removeprefix("- "))
    return found


def form_to_overrides(values: dict) -> dict:
    """The form's {dotted key: text}: empty fields are left to the config's default."""
    from chattune.config import parse_override_value

    return {key: parse_override_value(key, text) if isinstance(text, str) else text
            for key, text in values.items() if text not in ("", None)}


def cli_command(values: dict) -> str:
    """The `chattune train` command that trains what the form holds."""
    return shlex.join(["chattune", "train", *[f"{k}={v}" for k, v in values.items() if v not in ("", None)]])


def run_dirs(runs_dir: Path) -> list[Path]:
    """Folders under runs_dir holding a run: finished (config.yaml), training or interrupted (metrics, checkpoints)."""
    if not runs_dir.is_dir():
        return []
    marks = (rundir.CONFIG, rundir.METRICS, rundir.CHECKPOINTS)
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and any((p / m).exists() for m in marks))


def run_config(path: Path) -> dict:
    """config.yaml; for a run not finished yet, the config its newest checkpoint saved ({} if none)."""
    if (path / rundir.CONFIG).is_file():
        return rundir.RunDir(path).config_dict()
    from chattune.training.checkpoints import STATE, latest_checkpoint

    checkpoint = latest_checkpoint(path / rundir.CHECKPOINTS)
    return json.loads((checkpoint / STATE).read_text(encoding="utf-8")).get("config") or {} if checkpoint else {}


def run_rows(runs_dir: Path, jobs) -> list[dict]:
    """One row per run under runs_dir: name, model, data, steps, final loss, best metric, state."""
    from chattune.report.runinfo import read_run

    rows = []
    for path in run_dirs(runs_dir):
        run, job = rundir.RunDir(path), jobs.for_run(path)
        config, summary, records = run_config(path), run.summary(), run.metrics()
        checkpointed = (path / rundir.CHECKPOINTS).is_dir() and any((path / rundir.CHECKPOINTS).iterdir())
        state = job.state() if job else "finished" if summary else "interrupted" if checkpointed else "incomplete"
        rows.append({
            "name": path.name, "model": str((config.get("model") or {}).get("name", "-")),
            "data": str((config.get("data") or {}).get("path", "-")),
            "steps": summary.get("steps", records[-1]["step"] if records else 0),
            "final_loss": summary.get("final_loss"), "state": state, "has_checkpoint": checkpointed,
            "best_metric": read_run(path).best_metric() if summary else "-", "forgetting": summary.get("forgetting"),
        })
    return rows


def find_run(runs_dir: Path, name: str) -> Path:
    """The run called `name` directly under runs_dir; a name never opens any other path."""
    for path in run_dirs(runs_dir):
        if path.name == name:
            return path
    raise KeyError(name)
