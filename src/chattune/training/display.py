"""Show a training run as it goes and sum it up at the end; it only prints: no metric, no file.

On a terminal (stdout a TTY): one live status line (step/total and a bar, the smoothed loss, lr,
grad norm, trained tokens/s, ETA); each evaluation adds a permanent line with the best so far.
Elsewhere (CI logs, `> file`, the UI's job log): one plain line per logging step and per
evaluation. `json`: each metrics.jsonl record as one JSON line on stdout, people's text on stderr.
`quiet`: only the summary's one line. The text is training/display_text.py's; the numbers are
MetricsLogger's records (training/callbacks.py), passed here as it writes them; transformers' own
printers (a dict per step, the tqdm bar) are taken off the Trainer by `without_printers`. Only
rank 0 prints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback

from chattune.metrics import HIGHER_IS_BETTER
from chattune.training.display_text import (
    Smoother,
    StepView,
    eta,
    eval_line,
    fit_status,
    step_line,
    summary_line,
    summary_rows,
)
from chattune.training.distributed import is_main
from chattune.training.evaluate import BestTracker

FORMATS = ("auto", "plain", "json")  # auto: live on a terminal, plain elsewhere
EVAL_EXTRAS = ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies")
# what the Trainer adds by itself (disable_tqdm=True swaps the bar for the dict printer)
PRINTERS = ("PrinterCallback", "ProgressCallback", "NotebookProgressCallback")


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def without_printers(trainer):
    """`trainer` without transformers' own log printers (the dict per step, the tqdm bars)."""
    for callback in list(trainer.callback_handler.callbacks):
        if type(callback).__name__ in PRINTERS:
            trainer.remove_callback(callback)
    return trainer


def with_display(callbacks: tuple) -> tuple:
    """`callbacks` holding one TrainingDisplay: the caller's, or one that picks live or plain."""
    return callbacks if display_in(callbacks) else (*callbacks, TrainingDisplay())


def display_in(callbacks) -> TrainingDisplay | None:
    return next((c for c in callbacks if isinstance(c, TrainingDisplay)), None)


def quiet_libraries() -> None:
    """--quiet: no library progress bars, warnings or advice lines (errors still print)."""
    import warnings

    for name in (
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_DATASETS_DISABLE_PROGRESS_BARS",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS",
    ):
        os.environ[name] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.simplefilter("ignore")


class TrainingDisplay(TrainerCallback):
    """A run's progress on stdout. `log_format`: auto (live on a terminal, plain lines elsewhere),
    plain or json; `quiet`: no progress and no messages, only the summary's one line.

    MetricsLogger passes it each record (`record`); `finish` prints the summary block.
    """

    def __init__(self, log_format: str = "auto", quiet: bool = False):
        if log_format not in FORMATS:
            raise ValueError(f"log format {log_format!r}; allowed: {', '.join(FORMATS)}")
        auto = "live" if stdout_is_terminal() else "plain"
        self.format = auto if log_format == "auto" else log_format
        self.quiet = quiet
        self.view, self.smoother = StepView(), Smoother()
        self.metric_key, self.best = "eval_loss", BestTracker(higher_is_better=False)
        self._pending: dict = {}  # this evaluation's figures, shown at on_evaluate
        self._live = None
        self._started = self._last_step_time = time.perf_counter()
        self._start_step = 0

    def messages_console(self, console: Console | None) -> Console | None:
        """The console for the run's other messages: a silent one under `quiet`."""
        return Console(stderr=True, quiet=True) if self.quiet else console

    def start_run(self, metric: str, records: list[dict] | tuple = ()) -> None:
        """Which held-out figure is best (train.metric), and a resumed run's earlier records."""
        self.metric_key = "eval_loss" if metric == "loss" else f"eval_{metric}"
        self.best = BestTracker(HIGHER_IS_BETTER.get(metric, False))
        for record in records:
            if "loss" in record:
                self.smoother.add(record["loss"])
            if self.metric_key in record:
                self.best.update(record["step"], record[self.metric_key])

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = self._last_step_time = time.perf_counter()
        self._start_step = self.view.step = state.global_step
        self.view.total = state.max_steps
        if self.format == "live" and not self.quiet and is_main():
            self._live = start_live(self)

    def on_step_end(self, args, state, control, **kwargs):
        self.view.step, self._last_step_time = state.global_step, time.perf_counter()
        if self._live is not None:
            self._live.refresh()

    def on_evaluate(self, args, state, control, **kwargs):
        self._show_eval(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._show_eval(state.global_step)
        self.close()

    def record(self, record: dict) -> None:
        """One metrics.jsonl record as MetricsLogger writes it (it calls this on rank 0 only)."""
        if not is_main():
            return
        if "loss" in record:
            self._take_step(record)
        self._pending.update({k: v for k, v in record.items() if k.startswith("eval_")})
        if self.format == "json":
            print(json.dumps(record, ensure_ascii=False), flush=True)
        elif "loss" in record and self.format == "plain" and not self.quiet:
            print(step_line(self.view), flush=True)

    def view_now(self) -> StepView:
        """The status as of now: the ETA counts down between steps."""
        now = time.perf_counter()
        left = eta(
            self.view.step, self.view.total, self._start_step, self._last_step_time - self._started
        )
        since = now - self._last_step_time
        return StepView(
            **{**self.view.__dict__, "eta": None if left is None else max(left - since, 0)}
        )

    def finish(self, summary: dict, run_dir: Path) -> None:
        """The summary block (or its one line under `quiet`); on stderr in json mode."""
        if not is_main():
            return
        self.close()
        best = self.best if self.best.best is not None else None
        stream = sys.stderr if self.format == "json" else sys.stdout
        if self.quiet:
            print(summary_line(summary, run_dir, best), file=stream, flush=True)
        elif self.format == "live":
            print_block(Console(), summary_rows(summary, run_dir, best))
        else:
            rows = summary_rows(summary, run_dir, best)
            print(
                "\n".join(["done", *(f"  {label:<11} {text}" for label, text in rows)]),
                file=stream,
                flush=True,
            )

    def close(self) -> None:
        """Stop the live line (at the end, or when training fails)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _take_step(self, record: dict) -> None:
        view = self.view
        view.step, view.total = record["step"], record.get("max_steps", view.total)
        view.loss, view.smoothed = record["loss"], self.smoother.add(record["loss"])
        view.lr, view.grad_norm = record.get("lr"), record.get("grad_norm")
        view.tokens_per_s, view.margin = (
            record.get("trained_tokens_per_s"),
            record.get("rewards/margins"),
        )
        view.eta = self.view_now().eta

    def _show_eval(self, step: int) -> None:
        values, self._pending = self._pending, {}
        if not values:
            return
        key = self.metric_key if self.metric_key in values else "eval_loss"
        if key == self.metric_key:
            self.best.update(step, values[key])
        ordered = {k: values[k] for k in (key, *EVAL_EXTRAS) if k in values}
        line = eval_line(step, self.view.total, ordered, self.best)
        if self.quiet or self.format == "json":
            return
        if self._live is not None:
            self._live.console.print(styled_eval(line), highlight=False)
        else:
            print(line, flush=True)


class _Status:
    """The live line, drawn afresh at each refresh."""

    def __init__(self, display: TrainingDisplay):
        self.display = display

    def __rich_console__(self, console, options):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        view = self.display.view_now()
        head, bar, tail = fit_status(view, options.max_width)
        grid = Table.grid(padding=(0, 2))
        cells = [Text(head, style="bold")]
        if bar:
            cells.append(ProgressBar(total=max(view.total, 1), completed=view.step, width=bar))
        grid.add_row(*cells, Text(tail, no_wrap=True, overflow="ellipsis"))
        yield grid


def start_live(display: TrainingDisplay):
    from rich.live import Live

    live = Live(_Status(display), console=Console(), refresh_per_second=2, transient=False)
    live.start()
    return live


def styled_eval(line: str):
    from rich.text import Text

    text = Text(line)
    text.stylize("bold cyan", 0, len("eval"))
    text.highlight_words(["best so far"], "bold green")
    return text


def print_block(console: Console, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, text in rows:
        grid.add_row(label, text)
    console.rule("[bold green]done", align="left")
    console.print(grid, highlight=False)
