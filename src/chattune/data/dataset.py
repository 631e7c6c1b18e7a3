"""Training-example rules: load and mix sources, split, fit an example to max_length, count.

Nothing is dropped or cut silently: DataStats counts every truncated and dropped example
with its reason and a few sources. prepare.py applies these rules at scale (encode.py);
tokenize_conversations is the same, one conversation at a time. It does not batch or pad.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chattune.data.builtin import SOURCE as BUILTIN_SOURCE
from chattune.data.builtin import self_cognition
from chattune.data.builtin_classify import SOURCE as TOPIC_SOURCE
from chattune.data.builtin_classify import topic_conversations
from chattune.data.builtin_general import REPLAY_SOURCE, replay_conversations
from chattune.data.formats import Conversation, DataError, RowSpec, iter_conversations
from chattune.data.templates import Encoded, encode_conversation

if TYPE_CHECKING:
    from chattune.config import DataConfig

EXAMPLES_KEPT = 3  # sources listed per truncation/drop reason
SKIPPED_KEPT = 20  # skipped rows listed (with their reason) in data_stats.json; all are counted
CLIP_SAFETY = 4  # chars per vocabulary character allowed for normalizers that shrink text


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
    skipped: int = 0  # bad rows left out with data.on_error=skip
    skip_reasons: dict[str, int] = field(default_factory=dict)
    skipped_rows: list[str] = field(default_factory=list)  # "file:line:field: message", the first few
    replay: int = 0  # examples kept from the built-in general set (data.replay), included in `examples`

    def to_dict(self) -> dict:
        return asdict(self)


def row_spec(data_cfg: DataConfig, retriever=None) -> RowSpec:
    """How rows are read. With data.retrieval, `retriever` fills {examples} (a run dir's saved index at
    inference); None builds it from the corpus (training: retrieval.cached_index, built once)."""
    if getattr(data_cfg, "retrieval", None) and retriever is None:
        from chattune.data.retrieval import cached_index

        retriever = cached_index(data_cfg)
    return RowSpec(
        format=data_cfg.format, system=data_cfg.system, columns=dict(data_cfg.columns or {}),
        prompt=data_cfg.prompt, response=data_cfg.response, retriever=retriever,
    )


def load_data_conversations(data_cfg: DataConfig, seed: int, errors: list[DataError] | None = None) -> list[Conversation]:
    """Conversations from the configured file(s) or built-in dataset (no tokenizer needed).

    With data.sources, each file's rows are taken `weight` times (whole copies, then a
    seeded sample for the fraction). Each Conversation's meta["origin"] names its source.
    """
    mixed = []
    for number, (path, weight) in enumerate(source_weights(data_cfg)):
        mixed += weighted(load_source(data_cfg, path, seed, errors), weight, seed + number)
    return mixed


def source_weights(data_cfg: DataConfig) -> list[tuple[str, float]]:
    """(path, weight) of each training source: data.sources, else data.path once."""
    if data_cfg.sources:
        return [(source.path, source.weight) for source in data_cfg.sources]
    return [(data_cfg.path, 1.0)]


def load_source(data_cfg: DataConfig, path: str, seed: int, errors=None) -> list[Conversation]:
    return list(iter_source(data_cfg, path, seed, errors))


def iter_source(data_cfg: DataConfig, path: str, seed: int, errors=None) -> Iterator[Conversation]:
    """One source's conversations, each with meta["origin"] = `path`; a file is read row by row (JSONL streams)."""
    if path == BUILTIN_SOURCE:
        convs = self_cognition(data_cfg.name, data_cfg.author, size=data_cfg.size, seed=seed)
        if data_cfg.system:
            for conv in convs:
                conv.messages.insert(0, {"role": "system", "content": data_cfg.system})
    elif path == TOPIC_SOURCE:  # fixed seed: its test split (chattune.data.builtin_classify) stays disjoint
        convs = topic_conversations(system=data_cfg.system)
    elif path.startswith("builtin:"):
        raise DataError(path, f"unknown built-in dataset; available: {BUILTIN_SOURCE}, {TOPIC_SOURCE}")
    else:
        convs = iter_conversations(Path(path), row_spec(data_cfg), errors)
    for conv in convs:
        conv.meta["origin"] = path
        yield conv


def weighted(convs: list[Conversation], weight: float, seed: int) -> list[Conversation]:
    """`weight` whole copies, then a seeded sample for the fractional part."""
    whole = int(weight)
    extra = round((weight - whole) * len(convs))
    return convs * whole + random.Random(seed).sample(convs, extra)


def load_splits(data_cfg: DataConfig, seed: int, errors: list[DataError] | None = None):
    """(train, eval) conversations: eval from data.eval_path if set, else a data.eval_ratio share.

    The ratio split happens per source before weighting, so no weighted copy of an eval
    row can land in train. data.replay rows join train only, after the split.
    """
    replay = replay_conversations(getattr(data_cfg, "replay", 0), seed)
    if data_cfg.eval_path:
        train = load_data_conversations(data_cfg, seed, errors)
        return train + replay, load_source(data_cfg, data_cfg.eval_path, seed, errors)
    train, eval_ = [], []
    for number, (path, weight) in enumerate(source_weights(data_cfg)):
        part_train, part_eval = split_eval(load_source(data_cfg, path, seed, errors), data_cfg.eval_ratio, seed)
        train += weighted(part_train, weight, seed + number)
        eval_ += part_eval
    return train + replay, eval_


def split_eval(convs: list[Conversation], ratio: float, seed: int):
    """Shuffle-free, seeded split: returns (train, eval)."""
    if ratio <= 0 or len(convs) < 2:
        return convs, []
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(convs) * ratio))
    eval_ids = set(order[:n_eval])
    return [c for i, c in enumerate(convs) if i not in eval_ids], [convs[i] for i in sorted(eval_ids)]


def tokenize_conversations(
    tokenizer, convs, max_length: int, policy: str, stop_ids: set[int], progress=None, mask: str = "assistant",
):
    """Encode, truncate or drop; returns (list of {input_ids, labels}, DataStats)."""
    stats = DataStats()
    examples = []
    drop_reasons: Counter[str] = Counter()
    for conv in convs:
        encoded = encode_conversation(tokenizer, conv.messages, stop_ids, mask)
        if encoded.trained_tokens == 0:
            raise DataError(conv.source, "no trainable token after templating (empty answers?)")
        stats.turns_without_stop += sum(encoded.input_ids[end - 1] not in stop_ids for end in encoded.turn_ends)
        if len(encoded.input_ids) > max_length:
            encoded, reason = fit_example(tokenizer, conv.messages, encoded, max_length, policy, stop_ids, mask)
            if encoded is None:
                drop_reasons[reason] += 1
                remember_source(stats.dropped_sources, conv.source)
                if progress:
                    progress()
                continue
            stats.truncated += 1
            remember_source(stats.truncated_sources, conv.source)
        examples.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
        stats.replay += conv.meta.get("origin") == REPLAY_SOURCE
        stats.tokens += len(encoded.input_ids)
        stats.trained_tokens += encoded.trained_tokens
        stats.max_tokens = max(stats.max_tokens, len(encoded.input_ids))
        if progress:
            progress()
    stats.examples = len(examples)
    stats.dropped = sum(drop_reasons.values())
    stats.drop_reasons = dict(drop_reasons)
    return examples, stats


def remember_source(sources: list[str], source: str) -> None:
    """Keep the first EXAMPLES_KEPT sources of truncated or dropped examples (data_stats.json names them)."""
    if len(sources) < EXAMPLES_KEPT:
        sources.append(source)


def fit_example(tokenizer, messages, encoded: Encoded, max_length: int, policy: str, stop_ids, mask="assistant"):
    """Make an over-long example fit: drop earliest rounds, then cut the last answer's middle."""
    if policy == "drop":
        return None, f"longer than max_length={max_length}"
    system = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(system):]
    while len(encoded.input_ids) > max_length and len(body) > 2:
        body = body[2:]  # one user/assistant round, oldest first
        encoded = encode_conversation(tokenizer, system + body, stop_ids, mask)
    if len(encoded.input_ids) <= max_length:
        return encoded, ""
    return _cut_last_answer(encoded, max_length, tokenizer)


def _cut_last_answer(encoded: Encoded, max_length: int, tokenizer=None):
    """Keep the prompt and the answer's head, and still train its end-of-turn token."""
    end = encoded.turn_ends[-1]
    answer_start = encoded.turn_starts[-1]
    if answer_start >= max_length - 1:
        return None, f"prompt alone is longer than max_length={max_length}"
    keep = _whole_characters(tokenizer, encoded.input_ids, answer_start, max_length - 1)
    ids = encoded.input_ids[:keep] + [encoded.input_ids[end - 1]]
    labels = encoded.labels[:keep] + [encoded.labels[end - 1]]
    return Encoded(ids, labels, [len(ids)], [answer_start]), ""


def _whole_characters(tokenizer, ids: list[int], start: int, keep: int) -> int:
    """Move a cut back (a few tokens at most) so the head does not end inside a character
    spelled with several byte tokens; otherwise the model learns half a character, then stop."""
    for _ in range(4):
        if tokenizer is None or keep <= start:
            break
        tail = tokenizer.decode(ids[max(start, keep - 4):keep], skip_special_tokens=False)
        if not tail.endswith("\ufffd"):
            break
        keep -= 1
    return keep


def clip_length(tokenizer, max_length: int) -> int:
    """Characters past which one message alone surely exceeds `max_length` tokens.

    No token covers more characters than the longest vocabulary entry (byte-level and
    byte-fallback entries spell one character with one or more), so a longer message is
    over-long whatever the tokenizer does with it.
    """
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    longest = max(map(len, vocab), default=0)
    return CLIP_SAFETY * max(longest, 1) * (max_length + 16) if vocab else 0


def clip_long_messages(convs: list[Conversation], cap: int) -> list[tuple[Conversation, int, int]]:
    """Cut messages longer than `cap` characters to `cap` (in place), so a 10 MB row is not
    tokenized whole just to be truncated. Returns (conversation, message index, original length)."""
    clipped = []
    for conv in {id(c): c for c in convs}.values():  # weighted copies share one object
        for i, message in enumerate(conv.messages):
            if cap and len(message["content"]) > cap:
                clipped.append((conv, i, len(message["content"])))
                conv.messages[i] = {**message, "content": message["content"][:cap]}
                conv.meta["clipped"] = True
    return clipped

