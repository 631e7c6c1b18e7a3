"""Run a training job as a recipe: setup_data -> setup_model -> build_trainer -> fit -> save the run dir.

Data is read and checked before any model weights load, so bad input fails in seconds. The
Trainer is transformers' (training/counting_trainer.py adds token counting and the loss path),
checkpoints are committed by a callback (training/checkpoints.py); this module only wires them.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from chattune import rundir, runlock
from chattune.config import RunConfig
from chattune.data.preference_encode import prepare_preferences
from chattune.data.prepare import prepare_data, report_data
from chattune.faults import fault_point
from chattune.io import located_disk_full
from chattune.model.adapters import adapter_writer, attach_lora
from chattune.model.load import (
    load_base_model,
    load_tokenizer,
    pick_device,
    pick_precision,
    slow_precision_warning,
)
from chattune.model.quant import compute_dtype, prepare_for_training
from chattune.model.vocab import grow_for_tokenizer
from chattune.training import distributed, memory, methods, preference
from chattune.training.defaults import learning_rate
from chattune.training.forgetting import guard_run
from chattune.training.run_setup import (  # noqa: F401 - prepare_run_dir: tests import it here
    CREATED_RUN_DIRS,
    hold_resumed,
    located_disk_full_in_run,
    prepare_run_dir,
)
from chattune.training.speed import (
    base_weight_dtype,
    collator_for,
    lora_in_autocast_dtype,
    micro_batch_budget,
    without_training_autocast,
)

if TYPE_CHECKING:
    from chattune.training.counting_trainer import TokenCounter


@dataclass
class TrainOutcome:
    run_dir: Path
    model: object  # the trained PeftModel, still in memory
    summary: dict


def build_training_args(cfg: RunConfig, run_path: Path, precision: str, device: str, has_eval: bool, lr: float):
    from transformers import TrainingArguments

    from chattune.training.checkpoints import staging_root

    t = cfg.train
    eval_steps = t.eval_every
    eval_strategy = "no" if not has_eval else ("steps" if eval_steps else "epoch")
    args_class, stage_args = preference.stage_arguments(t, cfg.data.max_length) if t.stage != "sft" else (TrainingArguments, {})
    return args_class(
        output_dir=str(staging_root(rundir.RunDir(run_path).checkpoints)),  # training/checkpoints.py commits each one by rename
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        disable_tqdm=True,  # progress is training/display.py's: no tqdm bar, no dict per step
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy="steps" if t.save_every else "no",  # training/checkpoints.py writes them atomically
        save_steps=t.save_every or 500,
        save_total_limit=None,  # rotation: train.keep_checkpoints, complete checkpoints only
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        activation_checkpointing=t.gradient_checkpointing,
        optim=t.optim,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        torch_compile=t.compile,
        ddp_backend=distributed.ddp_backend(device),
        **distributed.engine_args(t),  # train.fsdp / train.deepspeed presets
        **stage_args,
    )


@runlock.releasing
def train(cfg: RunConfig, console: Console | None = None, resume: str | None = None,
          callbacks: tuple = (), allow_data_change: bool = False) -> TrainOutcome:
    """Train per `cfg`; write and return the run dir (with the in-memory model).

    `resume`: "auto" or a checkpoint/run dir path to continue (training/resume.py). A first
    SIGINT/SIGTERM saves a checkpoint and raises TrainingInterrupted (training/interrupt.py).
    `callbacks`: extra transformers `TrainerCallback`s; `allow_data_change`: resume on changed data.
    """
    from chattune.training.display import display_in, with_display
    from chattune.training.monitor import wants_eval_loop
    from chattune.training.resume import plan_resume

    callbacks = with_display(callbacks)  # the caller's TrainingDisplay, or live / plain lines
    display = display_in(callbacks)
    # several processes: only rank 0 prints; --quiet: nothing but errors and the last line
    console = distributed.rank_console(display.messages_console(console))
    hold_resumed(cfg, resume)  # the run dir's writer lock, before its checkpoints are read
    plan = plan_resume(cfg, resume, console, allow_data_change) if resume else None  # config first
    cfg = plan.cfg if plan else cfg
    if plan and (summary := plan.finished_summary()) is not None:  # requeued after the end: a no-op
        console.print(f"[bold]already finished[/] {plan.run_dir} at step {plan.step}: nothing to do")
        display.finish(summary, plan.run_dir)
        return TrainOutcome(plan.run_dir, None, summary)
    device = pick_device(cfg.train.device)
    distributed.check_engine(cfg, wants_eval_loop(cfg), device)
    distributed.join(device)
    # created by rank 0, same path on every rank; a resume reuses the existing run dir
    run_path = distributed.shared_run_dir(lambda c: prepare_run_dir(c, resuming=plan is not None), cfg)
    console.print(f"[bold]run dir[/] {run_path}")
    # a run that fails before writing anything (bad data, a model that will not load) leaves no empty folder
    cleanup = rundir.removed_if_left_empty(run_path) if run_path in CREATED_RUN_DIRS else contextlib.nullcontext()
    with cleanup, located_disk_full_in_run(run_path):
        return _train_into(run_path, cfg, plan, device, console, callbacks)


def _train_into(run_path: Path, cfg: RunConfig, plan, device: str, console: Console, extra_callbacks=()) -> TrainOutcome:
    """The recipe, once the run dir exists: setup_data -> setup_model -> build_trainer -> fit -> save."""
    from transformers import set_seed

    from chattune.training.display import display_in

    set_seed(cfg.seed)
    memory.release_freed_tensors(memory.threshold_for(cfg.train.mmap_threshold_kb, cfg.model.quantize != "none"))
    if device == "cpu":
        memory.bound_allocator_caches()  # before the first matmul and before the Trainer's threads
    tokenizer, data = setup_data(cfg, plan, console)
    precision, lr = setup_optimization(cfg, device, console)
    args = build_training_args(cfg, run_path, precision, device, bool(data.eval), lr)  # before the model: ZeRO-3
    adalora_steps = methods.preflight(cfg, device, len(data.train), console)  # optimizer, targets, AdaLoRA schedule
    model, trainable = setup_model(cfg, run_path, precision, device, adalora_steps, console,
                                   tokenizer)
    checkpoints = cfg.train.keep_checkpoints + 1 if cfg.train.save_every else 1  # +1 while rotating; 1: on Ctrl-C
    rundir.check_free_space(run_path, rundir.estimated_size(trainable, checkpoints))  # now, not at the first save
    display = display_in(extra_callbacks)  # train() put one there
    session = setup_session(cfg, run_path, tokenizer, data, plan, console, display)
    callbacks = session.callbacks(precision, lr, cfg, extra_callbacks)
    trainer = build_trainer(cfg, model, args, data, tokenizer, callbacks, device, session.counter)
    result, best = fit_run(trainer, model, session, plan, cfg, len(data.train), run_path)
    model = without_training_autocast(preference.without_reference_adapter(model), precision)  # as a fresh load runs it
    return save(run_path, cfg, trainer, model, tokenizer, data.stats, session, result, best, precision, lr, console)


def setup_data(cfg: RunConfig, plan, console: Console):
    """The tokenizer and the prepared data, checked before any weights load; a resume refuses changed data."""
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tokenizer, console) if cfg.train.stage == "sft" else prepare_preferences(cfg, tokenizer)
    report_data(data.stats, console)
    if plan:
        plan.check_data(data)
    from chattune.training.monitor import check_monitoring

    check_monitoring(cfg, bool(data.eval))
    return tokenizer, data


def setup_optimization(cfg: RunConfig, device: str, console: Console) -> tuple[str, float]:
    """The precision train.precision resolves to on `device`, and the learning rate (train.lr auto: by size)."""
    precision = pick_precision(cfg.train.precision, device)
    if warning := slow_precision_warning(precision, device):
        console.print(f"[yellow]warning[/]: {warning}")
    lr, lr_source = learning_rate(cfg)
    console.print(f"[bold]learning rate[/] {lr:g} ({lr_source})")
    return precision, lr


def setup_model(cfg: RunConfig, run_path: Path, precision: str, device: str, adalora_steps,
                console: Console, tokenizer=None):
    """The base in its training dtype (or 4/8-bit) with the run's adapter attached; (model, trainable count)."""
    base = load_base_model(cfg.model, dtype=base_weight_dtype(cfg.train, precision), device=device,
                           compute_dtype=compute_dtype(precision))
    new_ids = grow_for_tokenizer(base, tokenizer, console)  # rows for markers data.template added
    base = prepare_for_training(base, cfg.train.gradient_checkpointing, precision)  # model.quantize: k-bit prep
    if cfg.model.quantize != "none":
        memory.trim_heap()  # the buffers the shards were read into
    init_dir = run_path / rundir.INIT_ADAPTER if distributed.is_main() else None  # PiSSA/OLoRA: converts saved adapters
    if cfg.model.adapter:  # e.g. DPO after SFT: that run's adapter, trained further
        model = methods.start_from_adapter(base, cfg)
    else:
        model = attach_lora(base, cfg.lora, adalora_steps, init_dir, new_ids)
    trainable, total = model.get_nb_trainable_parameters()  # peft's count: 4-bit weights at their real size
    console.print(
        f"[bold]{cfg.lora.method}[/] r={cfg.lora.r} on {sorted(model.peft_config['default'].target_modules)}: "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%); "
        f"device {device}, precision {precision}"
    )
    lora_in_autocast_dtype(model, precision)  # no fp32 copies of adapter inputs under bf16 autocast
    return model, trainable


@dataclass
class Session:
    """What one training session keeps beside the Trainer: counts, the metrics log, monitoring, progress,
    the signal handler and the checkpoint committer."""

    counter: TokenCounter
    metrics: object  # train.callbacks.MetricsLogger
    monitoring: object  # train.monitor.Monitoring
    progress: object  # train.resume.CheckpointState
    stopper: object  # train.interrupt.StopOnSignal
    checkpoints: object  # train.checkpoints.AtomicCheckpoints
    spikes: object  # train.spikes.LossSpikeCallback
    display: object  # train.display.TrainingDisplay (also among the extra callbacks)

    def callbacks(self, precision: str, lr: float, cfg: RunConfig, extra=()) -> list:
        """The Trainer's callbacks; the checkpoint committer last, once every other one has had its say."""
        from chattune.training.callbacks import StopOnNonFinite

        self.spikes.lr = lr
        return [StopOnNonFinite(precision, lr), self.metrics, self.spikes, *self.monitoring.callbacks, self.stopper,
                *methods.method_callbacks(cfg.lora), *extra, self.checkpoints]


def setup_session(cfg: RunConfig, run_path: Path, tokenizer, data, plan, console: Console,
                  display) -> Session:
    """Counters, metrics, monitoring and checkpoint state; a resume restores them from its
    checkpoint. `display` (training/display.py) is shown each metrics record."""
    from chattune.training.callbacks import MetricsLogger
    from chattune.training.checkpoints import AtomicCheckpoints
    from chattune.training.counting_trainer import TokenCounter
    from chattune.training.interrupt import StopOnSignal
    from chattune.training.monitor import build_monitoring
    from chattune.training.resume import CheckpointState, restore_run
    from chattune.training.spikes import LossSpikeCallback

    counter = TokenCounter()
    metrics = MetricsLogger(rundir.RunDir(run_path).metrics_file, counter)
    monitoring = build_monitoring(cfg, run_path, tokenizer, data.eval_conversations, metrics)
    progress = CheckpointState(cfg, counter, data.stats, monitoring.eval_loop, data.train)
    if plan:
        restore_run(plan, progress, metrics)  # metrics.jsonl cut back to the checkpoint, counters restored
        console.print(f"[bold]resuming[/] from {plan.checkpoint or 'step 0 (no checkpoint yet)'}")
    checkpoints = AtomicCheckpoints(rundir.RunDir(run_path).checkpoints, progress, cfg.train.keep_checkpoints)
    display.start_run(cfg.train.metric, metrics.records)  # resumed: the earlier losses and evals
    metrics.listeners.append(display.record)
    return Session(counter, metrics, monitoring, progress, StopOnSignal(), checkpoints,
                   LossSpikeCallback(console), display)


def build_trainer(cfg: RunConfig, model, args, data, tokenizer, callbacks: list, device: str, counter: TokenCounter):
    """transformers' Trainer with chattune's token counting, loss path and token budget (training/counting_trainer.py);
    train.stage dpo/orpo/kto: TRL's trainer of that stage, on padded batches (training/preference.py)."""
    from chattune.training.counting_trainer import CountingTrainer
    from chattune.training.display import without_printers

    if cfg.train.stage != "sft":  # the same display: transformers' printers off, ours in callbacks
        trainer = preference.build_preference_trainer(cfg, model, args, data, tokenizer, callbacks,
                                                      counter)
        return without_printers(trainer)
    return without_printers(CountingTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval or None,
        data_collator=collator_for(cfg.train, tokenizer, model), callbacks=callbacks, counter=counter,
        skip_prompt_logits=cfg.train.skip_prompt_logits, micro_batch_tokens=micro_batch_budget(cfg, device),
        adalora_penalties=methods.PenaltyLog() if cfg.lora.method == "adalora" else None,
    ))


def fit_run(trainer, model, session: Session, plan, cfg: RunConfig, train_rows: int, run_path: Path):
    """Train (continuing the plan's checkpoint); (the Trainer's TrainOutput, the in-training eval's best)."""
    from chattune.training.resume import fit, logged_mean_loss

    session.progress.start()
    session.monitoring.start(cfg)
    try:
        with session.stopper.handling_signals(), session.checkpoints.located_failures():
            result = fit(trainer, plan, methods.total_optimizer_steps(cfg.train, train_rows))
        session.stopper.raise_if_stopped(run_path)
        session.counter.sync(distributed.sum_over_ranks)
        best = session.monitoring.keep_best(model, run_path, trainer.state.global_step)
    except BaseException:
        session.display.close()  # the live line ends before the error is said
        session.monitoring.close(failed=True)
        raise
    session.monitoring.close()
    # a resumed run: the Trainer's training_loss covers only this session's steps; AdaLoRA: it includes the penalty
    if (plan and plan.checkpoint) or cfg.lora.method == "adalora":
        result = result._replace(training_loss=logged_mean_loss(session.metrics.records) or result.training_loss)
    return result, best


def save(run_path: Path, cfg: RunConfig, trainer, model, tokenizer, stats: dict, session: Session, result, best,
         precision: str, lr: float, console: Console) -> TrainOutcome:
    """Rank 0 writes the run dir (summary.json last); every rank returns once it is complete."""
    seconds = session.progress.seconds()  # a resumed run: wall time of every session
    state_dict = distributed.full_state_dict(trainer)  # FSDP / DeepSpeed: every rank helps gather the weights
    digests = distributed.rank_adapter_digests(model, cfg.train)  # several processes: one per rank, all equal
    summary = {}
    if distributed.is_main():  # the run dir is written once, by rank 0
        summary = save_run(run_path, cfg, model, tokenizer, stats, session.metrics.records, result, seconds,
                           session.counter, precision, state_dict=state_dict)
        summary.update(lr=lr, **session.progress.summary_notes())  # lr: what train.lr resolved to
        spikes = session.spikes.watch.summary(lr)
        if spikes:
            summary["loss_spikes"] = spikes
        forgetting = guard_run(cfg, model, tokenizer, console)  # base vs fine-tuned on general rows; None when off
        add_to_summary(run_path, summary, digests, best, console, forgetting)
    distributed.barrier()  # every rank returns once the run dir is complete
    session.display.finish(summary, run_path)  # rank 0: time, tokens/s, held-out figures, paths
    return TrainOutcome(run_path, model, summary)


def add_to_summary(run_path: Path, summary: dict, digests, best: dict, console: Console, forgetting=None) -> None:
    """Several processes: each rank's adapter digest; in-training eval: the best step; the forgetting guard's
    scores (training/forgetting.py). Writes summary.json, the run dir's last file: it marks the run finished, so
    a kill before it leaves a run that `--resume auto` saves again instead of calling it done."""
    if digests:
        summary["rank_adapter_sha256"] = digests
        if len(set(digests)) > 1:
            console.print("[yellow]warning[/]: the processes ended with different adapters (see summary.json)")
    if best:  # the display's summary block says it (training/display.py)
        summary["in_training_eval"] = best
    if forgetting is not None:
        summary["forgetting"] = forgetting
    rundir.RunDir(run_path).write_summary(summary)
    fault_point("final:summary")


def save_run(run_path, cfg, model, tokenizer, stats, records, result, seconds, counter, precision,
             state_dict=None) -> dict:
    """Write the run dir, each file atomically, and return its summary (written last, by add_to_summary).
    faults.FINAL_PHASES name the points in between (tests/test_kill_sweep.py kills the run at each)."""
    from chattune.training.plots import plot_loss

    run = rundir.RunDir(run_path)
    run.write_adapter(lambda out: adapter_writer(model)(out, state_dict=state_dict))
    fault_point("final:adapter")
    run.write_tokenizer(tokenizer)
    fault_point("final:tokenizer")
    run.write_template(tokenizer.chat_template)
    fault_point("final:template")
    run.write_config(cfg)
    fault_point("final:config")
    if cfg.data.retrieval:
        from chattune.data.retrieval import cached_index

        run.write_retrieval_index(cached_index(cfg.data))
    run.write_data_stats(stats)
    fault_point("final:data-stats")
    with located_disk_full(run.loss_plot):
        plot_loss(records, run.loss_plot, title=f"{cfg.name}: loss")
    fault_point("final:loss-plot")
    from chattune.training.checkpoints import staging_root

    checkpoints = run.checkpoints
    shutil.rmtree(staging_root(checkpoints), ignore_errors=True)  # the Trainer's output_dir, empty between saves
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    fault_point("final:checkpoints-cleaned")
    return {
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "final_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),
        "final_eval_loss": next((r["eval_loss"] for r in reversed(records) if "eval_loss" in r), None),
        "seconds": round(seconds, 2),
        "tokens": counter.tokens,  # tokens and tokens_per_s: sums over all `processes`
        "trained_tokens": counter.trained_tokens,
        "tokens_per_s": round(counter.tokens / max(seconds, 1e-9), 1),
        "processes": distributed.world_size(),
        "precision": precision,  # what train.precision resolved to on this device
    }
