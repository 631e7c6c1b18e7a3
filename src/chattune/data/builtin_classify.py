"""The built-in dataset `builtin:topic-classify`: a small seed-002-style text classifier task.

Sentences are built from per-topic templates (subject + event + detail), so the set is
deterministic, needs no download, and its train and test splits never share a sentence.
Each row asks for the topic among LABELS, in seed 002's shape (text + list of options);
the answer is the label alone. `python -m chattune.data.builtin_classify OUT_DIR` writes
train.jsonl and test.jsonl (alpaca rows) and train-task.jsonl / test-task.jsonl (the same
sentences as seed 002's raw columns text, category, output) for `chattune train` / `eval`.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path

from chattune.data.formats import Conversation

SOURCE = "builtin:topic-classify"
SYSTEM = "You are a text classification expert. Reply with the category name only."
INSTRUCTION = "Classify the text into one of the categories.\nText: {text}\nCategories: {labels}"

PARTS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "sports": (
        ["The home team", "Our striker", "The tennis champion", "The young sprinter", "The basketball squad",
         "The veteran goalkeeper", "The cycling team", "The rugby captain"],
        ["won the final", "broke the record", "lost in overtime", "signed a new contract",
         "trained for the marathon", "scored twice"],
        ["in front of a sold-out stadium.", "after a tense second half.", "at the national championship.",
         "despite a knee injury.", "before the season opener."],
    ),
    "technology": (
        ["The startup", "A new smartphone", "The chip maker", "The software update", "Our research lab",
         "The cloud provider", "The robotics company", "A popular app"],
        ["released a faster processor", "fixed a security bug", "launched an AI assistant",
         "doubled its battery life", "open-sourced its code", "cut server costs"],
        ["for developers worldwide.", "after months of testing.", "with a new operating system.",
         "using machine learning.", "ahead of the tech conference."],
    ),
    "cooking": (
        ["The chef", "My grandmother", "The bakery", "A food blogger", "The noodle shop",
         "The pastry cook", "Our kitchen team", "The street vendor"],
        ["baked fresh bread", "simmered the tomato sauce", "shared a soup recipe", "grilled the vegetables",
         "seasoned the roast chicken", "whisked the eggs"],
        ["with garlic and butter.", "for two hours on low heat.", "using fresh herbs.",
         "before serving dinner.", "with a pinch of salt."],
    ),
    "weather": (
        ["The forecast", "A cold front", "The storm", "Heavy rain", "The heat wave",
         "A thick fog", "Strong winds", "The first snow"],
        ["is expected to hit the coast", "brought flooding", "pushed temperatures up",
         "delayed morning flights", "will clear by the afternoon", "covered the valley"],
        ["this weekend.", "across the northern region.", "with gusts over 80 km/h.",
         "according to meteorologists.", "for the third day in a row."],
    ),
    "finance": (
        ["The central bank", "Stock markets", "The company", "Investors", "The bond market",
         "A major bank", "The currency", "Retail sales"],
        ["raised interest rates", "fell sharply", "reported record profits", "bought more shares",
         "cut its dividend", "recovered losses"],
        ["after the inflation report.", "during the trading session.", "in the last quarter.",
         "amid recession fears.", "as the dollar weakened."],
    ),
}
LABELS = list(PARTS)


def topic_texts(split: str = "train", seed: int = 0, parts=None, joiner: str = " ") -> list[tuple[str, str]]:
    """(sentence, label) pairs; train and test share no sentence.

    Per topic, the template combinations of `parts` (default PARTS) are shuffled with `seed`;
    the first 70 go to train and the next 20 to test.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(seed)
    pairs = []
    for label, (subjects, events, details) in (parts or PARTS).items():
        combos = [joiner.join(c) for c in itertools.product(subjects, events, details)]
        rng.shuffle(combos)
        pairs += [(text, label) for text in (combos[:70] if split == "train" else combos[70:90])]
    rng.shuffle(pairs)
    return pairs


def topic_rows(split: str = "train", size: int | None = None, seed: int = 0) -> list[dict]:
    """Alpaca rows {system, instruction, input, output}; `size` (optional) keeps a seeded subset."""
    rows = [{"system": SYSTEM, "instruction": INSTRUCTION.format(text=t, labels=", ".join(LABELS)),
             "input": "", "output": label} for t, label in topic_texts(split, seed)]
    return rows[:size] if size else rows


def task_rows(split: str = "train", seed: int = 0) -> list[dict]:
    """Seed 002's raw task rows {text, category, output}: read with data.prompt / data.response."""
    return [{"text": t, "category": ", ".join(LABELS), "output": label} for t, label in topic_texts(split, seed)]


def topic_conversations(system: str | None = None) -> list[Conversation]:
    """The train split as conversations (for data.path=builtin:topic-classify)."""
    convs = []
    for number, row in enumerate(topic_rows("train"), start=1):
        messages = [{"role": "system", "content": system or row["system"]},
                    {"role": "user", "content": row["instruction"]},
                    {"role": "assistant", "content": row["output"]}]
        convs.append(Conversation(messages, f"{SOURCE}:{number}"))
    return convs


def write_files(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """train/test.jsonl (alpaca rows) and train/test-task.jsonl (seed 002's raw columns), same sentences."""
    out = Path(out_dir)
    files = {}
    for split in ("train", "test"):
        files[out / f"{split}.jsonl"] = topic_rows(split, seed=seed)
        files[out / f"{split}-task.jsonl"] = task_rows(split, seed)
    return write_jsonl_files(files)


def write_jsonl_files(files: dict[Path, list[dict]]) -> list[Path]:
    """Each path's rows as JSONL, written atomically; the paths, in order."""
    from chattune.io import write_text_atomic

    for path, rows in files.items():
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return list(files)


def main(write, module: str) -> None:
    """`python -m MODULE OUT_DIR`: write the set's files and print their paths."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m {module} OUT_DIR")
    for written_path in write(sys.argv[1]):
        print(written_path)


if __name__ == "__main__":
    main(write_files, "chattune.data.builtin_classify")
