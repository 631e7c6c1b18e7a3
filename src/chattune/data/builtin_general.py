"""The built-in general-instruction set: a fixed guard split (only scored) and a replay split (only trained).

96 short single-turn rows written for the project (facts, arithmetic, writing, everyday
advice, short code, definitions, a few translations), English like the built-in model, in
general_instructions.jsonl next to this file. The split is part of the file, not drawn at
run time: the 32 guard rows measure forgetting after every run (training/forgetting.py) and
are never trained on; `data.replay: N` mixes N replay rows into training (cycled past 64),
without the run's system prompt, and never into the eval split.
"""

from __future__ import annotations

import json
import random
from functools import cache
from importlib.resources import files

from chattune.data.formats import Conversation

GUARD, REPLAY = "guard", "replay"
REPLAY_SOURCE = "builtin:general-replay"  # meta["origin"] of replay rows in the training set
FILE = "general_instructions.jsonl"


@cache
def general_rows() -> tuple[dict, ...]:
    """Every row of the set: {split, kind, instruction, output}."""
    text = files("chattune.data").joinpath(FILE).read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def split_rows(split: str) -> list[dict]:
    if split not in (GUARD, REPLAY):
        raise ValueError(f"split must be {GUARD!r} or {REPLAY!r}, got {split!r}")
    return [row for row in general_rows() if row["split"] == split]


def messages(row: dict) -> list[dict]:
    """One user/assistant round, no system message (the template may add its own default)."""
    return [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]


def guard_conversations() -> list[list[dict]]:
    return [messages(row) for row in split_rows(GUARD)]


def replay_conversations(n: int, seed: int) -> list[Conversation]:
    """`n` replay rows: whole seeded passes over the split, then a seeded part of one more.

    A row repeated by cycling keeps one source (like a weighted copy), so lint does not call it
    a duplicate; data_stats counts all `n` (DataStats.replay).
    """
    rows = split_rows(REPLAY)
    rng = random.Random(seed)
    picked: list[int] = []
    while len(picked) < n:
        order = list(range(len(rows)))
        rng.shuffle(order)
        picked += order[: n - len(picked)]
    convs = [Conversation(messages(rows[i]), f"{REPLAY_SOURCE}#{i}", {"origin": REPLAY_SOURCE}) for i in picked]
    return convs
