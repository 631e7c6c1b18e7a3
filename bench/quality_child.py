"""One contender of the quality bench in its own process: train under the held-out curve, print JSON.

`python -m bench.quality_child NAME --seed S --train N --eval M --epochs E --budget-s B
--every K --out DIR [--set KEY=VALUE ...]`. NAME is recipe, trl, chattune or chattune-fp32
(chattune with `train.precision=fp32`). The last stdout line is the result: the curve points,
the base loss, the peak RSS of this (training) process; scoring runs in a scorer subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONTENDERS = ("recipe", "trl", "chattune", "chattune-fp32")


def train_contender(args, model_path: str, train_rows: list[dict], curve) -> dict:
    common = {"epochs": args.epochs, "callbacks": [curve]}
    if args.name.startswith("chattune"):
        from bench.chattune_run import run

        # the forgetting guard scores after training, outside the curve's clock: off here to save wall time
        overrides = ["train.forgetting=false", *args.set, *(["train.precision=fp32"] if args.name == "chattune-fp32" else [])]
        return run(model_path, train_rows, args.out, args.seed, overrides, **common)
    if args.name == "recipe":
        from bench.seed_recipe import run
    else:
        from bench.trl_sft import run
    return run(model_path, train_rows, args.out, args.seed, **common)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.quality_child")
    parser.add_argument("name", choices=CONTENDERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, required=True)
    parser.add_argument("--eval", type=int, required=True)
    parser.add_argument("--epochs", type=float, required=True)
    parser.add_argument("--budget-s", type=float, required=True, help="training seconds (scoring excluded)")
    parser.add_argument("--every", type=int, required=True, help="score every this many trained examples")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], help="chattune config override (KEY=VALUE)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import torch
    from transformers import set_seed

    from bench.common import model_dir, split_rows
    from bench.quality_curve import HeldoutCurve, Scorer

    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    set_seed(args.seed)
    train_rows, _ = split_rows(args.train, args.eval)
    scorer = Scorer(args.eval, Path(args.out) / "scored-adapter")
    curve = HeldoutCurve(scorer, args.every, args.budget_s)
    try:
        result = train_contender(args, model_dir(), train_rows, curve)
    finally:
        scorer.close()
    points = [{"step": 0, "examples": 0, "tokens": 0, "trained_tokens": 0, "train_seconds": 0.0,
               "heldout_loss": round(scorer.base_loss, 5)}, *curve.points]
    print(json.dumps({
        "name": args.name, "seed": args.seed, "precision": result.get("precision"), "points": points,
        "final_loss": points[-1]["heldout_loss"], "train_seconds": round(curve.train_seconds, 1),
        "scoring_seconds": round(curve.scoring_seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
