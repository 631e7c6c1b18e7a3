"""Time `chattune predict`'s batched generation against seed 002's one-at-a-time loop.

Both run greedy on the same prompts with the built-in model (fp32, CPU) and must give
identical outputs; the result is the wall-time ratio. Run: python -m bench.predict_speed
[--prompts 64 --max-new-tokens 64 --batch-size 64]. CPU-bound: other work on the machine
changes the absolute numbers, so both loops run back to back in one process.
"""

from __future__ import annotations

import argparse
import sys
import time

from chattune.infer.predict import PREDICT_BATCH_SIZE

BUILTIN = "builtin:smollm2-135m-instruct"


def seed_002_predict(messages, model, tokenizer, max_new_tokens):
    """Seed 002's predict(), verbatim but for max_new_tokens (512 there) and the CPU device."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    model_inputs = tokenizer([text], return_tensors="pt").to("cpu")
    generated_ids = model.generate(model_inputs.input_ids, max_new_tokens=max_new_tokens)
    generated_ids = [out[len(inp):] for inp, out in zip(model_inputs.input_ids, generated_ids, strict=True)]
    return tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]


def benchmark_prompts(count: int) -> list[list[dict]]:
    """`count` distinct user prompts: the built-in dataset's questions, then variants of them."""
    from chattune.data.builtin import self_cognition

    questions = []
    for conv in self_cognition("Tuna", "Chattune Labs", size=max(count, 64), seed=0):
        question = [m for m in conv.messages if m["role"] == "user"][-1]["content"]
        if question not in questions:
            questions.append(question)
    styles = ["{}", "{} Answer in one sentence.", "Please explain: {}", "{} Be detailed."]
    prompts = [style.format(q) for style in styles for q in questions]
    if len(prompts) < count:
        raise ValueError(f"only {len(prompts)} distinct benchmark prompts; ask for fewer")
    return [[{"role": "user", "content": text}] for text in prompts[:count]]


def run(prompts: int = 64, max_new_tokens: int = 64, batch_size: int = PREDICT_BATCH_SIZE, target: str = BUILTIN) -> dict:
    import torch

    from chattune.infer.chat import ChatModel, GenerationSettings
    from chattune.infer.predict import predict_all

    chat = ChatModel.load(target)
    conversations = benchmark_prompts(prompts)
    started = time.perf_counter()
    one_by_one = []
    with torch.inference_mode():
        for number, messages in enumerate(conversations, start=1):
            one_by_one.append(seed_002_predict(messages, chat.model, chat.tokenizer, max_new_tokens).strip())
            _progress("seed 002 loop", number, len(conversations))
    seed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        _progress("batched", done[0], len(conversations))

    batched = predict_all(chat, conversations, GenerationSettings(max_new_tokens=max_new_tokens), batch_size, advance)
    batch_seconds = time.perf_counter() - started
    differing = [i for i, (a, b) in enumerate(zip(one_by_one, batched, strict=True)) if a != b]
    return {
        "prompts": prompts, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
        "seed_loop_seconds": round(seed_seconds, 2), "batched_seconds": round(batch_seconds, 2),
        "speedup": round(seed_seconds / batch_seconds, 2), "same_outputs": not differing,
        "differing_prompts": differing, "torch_threads": torch.get_num_threads(),
    }


def _progress(label: str, done: int, total: int) -> None:
    if done % 16 == 0 or done == total:
        print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH_SIZE)
    args = parser.parse_args(argv)
    result = run(args.prompts, args.max_new_tokens, args.batch_size)
    print(
        f"predict speed: {result['prompts']} prompts, greedy, {result['max_new_tokens']} new tokens max, "
        f"{result['torch_threads']} threads\n"
        f"  seed 002 one-at-a-time loop: {result['seed_loop_seconds']:.1f} s\n"
        f"  chattune batched (batch {result['batch_size']}): {result['batched_seconds']:.1f} s\n"
        f"  speedup: {result['speedup']:.1f}x; identical outputs: {result['same_outputs']}"
    )
    if not result["same_outputs"]:
        print(f"  outputs differ for prompts {result['differing_prompts']}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
