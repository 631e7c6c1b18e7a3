"""Build training examples: load conversations, tokenize with labels, truncate, count.

Nothing is dropped or cut silently: DataStats counts every truncated and dropped example
with its reason and a few sources. It does not batch or pad; collate.py does.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chattune.data.builtin import SOURCE as BUILTIN_SOURCE
from chattune.data.builtin import self_cognition
from chattune.data.formats import Conversation, DataError, load_conversations
from chattune.data.templates import IGNORE_INDEX, Encoded, encode_conversation

EXAMPLES_KEPT = 3  # sources listed per truncation/drop reason


@dataclass
class DataStats:
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    truncated_sources: list[str] = field(default_factory=list)
    dropped_sources: list[str] = field(default_factory=list)
    turns_without_stop: int = 0
    max_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def load_data_conversations(data_cfg, seed: int) -> list[Conversation]:
    """Conversations from the configured file or built-in dataset (no tokenizer needed)."""
    if data_cfg.path == BUILTIN_SOURCE:
        convs = self_cognition(data_cfg.name, data_cfg.author, size=data_cfg.size, seed=seed)
        if data_cfg.system:
            for conv in convs:
                conv.messages.insert(0, {"role": "system", "content": data_cfg.system})
        return convs
    if data_cfg.path.startswith("builtin:"):
        raise DataError(data_cfg.path, f"unknown built-in dataset; available: {BUILTIN_SOURCE}")
    return load_conversations(Path(data_cfg.path), data_cfg.format, data_cfg.system)


def split_eval(convs: list[Conversation], ratio: float, seed: int):
    """Shuffle-free, seeded split: returns (train, eval)."""
    if ratio <= 0 or len(convs) < 2:
        return convs, []
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(convs) * ratio))
    eval_ids = set(order[:n_eval])
    return [c for i, c in enumerate(convs) if i not in eval_ids], [convs[i] for i in sorted(eval_ids)]


def tokenize_conversations(tokenizer, convs, max_length: int, policy: str, stop_ids: set[int], progress=None):
    """Encode, truncate or drop; returns (list of {input_ids, labels}, DataStats)."""
    stats = DataStats()
    examples = []
    drop_reasons: Counter[str] = Counter()
    for conv in convs:
        encoded = encode_conversation(tokenizer, conv.messages, stop_ids)
        if encoded.trained_tokens == 0:
            raise DataError(conv.source, "no trainable token after templating (empty answers?)")
        stats.turns_without_stop += sum(encoded.input_ids[end - 1] not in stop_ids for end in encoded.turn_ends)
        if len(encoded.input_ids) > max_length:
            encoded, reason = _fit(tokenizer, conv.messages, encoded, max_length, policy, stop_ids)
            if encoded is None:
                drop_reasons[reason] += 1
                _remember(stats.dropped_sources, conv.source)
                if progress:
                    progress()
                continue
            stats.truncated += 1
            _remember(stats.truncated_sources, conv.source)
        examples.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
        stats.tokens += len(encoded.input_ids)
        stats.trained_tokens += encoded.trained_tokens
        stats.max_tokens = max(stats.max_tokens, len(encoded.input_ids))
        if progress:
            progress()
    stats.examples = len(examples)
    stats.dropped = sum(drop_reasons.values())
    stats.drop_reasons = dict(drop_reasons)
    return examples, stats


def _remember(sources: list[str], source: str) -> None:
    if len(sources) < EXAMPLES_KEPT:
        sources.append(source)


def _fit(tokenizer, messages, encoded: Encoded, max_length: int, policy: str, stop_ids):
    """Make an over-long example fit: drop earliest rounds, then cut the last answer's middle."""
    if policy == "drop":
        return None, f"longer than max_length={max_length}"
    system = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(system):]
    while len(encoded.input_ids) > max_length and len(body) > 2:
        body = body[2:]  # one user/assistant round, oldest first
        encoded = encode_conversation(tokenizer, system + body, stop_ids)
    if len(encoded.input_ids) <= max_length:
        return encoded, ""
    return _cut_last_answer(encoded, max_length)


def _cut_last_answer(encoded: Encoded, max_length: int):
    """Keep the prompt and the answer's head, and still train its end-of-turn token."""
    end = encoded.turn_ends[-1]
    answer_start = next(i for i in range(end - 1, -1, -1) if encoded.labels[i] == IGNORE_INDEX) + 1
    if answer_start >= max_length - 1:
        return None, f"prompt alone is longer than max_length={max_length}"
    keep = max_length - 1
    ids = encoded.input_ids[:keep] + [encoded.input_ids[end - 1]]
    labels = encoded.labels[:keep] + [encoded.labels[end - 1]]
    return Encoded(ids, labels, [len(ids)]), ""
