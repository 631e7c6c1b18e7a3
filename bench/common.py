"""Shared bench pieces: the fixed huanhuan subset, seed 000's system prompt, the held-out loss.

Every contender trains on the same rows and is scored by the same function: mean
cross-entropy over the answer tokens including the end-of-turn token (<|im_end|>), in fp32,
with the examples rendered by the model's chat template.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CHATTUNE_BENCH_DATA", REPO.parent / "shared" / "data" / "huanhuan.json"))
SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"  # seed 000's system prompt
# the base every contender trains: `python -m bench quality --model ...` sets it for its child processes
MODEL = os.environ.get("CHATTUNE_BENCH_MODEL", "builtin:smollm2-135m-instruct")
LORA_R, LORA_ALPHA, LORA_DROPOUT = 8, 32, 0.1  # seed 000's LoraConfig
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # seed 000's list


def load_rows() -> list[dict]:
    if not DATA.is_file():
        raise FileNotFoundError(f"{DATA}: huanhuan.json not found (set CHATTUNE_BENCH_DATA)")
    return json.loads(DATA.read_text(encoding="utf-8"))


def split_rows(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A fixed, seeded subset: (train rows, held-out rows), disjoint, the same for everyone."""
    rows = load_rows()
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out = [rows[i] for i in order[:n_eval]]
    train = [rows[i] for i in order[n_eval:n_eval + n_train]]
    return train, held_out


def messages(row: dict) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": row["instruction"] + row.get("input", "")},
        {"role": "assistant", "content": row["output"]},
    ]


def model_dir() -> str:
    from chattune.models import resolve_model

    return resolve_model(MODEL)


def heldout_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean CE over answer tokens incl. <|im_end|>; fp32, no dropout, same for all contenders.

    One example per forward pass (no padding), vocabulary logits only where the next token
    is scored (`logits_to_keep`): the same sum as full padded logits, at ~half the work.
    """
    import torch

    from chattune.data.templates import encode_conversation, stop_token_ids

    stops = stop_token_ids(tokenizer)
    encoded = [encode_conversation(tokenizer, messages(r), stops) for r in rows]
    model = model.float().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for example in encoded:
            ids, labels = torch.tensor([example.input_ids]), torch.tensor(example.labels[1:])
            scored = (labels != -100).nonzero().flatten()  # position t predicts token t + 1
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=scored).logits[0].float()
            total += float(torch.nn.functional.cross_entropy(logits, labels[scored], reduction="sum"))
            count += scored.numel()
    return total / count


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_report(report: dict, suffix: str) -> Path:
    """bench/results/<date>-<time>-<suffix>.json, after printing the machine it was measured on."""
    from datetime import datetime

    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / datetime.now().strftime(f"%Y-%m-%d-%H%M-{suffix}.json")
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"machine: {json.dumps(report['machine'])}")
    return path
