"""Experiment trackers for a training run: SwanLab (local/offline/cloud), TensorBoard, or none.

Every tracker writes inside the run dir. SwanLab needs no account: without SWANLAB_API_KEY
it runs in "local" mode (viewable with `swanlab watch RUN_DIR/swanlog`, needs the swanboard
package) or, without swanboard, "offline" mode (files to upload later with `swanlab sync`).
With SWANLAB_API_KEY set, "auto" logs in and syncs the run to the cloud. Whatever the
tracker, metrics.jsonl and loss.png are written by training/callbacks.py and training/plots.py.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chattune.config import RunConfig

SWANLOG = "swanlog"
TENSORBOARD = "tensorboard"
TEXT_ROWS = 20  # prediction rows sent to SwanLab per evaluation

# metrics.jsonl key -> tracker key
KEY_NAMES = {
    "loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s", "trained_tokens_per_s": "train/trained_tokens_per_s",
    "tokens_seen": "train/tokens", "trained_tokens": "train/trained_tokens", "eval_loss": "eval/loss",
}


class TrackingError(ValueError):
    """A tracker was asked for but cannot run here."""


def tracker_names(value: str | list[str]) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    return [n for n in dict.fromkeys(names) if n != "none"]


def check_available(names: list[str]) -> None:
    """Fail before any model loads when a requested tracker's package is missing."""
    packages = {"swanlab": "swanlab", "tensorboard": "tensorboard"}
    for name in names:
        if importlib.util.find_spec(packages[name]) is None:
            raise TrackingError(
                f"train.tracking includes {name!r} but the {packages[name]} package is not installed "
                f"(pip install {packages[name]}); or set train.tracking=none"
            )


def swanlab_mode(requested: str) -> str:
    """'auto': cloud when SWANLAB_API_KEY is set, else local (swanboard installed) or offline."""
    if requested != "auto":
        return requested
    if os.environ.get("SWANLAB_API_KEY"):
        return "cloud"
    return "local" if importlib.util.find_spec("swanboard") else "offline"


class SwanLabTracker:
    """Logs the resolved config, each metrics record and prediction tables to SwanLab.

    Kept instead of swanlab.integration.transformers.SwanLabCallback (swanlab 0.10.3, read in
    its source): that callback logs the Trainer's own `logs` only (learning_rate as
    train/learning_rate, no token counts), while this tracker logs chattune's metrics.jsonl
    records: train/lr, train/tokens_per_s and train/trained_tokens from training/callbacks.py,
    eval/<metric> and the prediction tables from in-training eval, which reach no Trainer log;
    and `chattune eval` logs through it with no Trainer at all. Checked by
    tests/test_tracking.py::test_training_with_swanlab_logs_expected_keys and
    ::test_eval_of_a_swanlab_run_adds_its_predictions_table.
    """

    def __init__(self, run_path: Path, project: str, mode: str, name: str):
        self.log_dir = run_path / SWANLOG
        self.project, self.mode, self.name = project, swanlab_mode(mode), name
        self.logged_keys: set[str] = set()
        self._run = None

    def start(self, config: dict) -> None:
        import swanlab

        if self.mode == "cloud":
            swanlab.login(api_key=os.environ["SWANLAB_API_KEY"])
        self._run = swanlab.init(
            project=self.project, experiment_name=self.name, config=config,
            mode="online" if self.mode == "cloud" else self.mode, log_dir=str(self.log_dir),
        )

    def log(self, record: dict) -> None:
        data = {KEY_NAMES.get(k, f"eval/{k[5:]}" if k.startswith("eval_") else k): v
                for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, int | float)}
        if data:
            self._run.log(data, step=int(record["step"]))
            self.logged_keys.update(data)

    def log_predictions(self, step: int, rows: list[dict]) -> None:
        """Seed 002's table: one swanlab.Text per row (prompt, reference, prediction)."""
        import swanlab

        texts = [
            swanlab.Text(f"prompt: {r['prompt']}\n\nreference: {r['reference']}\n\nprediction: {r['prediction']}",
                         caption=r["prediction"][:80])
            for r in rows[:TEXT_ROWS]
        ]
        if texts:
            self._run.log({"eval/predictions": texts}, step=step)
            self.logged_keys.add("eval/predictions")

    def finish(self, failed: bool = False) -> None:
        if self._run is not None:
            self._run.finish(state="crashed" if failed else "success")
            self._run = None


def tensorboard_callback(run_path: Path):
    """transformers' own TensorBoard callback, writing to RUN_DIR/tensorboard."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_path / TENSORBOARD)))


def build_trackers(cfg: RunConfig, run_path: Path) -> tuple[list[SwanLabTracker], list]:
    """(record-level trackers, extra Trainer callbacks) for cfg.train.tracking."""
    names = tracker_names(cfg.train.tracking)
    check_available(names)
    trackers, callbacks = [], []
    if "swanlab" in names:
        trackers.append(SwanLabTracker(run_path, cfg.train.swanlab_project, cfg.train.swanlab_mode, run_path.name))
    if "tensorboard" in names:
        callbacks.append(tensorboard_callback(run_path))
    return trackers, callbacks
