"""Run a training job top to bottom: setup -> data -> model -> train -> save the run dir.

Data is read and checked before any model weights load, so bad input fails in seconds.
Uses transformers' Trainer; chattune adds only token counting and the run dir.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from chattune import rundir
from chattune.config import RunConfig
from chattune.data.dataset import tokenize_conversations
from chattune.data.lint import lint_data
from chattune.data.templates import stop_token_ids
from chattune.model.adapters import attach_lora, count_parameters
from chattune.model.load import load_base_model, load_tokenizer, pick_device, pick_precision
from chattune.train.speed import base_weight_dtype, batch_tokens, collator_for


@dataclass
class TokenCounter:
    tokens: int = 0
    trained_tokens: int = 0


@dataclass
class TrainOutcome:
    run_dir: Path
    model: object  # the trained PeftModel, still in memory
    summary: dict


@dataclass
class PreparedData:
    train: list[dict]
    eval: list[dict]
    stats: dict
    eval_conversations: list = field(default_factory=list)  # untokenized, for generation metrics


def prepare_run_dir(cfg: RunConfig) -> Path:
    """Create the run dir now, so an unwritable output fails before training starts."""
    path = cfg.resolved_run_dir()
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path}: run dir already exists and is not empty; choose another run_dir")
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write-test"
    probe.write_text("ok")
    probe.unlink()
    return path


def prepare_data(cfg: RunConfig, tokenizer, console: Console) -> PreparedData:
    """Apply data.template, lint (refuse to train on errors), then tokenize both splits."""
    checked = lint_data(cfg.data, tokenizer, cfg.seed)
    for warning in checked.report.warnings[:5]:
        console.print(f"[yellow]warning[/] {warning}", highlight=False)
    if len(checked.report.warnings) > 5:
        console.print(f"[yellow]warning[/] ... {len(checked.report.warnings) - 5} more (chattune data inspect)")
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
    if not parts.get("train"):
        raise ValueError("no training example left after truncation/dropping; see data_stats")
    return PreparedData(parts["train"], parts.get("eval", []), stats, eval_convs)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def report_data(stats: dict, console: Console) -> None:
    for split, s in stats.items():
        console.print(
            f"[bold]{split}[/]: {s['examples']} examples, {s['tokens']} tokens, "
            f"{s['trained_tokens']} trained; truncated {s['truncated']}, dropped {s['dropped']}"
            + (f" {s['drop_reasons']}" if s["dropped"] else "")
        )
        if s["turns_without_stop"]:
            console.print(f"[yellow]warning[/]: {s['turns_without_stop']} assistant turns have no end-of-turn token")


def build_training_args(cfg: RunConfig, run_path: Path, precision: str, device: str, has_eval: bool):
    from transformers import TrainingArguments

    t = cfg.train
    eval_steps = t.eval_every or t.eval_steps
    eval_strategy = "no" if not has_eval else ("steps" if eval_steps else "epoch")
    return TrainingArguments(
        output_dir=str(run_path / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy="no",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        activation_checkpointing=t.gradient_checkpointing,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        torch_compile=t.compile,
    )


def make_trainer_class():
    from transformers import Trainer

    class CountingTrainer(Trainer):
        """Trainer that counts real and trained tokens for throughput logging."""

        counter: TokenCounter

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.counter.tokens += batch_tokens(inputs)
            self.counter.trained_tokens += int((inputs["labels"] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not (self.skip_prompt_logits and model.training and not return_outputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            from chattune.train.loss import masked_lm_loss

            self.loss_is_scaled_for_ga = num_items_in_batch is not None  # sum / items of the whole step
            return masked_lm_loss(model, inputs, num_items_in_batch)

    CountingTrainer.skip_prompt_logits = False
    return CountingTrainer


def train(cfg: RunConfig, console: Console | None = None) -> TrainOutcome:
    """Train per `cfg`; write and return the run dir (with the in-memory model)."""
    from transformers import set_seed

    from chattune.train.callbacks import MetricsLogger
    from chattune.train.monitor import build_monitoring, check_monitoring

    console = console or Console(stderr=True)
    run_path = prepare_run_dir(cfg)
    console.print(f"[bold]run dir[/] {run_path}")
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tokenizer, console)
    report_data(data.stats, console)
    check_monitoring(cfg, bool(data.eval))
    device = pick_device(cfg.train.device)
    precision = pick_precision(cfg.train.precision, device)
    base = load_base_model(cfg.model, dtype=base_weight_dtype(cfg.train, precision), device=device)
    model = attach_lora(base, cfg.lora)
    trainable, total = count_parameters(model)
    console.print(
        f"[bold]LoRA[/] r={cfg.lora.r} on {sorted(model.peft_config['default'].target_modules)}: "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%); "
        f"device {device}, precision {precision}"
    )
    counter = TokenCounter()
    metrics = MetricsLogger(run_path / rundir.METRICS, counter)
    monitoring = build_monitoring(cfg, run_path, tokenizer, data.eval_conversations, metrics)
    trainer = make_trainer_class()(
        model=model,
        args=build_training_args(cfg, run_path, precision, device, bool(data.eval)),
        train_dataset=data.train,
        eval_dataset=data.eval or None,
        data_collator=collator_for(cfg.train, tokenizer, model),
        callbacks=[metrics, *monitoring.callbacks],
    )
    trainer.counter = counter
    trainer.skip_prompt_logits = cfg.train.skip_prompt_logits
    started = time.perf_counter()
    monitoring.start(cfg)
    try:
        result = trainer.train()
        best = monitoring.keep_best(model, run_path, trainer.state.global_step)
    except BaseException:
        monitoring.close(failed=True)
        raise
    monitoring.close()
    seconds = time.perf_counter() - started
    summary = save_run(run_path, cfg, model, tokenizer, data.stats, metrics.records, result, seconds, counter)
    if best:
        summary["in_training_eval"] = best
        rundir.write_json_atomic(run_path / rundir.SUMMARY, summary)
        console.print(f"[bold]best {best['metric']}[/] {best['best']:.4f} at step {best['best_step']}: {best['adapter']}")
    console.print(f"[green]saved[/] {run_path}  ({seconds:.0f} s, mean loss {result.training_loss:.4f})")
    return TrainOutcome(run_path, model, summary)


def save_run(run_path, cfg, model, tokenizer, stats, records, result, seconds, counter) -> dict:
    from chattune.train.plots import plot_loss

    rundir.save_dir_atomic(run_path / rundir.ADAPTER, model.save_pretrained)
    rundir.save_dir_atomic(run_path / rundir.TOKENIZER, tokenizer.save_pretrained)
    rundir.write_text_atomic(run_path / rundir.TEMPLATE, tokenizer.chat_template or "")
    rundir.write_text_atomic(run_path / rundir.CONFIG, cfg.to_yaml())
    rundir.write_json_atomic(run_path / rundir.DATA_STATS, stats)
    summary = {
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "final_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),
        "final_eval_loss": next((r["eval_loss"] for r in reversed(records) if "eval_loss" in r), None),
        "seconds": round(seconds, 2),
        "tokens": counter.tokens,
        "trained_tokens": counter.trained_tokens,
        "tokens_per_s": round(counter.tokens / max(seconds, 1e-9), 1),
    }
    rundir.write_json_atomic(run_path / rundir.SUMMARY, summary)
    plot_loss(records, run_path / rundir.LOSS_PLOT, title=f"{cfg.name}: loss")
    checkpoints = run_path / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    return summary
