"""In-training evaluation: score train.metric at each evaluation, keep the best adapter, stop early.

At every Trainer evaluation (each train.eval_every steps) the metric is measured: `loss` is
the Trainer's eval loss; generation metrics (exact, accuracy, rouge, stop_rate) are computed
on the first train.eval_samples held-out conversations with greedy decoding. The LoRA weights
of the best evaluation are kept in memory (they are small) and restored at the end, so the
run dir's adapter/ is the best one; the final weights go to last_adapter/ when they differ.
After train.patience evaluations without improvement, training stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainerCallback

from chattune.metrics import HIGHER_IS_BETTER, score_generation


@dataclass
class EvalSample:
    prompt: list[dict]  # messages ending with a user turn
    reference: str


def eval_samples(conversations, limit: int) -> list[EvalSample]:
    """The first `limit` held-out conversations as (prompt, final answer) pairs."""
    samples = []
    for conv in conversations:
        messages = conv.messages
        if messages and messages[-1]["role"] == "assistant":
            samples.append(EvalSample(messages[:-1], messages[-1]["content"]))
        if len(samples) >= limit:
            break
    return samples


@dataclass
class BestTracker:
    """Best value of a metric so far and how many evaluations since it improved."""

    higher_is_better: bool
    best: float | None = None
    best_step: int | None = None
    since_best: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def update(self, step: int, value: float) -> bool:
        self.history.append((step, value))
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if better:
            self.best, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1
        return better


class EvalLoop(TrainerCallback):
    """Measures the metric on each evaluation; best-adapter snapshot; early stopping."""

    def __init__(self, metric: str, tokenizer, samples: list[EvalSample], stop_ids: set[int],
                 patience: int | None = None, max_new_tokens: int = 64, labels: list[str] | None = None,
                 emit=None, emit_predictions=None):
        self.metric, self.tokenizer, self.samples = metric, tokenizer, samples
        self.stop_ids, self.patience, self.max_new_tokens, self.labels = stop_ids, patience, max_new_tokens, labels
        self.emit = emit or (lambda record: None)
        self.emit_predictions = emit_predictions or (lambda step, rows: None)
        self.tracker = BestTracker(HIGHER_IS_BETTER[metric])
        self.best_state: dict | None = None
        self.stopped_early_at: int | None = None

    def measure(self, model, step: int, metrics: dict, args=None) -> float:
        """The metric's value now: the Trainer's eval loss, or a generation metric on the samples."""
        if self.metric == "loss":
            return float(metrics["eval_loss"])
        from chattune.model.generate import generate_all

        with training_autocast(args):  # the model as trained: bf16 base, LoRA inputs left in the autocast dtype
            generated = generate_all(model, self.tokenizer, [s.prompt for s in self.samples], self.stop_ids,
                                     self.max_new_tokens, batch_size=8)
        predictions = [g.text for g in generated]
        references = [s.reference for s in self.samples]
        score = score_generation(self.metric, predictions, references, [g.stopped for g in generated], self.labels)
        rows = [{"prompt": s.prompt[-1]["content"], "reference": s.reference, "prediction": p}
                for s, p in zip(self.samples, predictions, strict=True)]
        self.emit_predictions(step, rows)
        return score.value

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        step = state.global_step
        value = self.measure(model, step, metrics or {}, args)
        if self.metric != "loss":
            self.emit({"step": step, "epoch": round(state.epoch or 0.0, 4), f"eval_{self.metric}": value})
        if self.tracker.update(step, value):
            self.best_state = snapshot_adapter(model)
        elif self.patience and self.tracker.since_best >= self.patience:
            control.should_training_stop = True
            self.stopped_early_at = step

    def summary(self) -> dict:
        return {
            "metric": self.metric, "best": self.tracker.best, "best_step": self.tracker.best_step,
            "evaluations": len(self.tracker.history), "stopped_early_at": self.stopped_early_at,
        }


def training_autocast(args):
    """The Trainer's mixed-precision context for code that runs the model outside the Trainer's steps.

    Under bf16/fp16 the frozen base is bf16 and the LoRA layers skip their fp32 input cast
    (training/speed.py), so the model only runs under autocast, as it does in training.
    """
    import contextlib

    import torch

    if args is None or not (args.bf16 or args.fp16):
        return contextlib.nullcontext()
    return torch.autocast(device_type=args.device.type, dtype=torch.bfloat16 if args.bf16 else torch.float16)


def snapshot_adapter(model) -> dict:
    """A CPU copy of the trainable adapter weights."""
    from peft import get_peft_model_state_dict

    from chattune.model.adapters import quiet_pruned_ranks

    with quiet_pruned_ranks(model):  # AdaLoRA ranks pruned to 0 are [0, in] tensors, not unsharded ones
        return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def restore_adapter(model, state: dict) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)
