"""`chattune eval`: score a run dir or a model on a data file and save what it said.

Reads every row first (bad data fails before any model loads), generates once for all
generation metrics, computes held-out loss on trained tokens when asked, and writes
`predictions.jsonl` + `summary.json` into RUN_DIR/eval/<data>-<timestamp>/ (or --out).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from chattune import rundir
from chattune.data.formats import DataError, RowSpec, row_to_messages
from chattune.data.templates import with_system
from chattune.infer.predict import load_prompt_rows
from chattune.metrics import GENERATION_METRICS, Score, default_labels, score_generation
from chattune.rundir import EVAL_DIR, EVAL_SUMMARY, PREDICTIONS


@dataclass
class EvalRow:
    source: str  # file:line
    prompt: list[dict]  # messages ending with the user turn
    reference: str | None  # the final assistant answer, when the row has one


@dataclass
class EvalResult:
    out_dir: Path
    summary: dict
    rows: list[dict]


def row_spec_for(target: str, settings: list[str] | None = None, like: str | None = None) -> RowSpec:
    """How to read the eval file: as `like` (or the target run dir) was trained, then `settings`.

    `settings` are `data.KEY=VALUE` overrides (data.prompt, data.response, data.system,
    data.columns, data.format), so a base model and a run read one raw task file the same way.
    """
    from chattune.config import ConfigError, load_config
    from chattune.data.dataset import row_spec

    source = like or (target if rundir.is_run_dir(target) else None)
    for item in settings or []:
        if not item.strip().startswith("data."):
            raise ConfigError(f"--set {item!r}: only data.* keys say how rows are read (e.g. data.prompt=...)")
    config_file = rundir.open_run_dir(source).path / rundir.CONFIG if source else None
    return row_spec(load_config(config_file, settings).data)


def load_eval_rows(path: str | Path, spec: RowSpec, need_reference: bool) -> list[EvalRow]:
    rows = []
    for prompt_row in load_prompt_rows(path, spec):
        try:
            messages, _ = row_to_messages(prompt_row.row, prompt_row.source, spec)
        except DataError:  # an alpaca row without its answer field: the prompt was valid
            messages = []
        reference = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None
        if need_reference and not (reference or "").strip():
            raise DataError(prompt_row.source, "no reference answer (output / final assistant message) to score against")
        rows.append(EvalRow(prompt_row.source, prompt_row.messages, reference))
    if not rows:
        raise DataError(str(path), "no rows to evaluate")
    return rows


def heldout_loss(model, tokenizer, conversations: list[list[dict]], stop_ids: set[int], batch_size: int = 8) -> dict:
    """Mean cross-entropy over trained (answer) tokens, encoded exactly as in training."""
    import torch

    from chattune.data.collate import PadCollator
    from chattune.data.templates import encode_conversation
    from chattune.train.loss import shifted_lm_loss

    encoded = [encode_conversation(tokenizer, messages, stop_ids) for messages in conversations]
    collate = PadCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            n = int((labels[:, 1:] != -100).sum())
            # the loss from the logits: a model given labels may add terms of its own (AdaLoRA's penalty)
            total += float(shifted_lm_loss(model(**batch).logits, labels)) * n
            count += n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "trained_tokens": count}


def default_out_dir(target: str, data: str | Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(data)).stem) or "data"
    if rundir.is_run_dir(target):
        return Path(target) / EVAL_DIR / f"{stem}-{stamp}"
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", str(target)).strip("-")
    return Path("evals") / f"{model}-{stem}-{stamp}"


def score_rows(rows: list[EvalRow], generated, metrics: list[str], labels: list[str] | None):
    """Generation metrics over rows; returns ({name: Score}, the labels used for accuracy)."""
    predictions = [g.text for g in generated]
    references = [r.reference or "" for r in rows]
    stopped = [g.stopped for g in generated]
    if "accuracy" in metrics:
        labels = labels or default_labels(references)
    scores = {
        name: score_generation(name, predictions, references, stopped, labels)
        for name in metrics if name in GENERATION_METRICS
    }
    return scores, labels


def prediction_records(rows: list[EvalRow], generated, scores: dict[str, Score], labels) -> list[dict]:
    from chattune.metrics import parse_label

    records = []
    for i, (row, gen) in enumerate(zip(rows, generated, strict=True)):
        record = {"source": row.source, "prompt": row.prompt[-1]["content"], "reference": row.reference,
                  "prediction": gen.text, "stopped": gen.stopped}
        if "accuracy" in scores:
            record["label"] = parse_label(gen.text, labels)
        for name, score in scores.items():
            if name != "stop_rate":
                record[name] = score.per_row[i]
        records.append(record)
    return records


def run_eval(target: str, data: str | Path, metrics: list[str], labels: list[str] | None = None,
             max_new_tokens: int = 64, batch_size: int = 8, device: str = "cpu",
             out: str | Path | None = None, console=None, settings: list[str] | None = None,
             like: str | None = None) -> EvalResult:
    """Evaluate `target` (run dir or model) on `data`; write and return the results.

    Rows are read as `like` (a run dir) or the target run was trained, then `settings` (row_spec_for).
    """
    from rich.console import Console

    from chattune.infer.chat import ChatModel
    from chattune.model.generate import generate_all

    console = console or Console(stderr=True)
    need_reference = any(m != "stop_rate" for m in metrics)
    rows = load_eval_rows(data, row_spec_for(target, settings, like), need_reference)  # before the model loads
    chat = ChatModel.load(target, device=device)
    if like:
        chat.use_run_format(like)
    extra = {}
    if "loss" in metrics:  # first: seconds, where generation takes minutes
        convs = [with_system([*r.prompt, {"role": "assistant", "content": r.reference}], chat.system) for r in rows]
        extra = heldout_loss(chat.model, chat.tokenizer, convs, chat.stop_ids, batch_size)
    generated, scores = [], {}
    if any(m in GENERATION_METRICS for m in metrics):
        with _progress(console) as progress:
            task = progress.add_task("generate", total=len(rows))
            generated = generate_all(chat.model, chat.tokenizer, [r.prompt for r in rows], chat.stop_ids,
                                     max_new_tokens, chat.system, batch_size, lambda n: progress.advance(task, n))
        scores, labels = score_rows(rows, generated, metrics, labels)
    values = {name: score.value for name, score in scores.items()}
    if extra:
        values["loss"], values["perplexity"] = extra["loss"], extra["perplexity"]
    summary = {
        "target": str(target), "data": str(data), "rows": len(rows), "metrics": values,
        "max_new_tokens": max_new_tokens, "created": datetime.now().isoformat(timespec="seconds"),
    }
    if "accuracy" in scores:
        summary["labels"] = labels
        summary["unparseable"] = [rows[i].source for i in scores["accuracy"].unparseable]
    if "loss" in extra:
        summary["trained_tokens"] = extra["trained_tokens"]
    records = prediction_records(rows, generated, scores, labels) if generated else []
    out_dir = Path(out) if out else default_out_dir(target, data)
    rundir.write_eval_folder(out_dir, summary, records)
    if rundir.is_run_dir(target):
        log_to_run_trackers(Path(target), out_dir, summary, records)
    return EvalResult(out_dir, summary, records)


def log_to_run_trackers(run_path: Path, out_dir: Path, summary: dict, records: list[dict]) -> None:
    """A run trained with train.tracking=swanlab gets this evaluation in its SwanLab log (seed 002's table).

    It is a new experiment, `<run>-eval-<data-time>`, in the run's own swanlog/ and project, holding the
    metrics and the predictions as swanlab.Text rows, so `swanlab watch RUN_DIR/swanlog` shows both.
    """
    from chattune.train.tracking import SwanLabTracker, tracker_names

    train_cfg = rundir.open_run_dir(run_path).config().train
    if "swanlab" not in tracker_names(train_cfg.tracking):
        return
    tracker = SwanLabTracker(run_path, train_cfg.swanlab_project, train_cfg.swanlab_mode,
                             f"{run_path.name}-eval-{out_dir.name}")
    tracker.start({"target": summary["target"], "data": summary["data"], "rows": summary["rows"]})
    try:
        tracker.log({"step": 0, **{f"eval_{name}": value for name, value in summary["metrics"].items()}})
        tracker.log_predictions(0, records)
    finally:
        tracker.finish()


def _progress(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console)


def print_summary(result: EvalResult, console) -> None:
    from rich.table import Table

    table = Table(title=f"eval of {result.summary['target']} on {result.summary['data']} ({result.summary['rows']} rows)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.summary["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    unparseable = result.summary.get("unparseable") or []
    if unparseable:
        shown = ", ".join(unparseable[:10]) + (" ..." if len(unparseable) > 10 else "")
        console.print(f"[yellow]{len(unparseable)} answers name no single allowed label[/] (counted wrong): {shown}")
    console.print(f"[green]wrote[/] {result.out_dir / PREDICTIONS} and {result.out_dir / EVAL_SUMMARY}")
