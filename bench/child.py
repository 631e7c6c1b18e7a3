"""One contender in its own process: train, note peak RSS, score the held-out slice, print JSON.

`python -m bench.child NAME --seed S --train N --eval M --out DIR`; the last stdout line is
the result. Kept apart so each contender's peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONTENDERS = ("recipe", "trl", "chattune", "base")


def run_contender(name: str, model_path: str, train_rows, out_dir: str, seed: int, overrides=()) -> dict:
    if name == "chattune":
        from bench.chattune_run import run

        return run(model_path, train_rows, out_dir, seed, overrides)
    if name == "recipe":
        from bench.seed_recipe import run
    else:
        from bench.trl_sft import run
    return run(model_path, train_rows, out_dir, seed)


def base_only(model_path: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {"seconds": 0.0, "tokens": 0, "trained_tokens": 0, "precision": "fp32",
            "model": AutoModelForCausalLM.from_pretrained(model_path), "tokenizer": AutoTokenizer.from_pretrained(model_path)}


def main(argv=None) -> None:
    import torch
    from transformers import set_seed

    from bench.common import heldout_loss, model_dir, peak_rss_mb, split_rows

    parser = argparse.ArgumentParser(prog="python -m bench.child")
    parser.add_argument("name", choices=CONTENDERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, required=True)
    parser.add_argument("--eval", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], help="chattune config override (KEY=VALUE)")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    set_seed(args.seed)
    train_rows, eval_rows = split_rows(args.train, args.eval)
    path = model_dir()
    result = base_only(path) if args.name == "base" else run_contender(args.name, path, train_rows, args.out, args.seed, args.set)
    train_peak = peak_rss_mb()
    scoring_started = time.perf_counter()
    loss = heldout_loss(result.pop("model"), result.pop("tokenizer"), eval_rows)
    result["heldout_seconds"] = round(time.perf_counter() - scoring_started, 1)
    seconds = max(result["seconds"], 1e-9)
    result.update({
        "name": args.name, "seed": args.seed, "train_examples": len(train_rows), "eval_examples": len(eval_rows),
        "train_peak_rss_mb": round(train_peak, 1), "heldout_loss": round(loss, 5),
        "tokens_per_s": round(result["tokens"] / seconds, 1) if result["tokens"] else None,
        "trained_tokens_per_s": round(result["trained_tokens"] / seconds, 1) if result["tokens"] else None,
        "seconds": round(result["seconds"], 2),
        "torch_threads": torch.get_num_threads(),
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
