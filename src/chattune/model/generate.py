"""Batched generation that also reports whether each answer ended on an end-of-turn token.

Left padding and the KV cache, shortest prompts first; results come back in input order
(the decoding itself, with the shared-prefix and finished-row savings: model/decode.py).
The one generation loop behind `chattune predict`, `chattune eval` and in-training evaluation
(it lives in the model stage so training may use it). Greedy unless `sampling` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from chattune.data.templates import prompt_ids, render, with_system
from chattune.model.decode import decode_batch


@dataclass
class Generated:
    text: str
    stopped: bool  # an end-of-turn token was produced within max_new_tokens


def generate_batch(model, tokenizer, prompts: list[list[dict]], stop_ids: set[int],
                   max_new_tokens: int, system: str | None = None, sampling: dict | None = None) -> list[Generated]:
    """Replies for one batch of conversations (each ending with a user turn); greedy by default."""
    import torch

    encoded = [prompt_ids(tokenizer, with_system(m, system)) for m in prompts]  # content text stays text
    options = {"max_new_tokens": max_new_tokens, "do_sample": False, **(sampling or {}), "use_cache": True,
               "eos_token_id": sorted(stop_ids), "pad_token_id": tokenizer.pad_token_id}
    with torch.inference_mode():
        new_tokens = decode_batch(model, encoded, options, stop_ids)
    decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [Generated(text.strip(), any(t in stop_ids for t in ids)) for text, ids in zip(decoded, new_tokens, strict=True)]


def generate_all(model, tokenizer, prompts: list[list[dict]], stop_ids: set[int], max_new_tokens: int,
                 system: str | None = None, batch_size: int = 8, advance=None,
                 sampling: dict | None = None) -> list[Generated]:
    """Replies in input order; batches formed shortest-prompt-first to limit padding."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    lengths = [len(render(tokenizer, with_system(m, system), add_generation_prompt=True)) for m in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    results: list[Generated | None] = [None] * len(prompts)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = generate_batch(model, tokenizer, [prompts[i] for i in chunk], stop_ids, max_new_tokens,
                                   system, sampling)
            for index, item in zip(chunk, batch, strict=True):
                results[index] = item
            if advance:
                advance(len(chunk))
    finally:
        if was_training:
            model.train()
    return results  # type: ignore[return-value]
