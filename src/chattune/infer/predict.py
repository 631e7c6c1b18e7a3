"""Batch predictions for a data file: one `prediction` per input row, written as JSONL.

Rows are read as prompts by data/prompts.py, as the run was trained (its RowSpec). A row's
final assistant answer, if present, is the reference: it is kept in the output row but
never shown to the model. Prompts are generated in batches with left padding and the KV
cache, shortest-first to waste little padding, and returned in input order. This module
does not score predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

from chattune.data.formats import DataError
from chattune.data.prompts import PromptRow, load_prompt_rows
from chattune.infer.chat import ChatModel, GenerationSettings, run_row_spec
from chattune.io import write_text_atomic
from chattune.model import generate as batched

__all__ = ["PromptRow", "load_prompt_rows", "predict_all", "run_predict", "write_predictions"]

PREDICT_BATCH_SIZE = 64  # fastest measured for 64 prompts on CPU (bench/README.md); cli.py repeats it, importing nothing


def predict_all(chat: ChatModel, conversations: list[list[dict]], settings: GenerationSettings,
                batch_size: int = PREDICT_BATCH_SIZE, advance=None) -> list[str]:
    """Replies in input order; batches are formed shortest-prompt-first to limit padding."""
    generated = batched.generate_all(
        chat.model, chat.tokenizer, conversations, chat.stop_ids, settings.max_new_tokens, chat.system,
        batch_size=batch_size, advance=advance, sampling=settings.kwargs(),
    )
    return [g.text for g in generated]


def write_predictions(path: str | Path, rows: list[PromptRow], predictions: list[str]) -> None:
    lines = [json.dumps({**r.row, "prediction": p}, ensure_ascii=False) + "\n" for r, p in zip(rows, predictions, strict=True)]
    write_text_atomic(Path(path), "".join(lines))
    Path(path).chmod(0o644)  # the temp file behind the atomic write is created 0600


def run_predict(target: str, data: str | Path, out: str | Path, settings: GenerationSettings,
                batch_size: int = PREDICT_BATCH_SIZE, device: str = "cpu", console=None, dtype: str = "auto") -> int:
    """Read `data`, predict with `target` (run dir or model), write `out`; returns the row count."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = console or Console(stderr=True)
    rows = load_prompt_rows(data, run_row_spec(target))  # bad data fails before the model loads
    if not rows:
        raise DataError(str(data), "no rows to predict")
    chat = ChatModel.load(target, device=device, dtype=dtype)
    with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("predict", total=len(rows))
        predictions = predict_all(chat, [r.messages for r in rows], settings, batch_size,
                                  advance=lambda n: progress.advance(task, n))
    write_predictions(out, rows, predictions)
    console.print(f"[green]wrote[/] {len(rows)} predictions to {out}")
    return len(rows)
