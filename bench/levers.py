"""Measure each speed lever alone, in one process, interleaved (ratios survive a busy machine).

`python -m bench.levers [--steps N] [--rounds R]`: one LoRA micro-step (forward, backward,
fused AdamW) on the same huanhuan batches per variant; prints real tokens/s per variant and
its ratio to the recipe-like fp32 variant. Not a test: numbers go in bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import time

VARIANTS = {
    # name: (base dtype, autocast bf16, packing, grad checkpointing, masked logits, micro-batch, attention)
    "fp32 pad ckpt (recipe-like)": ("fp32", False, False, True, False, 4, "sdpa"),
    "fp32 pad": ("fp32", False, False, False, False, 4, "sdpa"),
    "bf16-autocast pad": ("fp32", True, False, False, False, 4, "sdpa"),
    "bf16-autocast pack (dense mask)": ("fp32", True, True, False, False, 4, "sdpa"),
    "bf16-autocast pack per-example-attn": ("fp32", True, True, False, False, 4, "packed"),
    "bf16-autocast pack per-example-attn skip-logits": ("fp32", True, True, False, True, 4, "packed"),
    "bf16-weights pack per-example-attn skip-logits": ("bf16", True, True, False, True, 4, "packed"),
    "bf16-weights pack per-example-attn skip-logits mb16": ("bf16", True, True, False, True, 16, "packed"),
}


def build(dtype_name: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bench.common import LORA_ALPHA, LORA_DROPOUT, LORA_R, TARGETS, model_dir

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=dtype, attn_implementation="sdpa")
    base.config.use_cache = False
    model = get_peft_model(base, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                                            target_modules=TARGETS, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    return model.train(), optimizer


def step(model, optimizer, batch, variant) -> int:
    import torch

    from chattune.model.attention import use_packed_attention
    from chattune.training.loss import masked_lm_loss

    _, autocast, _, ckpt, skip, _, attn = variant
    if attn == "packed":
        use_packed_attention(model.get_base_model())
    else:
        model.get_base_model().set_attn_implementation("sdpa")
    if ckpt and not model.is_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif not ckpt and model.is_gradient_checkpointing:
        model.gradient_checkpointing_disable()
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with amp:
        loss = masked_lm_loss(model, batch) if skip else model(**batch, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def batches(examples, variant, pad_id, count):
    from chattune.data.collate import PackCollator, PadCollator

    size = variant[5]
    collate = PackCollator() if variant[2] else PadCollator(pad_id)
    return [collate(examples[i * size:(i + 1) * size]) for i in range(count)]


def main(argv=None) -> None:
    from bench.common import messages, model_dir, split_rows
    from chattune.data.dataset import tokenize_conversations
    from chattune.data.formats import Conversation
    from chattune.data.templates import stop_token_ids
    from chattune.model.load import open_tokenizer

    parser = argparse.ArgumentParser(prog="python -m bench.levers")
    parser.add_argument("--steps", type=int, default=3, help="timed micro-steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="variant names to run")
    args = parser.parse_args(argv)
    tokenizer = open_tokenizer(model_dir())
    rows, _ = split_rows(16 * (args.steps + 1), 0)
    convs = [Conversation(messages(r), f"huanhuan:{i}") for i, r in enumerate(rows)]
    examples, _ = tokenize_conversations(tokenizer, convs, 384, "truncate", stop_token_ids(tokenizer))
    names = args.only or list(VARIANTS)
    models = {d: build(d) for d in {VARIANTS[n][0] for n in names}}
    totals = {n: [0, 0.0] for n in names}
    for _ in range(args.rounds):
        for name in names:
            variant = VARIANTS[name]
            model, optimizer = models[variant[0]]
            work = batches(examples, variant, tokenizer.pad_token_id, args.steps + 1)
            step(model, optimizer, work[0], variant)  # warm-up
            started = time.perf_counter()
            tokens = sum(step(model, optimizer, b, variant) for b in work[1:])
            totals[name][0] += tokens
            totals[name][1] += time.perf_counter() - started
            print(f"  {name}: {tokens / (time.perf_counter() - started):.1f} tok/s", flush=True)
    reference = totals[names[0]][0] / totals[names[0]][1]
    for name in names:
        rate = totals[name][0] / totals[name][1]
        print(f"{name:40s} {rate:8.1f} tok/s  {rate / reference:5.2f}x")


if __name__ == "__main__":
    main()
