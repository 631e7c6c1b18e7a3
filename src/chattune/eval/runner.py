"""`chattune eval`: score a run dir or a model on a data file and save what it said.

Reads every row first (bad data fails before any model loads), generates once for all
generation metrics, computes held-out loss on trained tokens when asked, and writes
`predictions.jsonl` + `summary.json` into RUN_DIR/eval/<data>-<timestamp>/ (or --out).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from chattune import rundir
from chattune.config import DataConfig, ModelConfig
from chattune.data.formats import RowSpec
from chattune.data.prompts import EvalRow, load_eval_rows
from chattune.metrics import GENERATION_METRICS, Score, default_labels, score_generation
from chattune.rundir import EVAL_DIR, EVAL_SUMMARY, PREDICTIONS


@dataclass
class EvalResult:
    out_dir: Path
    summary: dict
    rows: list[dict]


def data_config_for(target: str, settings: list[str] | None = None, like: str | None = None) -> DataConfig:
    """How to read the eval file: the data settings `like` (or the target run dir) was trained with, then `settings`.

    `settings` are `data.KEY=VALUE` overrides (data.prompt, data.response, data.system,
    data.columns, data.format), so a base model and a run read one raw task file the same way.
    """
    from chattune.config import ConfigError, load_config

    source = like or (target if rundir.is_run_dir(target) else None)
    for item in settings or []:
        if not item.strip().startswith("data."):
            raise ConfigError(f"--set {item!r}: only data.* keys say how rows are read (e.g. data.prompt=...)")
    config_file = rundir.open_run_dir(source).path / rundir.CONFIG if source else None
    return load_config(config_file, settings).data


def row_spec_for(target: str, settings: list[str] | None = None, like: str | None = None,
                 retrieval: bool = True) -> RowSpec:
    """data_config_for's row shape, columns, task prompt and system prompt; with data.retrieval, the
    saved index of `like` (or the target run) fills {examples}, or nothing does when not `retrieval`."""
    from chattune.data.dataset import row_spec

    data_cfg = data_config_for(target, settings, like)
    if not retrieval:
        return row_spec(data_cfg.model_copy(update={"retrieval": None}))
    source = like or (target if rundir.is_run_dir(target) else None)
    retriever = rundir.open_run_dir(source).retriever(data_cfg) if source and data_cfg.retrieval else None
    return row_spec(data_cfg, retriever)


def scoring_examples(target: str, data: str | Path, data_cfg: DataConfig, like: str | None, console):
    """The eval file encoded for the loss exactly as training encoded its eval split (data.prepare_scoring):
    the run's template, mask and truncation; lint findings printed, errors raised before the model loads."""
    from chattune.data.prepare import prepare_scoring
    from chattune.model.load import load_tokenizer

    run_path = like or (target if rundir.is_run_dir(target) else None)
    if run_path:
        run = rundir.open_run_dir(run_path)
        cfg = run.config()
        tokenizer, seed = rundir.run_tokenizer(run, cfg), cfg.seed
    else:
        tokenizer, seed = load_tokenizer(ModelConfig(name=target)), 0
    return prepare_scoring(data_cfg, tokenizer, seed, data, console)


def heldout_loss(model, tokenizer, conversations: list[list[dict]], stop_ids: set[int], batch_size: int = 8) -> dict:
    """Mean cross-entropy over trained (answer) tokens of whole conversations, encoded as in training."""
    from chattune.data.templates import encode_conversation

    encoded = [encode_conversation(tokenizer, messages, stop_ids) for messages in conversations]
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    return examples_loss(model, examples, tokenizer.pad_token_id, batch_size)


def examples_loss(model, examples, pad_token_id: int, batch_size: int = 8) -> dict:
    """Mean cross-entropy over the labelled tokens of {input_ids, labels} examples, padded in batches."""
    import torch

    from chattune.data.collate import PadCollator
    from chattune.training.loss import shifted_lm_loss

    collate = PadCollator(pad_token_id)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = collate(list(examples[start:start + batch_size]))
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            n = int((labels[:, 1:] != -100).sum())
            # the loss from the logits: a model given labels may add terms of its own (AdaLoRA's penalty)
            total += float(shifted_lm_loss(model(**batch).logits, labels)) * n
            count += n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "trained_tokens": count}


def mean_prompt_tokens(chat, rows: list[EvalRow]) -> float:
    """Tokens the model reads per prompt, as generation encodes it (retrieval's cost shows here)."""
    from chattune.data.templates import prompt_ids, with_system

    counts = [len(prompt_ids(chat.tokenizer, with_system(r.prompt, chat.system))) for r in rows]
    return round(sum(counts) / max(len(counts), 1), 1)


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
             like: str | None = None, dtype: str = "auto", retrieval: bool = True) -> EvalResult:
    """Evaluate `target` (run dir or model) on `data`; write and return the results.

    Rows are read as `like` (a run dir) or the target run was trained, then `settings` (row_spec_for);
    `retrieval` False leaves data.retrieval's examples out of the prompts.
    """
    from rich.console import Console

    from chattune.infer.chat import ChatModel
    from chattune.model.generate import generate_all

    console = console or Console(stderr=True)
    need_reference = any(m != "stop_rate" for m in metrics)
    data_cfg = data_config_for(target, settings, like)
    spec = row_spec_for(target, settings, like, retrieval)
    if spec.retriever:  # the loss's prepare() reads rows with the same index
        from chattune.data.retrieval import remember_index

        remember_index(data_cfg, spec.retriever)
    else:
        data_cfg = data_cfg.model_copy(update={"retrieval": None})
    rows = load_eval_rows(data, spec, need_reference)  # before the model loads
    scored = scoring_examples(target, data, data_cfg, like, console) if "loss" in metrics else None
    chat = ChatModel.load(target, device=device, dtype=dtype)
    if like:
        chat.use_run_format(like)
    extra = {}
    if scored:  # first: seconds, where generation takes minutes
        extra = examples_loss(chat.model, scored.train, chat.tokenizer.pad_token_id, batch_size)
    generated, scores, started = [], {}, time.perf_counter()
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
        "retrieval": bool(spec.retriever), "generate_seconds": round(time.perf_counter() - started, 2),
        "prompt_tokens_mean": mean_prompt_tokens(chat, rows),
    }
    if "accuracy" in scores:
        summary["labels"] = labels
        summary["unparseable"] = [rows[i].source for i in scores["accuracy"].unparseable]
    if "loss" in extra:
        summary["trained_tokens"] = extra["trained_tokens"]
        summary["loss_examples"] = scored.stats["train"]  # as prepare counted them: truncated, dropped, skipped
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
    from chattune.training.tracking import SwanLabTracker, tracker_names

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
    for name, value in result.summary.get("base_metrics", {}).items():  # --metric preference: adapter off
        table.add_row(f"{name} (base)", f"{value:.4f}")
    console.print(table)
    unparseable = result.summary.get("unparseable") or []
    if unparseable:
        shown = ", ".join(unparseable[:10]) + (" ..." if len(unparseable) > 10 else "")
        console.print(f"[yellow]{len(unparseable)} answers name no single allowed label[/] (counted wrong): {shown}")
    console.print(f"[green]wrote[/] {result.out_dir / PREDICTIONS} and {result.out_dir / EVAL_SUMMARY}")
