"""The forgetting guard: after training, how far the fine-tuned model drifted from its base on general answers.

Scores the 32 guard rows of the built-in general-instruction set (data/builtin_general.py,
never trained on) with the adapter disabled (the base) and enabled (the fine-tuned model),
each rendered with the run's chat template and no system prompt of the run. Per answer
token (the end-of-turn token included), in fp32 logits: the cross-entropy of both models
and KL(base || tuned). One example per forward, logits only at the scored positions, under
no_grad; the model's dtype is untouched and its train/eval mode restored.

KL_WARN = 0.15 nats per answer token, set from the demo (configs/demo.yaml, seed 42, bf16, AMD
EPYC Zen 5, 2 cores; base answer loss 2.0755): the visible symptom of narrow fine-tuning is
the new identity turning up in general answers (greedy answers to the 32 guard questions):

    run (demo overrides)        KL    loss change  general answers naming it  identity (held out)
    train.lr=1e-4 epochs=1     0.014    -0.112              0/32                     0/3
    train.lr=3e-5              0.055    -0.207              0/32                     0/3
    train.lr=1e-4              0.324    -0.195              5/32                     3/3
    train.epochs=1             0.564    -0.199              6/32                     3/3
    train.lr=3e-4              0.980    +0.084              4/32                     3/3
    train.epochs=2             1.025    +0.078              5/32                     3/3
    (demo as is)               1.371    +0.168              4/32                     3/3
    data.replay=32             2.205    -0.122              2/32                     3/3
    data.replay=64             2.272    -0.132              1/32                     3/3

Every run at KL >= 0.32 named the identity in some general answers, none at <= 0.055; 0.15
lies between (about their geometric mean). By Pinsker, KL 0.15 bounds the mean per-token total
variation from the base by sqrt(0.15 / 2) = 0.27. The KL counts any move away from the base,
also toward the guard's own answer style: replay rows (written like the guard rows) lower the
answer loss and the identity leaks but raise the KL, so loss_change is the direction to read.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chattune.config import RunConfig

KL_WARN = 0.15  # nats per answer token: justified above
TRAIN_LESS = "train less (a lower train.lr or fewer train.epochs)"


def guard_examples(tokenizer) -> list:
    """The guard rows encoded with the tokenizer's (the run's) chat template: templates.Encoded each."""
    from chattune.data.builtin_general import guard_conversations
    from chattune.data.templates import encode_conversation, stop_token_ids

    stops = stop_token_ids(tokenizer)
    return [encode_conversation(tokenizer, messages, stops) for messages in guard_conversations()]


@contextlib.contextmanager
def scoring_mode(model):
    """eval() for scoring, the previous train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def answer_logits(model, ids, scored):
    """fp32 logits at the positions `scored` (position t predicts token t + 1)."""
    try:
        return model(input_ids=ids, use_cache=False, logits_to_keep=scored).logits[0].float()
    except TypeError:  # a (remote-code) model without logits_to_keep: every position, then the scored ones
        return model(input_ids=ids, use_cache=False).logits[0, scored].float()


def score_forgetting(model, examples: list) -> dict:
    """Mean answer-token CE of base and tuned, and mean per-token KL(base || tuned), over `examples`."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    base_ce = tuned_ce = kl = 0.0
    tokens = 0
    with scoring_mode(model), torch.no_grad():
        for example in examples:
            ids = torch.tensor([example.input_ids], device=device)
            labels = torch.tensor(example.labels[1:], device=device)
            scored = (labels != -100).nonzero().flatten()
            targets = labels[scored]
            with model.disable_adapter():
                base = F.log_softmax(answer_logits(model, ids, scored), dim=-1)
            tuned = F.log_softmax(answer_logits(model, ids, scored), dim=-1)
            base_ce += float(F.nll_loss(base, targets, reduction="sum"))
            tuned_ce += float(F.nll_loss(tuned, targets, reduction="sum"))
            kl += float(F.kl_div(tuned, base, log_target=True, reduction="sum"))  # sum p_base (log p_base - log p_tuned)
            tokens += scored.numel()
    return {"base_loss": base_ce / tokens, "tuned_loss": tuned_ce / tokens, "kl_to_base": kl / tokens,
            "tokens": tokens}


def forgetting_report(model, tokenizer, threshold: float = KL_WARN) -> dict:
    """The summary.json entry: rows, losses, their change, KL to the base, the threshold and the warning."""
    started = time.perf_counter()
    examples = guard_examples(tokenizer)
    scores = score_forgetting(model, examples)
    kl = scores["kl_to_base"]
    return {
        "rows": len(examples), "tokens": scores["tokens"],
        "base_loss": round(scores["base_loss"], 4), "tuned_loss": round(scores["tuned_loss"], 4),
        "loss_change": round(scores["tuned_loss"] - scores["base_loss"], 4),
        "kl_to_base": round(kl, 5), "threshold_kl": threshold,
        "warning": bool(not math.isfinite(kl) or kl > threshold),
        "seconds": round(time.perf_counter() - started, 2),
    }


def guard_run(cfg: RunConfig, model, tokenizer, console) -> dict | None:
    """Score the trained run (rank 0) and print one line, plus a warning above KL_WARN; None when off."""
    if not cfg.train.forgetting:
        return None
    if cfg.train.fsdp or cfg.train.deepspeed:  # the weights are sharded over the processes
        reason = "not scored: the weights are sharded (train.fsdp / train.deepspeed); chattune eval the adapter"
        console.print(f"[bold]forgetting guard[/] {reason}")
        return {"skipped": reason}
    from chattune.data.templates import TemplateError

    try:
        entry = forgetting_report(model, tokenizer, KL_WARN)
    except TemplateError as err:
        console.print(f"[yellow]forgetting guard[/] not scored: the chat template cannot render its rows ({err})")
        return {"skipped": f"template: {err}"}
    console.print(
        f"[bold]forgetting guard[/] {entry['rows']} general rows: answer loss {entry['base_loss']:.4f} (base) -> "
        f"{entry['tuned_loss']:.4f} (fine-tuned, {entry['loss_change']:+.4f}), KL to base "
        f"{entry['kl_to_base']:.4f} nats/token (warning above {entry['threshold_kl']:g})", highlight=False)
    if entry["warning"]:
        console.print(f"[yellow]warning[/]: the fine-tuned model drifted from its base on general questions "
                      f"(KL {entry['kl_to_base']:.4f} > {entry['threshold_kl']:g}); {advice(cfg.data.replay)}; "
                      "check a few general answers (chattune chat RUN_DIR)", highlight=False)
    return entry


def advice(replay: int) -> str:
    if replay:  # replay rows move the model too, toward their own style: the KL cannot fall below that
        return f"{TRAIN_LESS}; with data.replay={replay} read loss_change too (replay rows raise the KL)"
    return f"mix general rows into training (data.replay, e.g. 32) or {TRAIN_LESS}"
