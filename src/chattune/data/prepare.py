"""Turn a run's data settings into tokenized train/eval examples, with counts: the train stage's data step.

Reads and lints the data (refusing to train on errors, before any model loads), tokenizes both
splits with a progress bar, and reports what was kept, truncated, dropped and skipped. Not here:
the formats and templates themselves (formats.py, templates.py) or batching (collate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from chattune.config import RunConfig
from chattune.data.dataset import tokenize_conversations
from chattune.data.lint import add_skipped, lint_data, nothing_to_train
from chattune.data.templates import stop_token_ids


@dataclass
class PreparedData:
    train: list[dict]
    eval: list[dict]
    stats: dict
    eval_conversations: list = field(default_factory=list)  # untokenized, for generation metrics


def prepare_data(cfg: RunConfig, tokenizer, console: Console) -> PreparedData:
    """Apply data.template, lint (refuse to train on errors), then tokenize both splits."""
    checked = lint_data(cfg.data, tokenizer, cfg.seed)
    for line in checked.report.summary_lines():  # counts per kind; all of them: chattune data inspect
        console.print(line, highlight=False)
    checked.report.raise_if_errors()
    train_convs, eval_convs = checked.train, checked.eval
    stops = stop_token_ids(tokenizer)
    stats = {}
    parts = {}
    with _progress(console) as progress:
        for split, items in (("train", train_convs), ("eval", eval_convs)):
            if not items:
                continue
            task = progress.add_task(f"tokenize {split}", total=len(items))
            parts[split], split_stats = tokenize_conversations(
                tokenizer, items, cfg.data.max_length, cfg.data.truncation, stops,
                progress=lambda task=task: progress.advance(task), mask=cfg.data.mask,
            )
            stats[split] = split_stats.to_dict()
    add_skipped(stats, checked.report, cfg.data)
    if not parts.get("train"):
        raise nothing_to_train(stats.get("train"), cfg.data)
    return PreparedData(parts["train"], parts.get("eval", []), stats, eval_convs)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def report_data(stats: dict, console: Console) -> None:
    for split, s in stats.items():
        console.print(
            f"[bold]{split}[/]: {s['examples']} examples"
            + (f" ({s['replay']} of them general rows from data.replay)" if s.get("replay") else "")
            + f", {s['tokens']} tokens, {s['trained_tokens']} trained; truncated {s['truncated']}, dropped {s['dropped']}"
            + (f" {s['drop_reasons']}" if s["dropped"] else "")
            + (f", skipped {s['skipped']} bad rows {s['skip_reasons']} (data.on_error=skip)" if s.get("skipped") else ""),
            highlight=False,
        )
        if s["turns_without_stop"]:
            console.print(f"[yellow]warning[/]: {s['turns_without_stop']} assistant turns have no end-of-turn token")
