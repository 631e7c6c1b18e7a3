"""transformers' Trainer with chattune's token counting, loss path and token budget; nothing else.

Each setting arrives through the constructor. Checkpoints are not this class's business: the
AtomicCheckpoints callback (training/checkpoints.py) stages and commits them through the Trainer's
public `output_dir` and `on_save` hook. This module does not build the trainer's inputs (training/trainer.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from transformers import Trainer

from chattune.training import distributed
from chattune.training.speed import batch_tokens
from chattune.training.token_budget import split_batch


@dataclass
class TokenCounter:
    """Real and trained tokens: `tokens`/`trained_tokens` are sums over all processes as of the last sync."""

    tokens: int = 0
    trained_tokens: int = 0
    local: list = field(default_factory=lambda: [0, 0])  # this process's counts since the last sync

    def sync(self, reduce=list) -> None:
        tokens, trained = reduce(self.local)
        self.tokens, self.trained_tokens, self.local = self.tokens + tokens, self.trained_tokens + trained, [0, 0]


class CountingTrainer(Trainer):
    """Trainer that counts real and trained tokens, splits micro-batches by a token budget, scores only
    the trained positions when asked (train.skip_prompt_logits) and logs AdaLoRA's penalty apart.

    counter: a TokenCounter; skip_prompt_logits: bool; micro_batch_tokens: 0 for whole micro-batches;
    adalora_penalties: a train.methods.PenaltyLog for AdaLoRA, else None. The rest goes to Trainer.
    """

    def __init__(self, *args, counter: TokenCounter, skip_prompt_logits: bool = False, micro_batch_tokens: int = 0,
                 adalora_penalties=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = counter
        self.skip_prompt_logits = skip_prompt_logits
        self.micro_batch_tokens = micro_batch_tokens
        self.adalora_penalties = adalora_penalties

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.counter.local[0] += batch_tokens(inputs)
        self.counter.local[1] += int((inputs["labels"] != -100).sum())
        pieces = self.pieces(inputs, num_items_in_batch)
        losses = []
        for index, piece in enumerate(pieces):  # the gradients sync (several processes) on the last piece only
            last = index == len(pieces) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                losses.append(super().training_step(model, piece, num_items_in_batch))
        return sum(losses)

    def pieces(self, inputs, num_items_in_batch) -> list[dict]:
        """train.micro_batch_tokens: only where each piece's loss is divided by the whole step's token count."""
        scaled = num_items_in_batch is not None and (self.skip_prompt_logits or self.model_accepts_loss_kwargs)
        if not scaled or self.is_deepspeed_enabled:  # DeepSpeed counts backward calls as micro-steps
            return [inputs]
        return split_batch(inputs, self.micro_batch_tokens)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # every rank logs the same steps: token counts become sums over ranks
            self.counter.sync(distributed.sum_over_ranks)
            if self.adalora_penalties:  # the logged loss is the cross-entropy; the penalty apart
                penalty = self.adalora_penalties.mean_per_step()
                logs["loss"], logs["adalora_penalty"] = round(logs["loss"] - penalty, 4), round(penalty, 4)
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.adalora_penalties is not None:
            from chattune.training.methods import adalora_loss

            return adalora_loss(self, model, inputs, return_outputs, num_items_in_batch)
        if not (self.skip_prompt_logits and model.training and not return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from chattune.training.loss import masked_lm_loss

        self.loss_is_scaled_for_ga = num_items_in_batch is not None  # sum / items of the whole step
        # several processes: x ranks, as transformers' compute_loss does for token-averaged losses
        return masked_lm_loss(model, inputs, num_items_in_batch) * distributed.token_average_scale(
            self, num_items_in_batch)
