"""Encode distinct conversations once, in batches over processes (datasets' map), into one Arrow table.

Each row gets, in one pass: ids and labels from the chat template (templates.encode_batch),
the facts lint needs (token count, trained tokens, end-of-turn problems, special-token
text, a duplicate key) and the truncated or dropped result (dataset.fit_example).
`Examples` reads a split's rows of that table back as {input_ids, labels} dicts. It does
not judge rows (lint.py), count splits (prepare.py) or key the cache (cache.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chattune.data.dataset import fit_example
from chattune.data.templates import IGNORE_INDEX, TemplateError, encode_batch

BATCH_SIZE = 256  # conversations per map call: large enough to amortize apply_chat_template's setup
PARALLEL_MIN_ROWS = 4000  # fewer rows encode faster in this process than worker start-up takes
MAX_PROCESSES = 8
ENCODED_FILE = "encoded.arrow"
FACT_COLUMNS = ("length", "trained", "error", "bad_turns", "no_stop", "truncated", "drop_reason",
                "kept_length", "kept_trained", "special_at", "specials", "dup")


@dataclass(frozen=True)
class EncodeSettings:
    stop_ids: tuple[int, ...]
    mask: str
    max_length: int
    truncation: str
    specials: tuple[str, ...]  # texts that tokenize to a control token (templates.special_texts)


def features():
    from datasets import Features, List, Value

    ints = List(Value("int32"))
    return Features({
        "source": Value("string"), "input_ids": ints, "labels": ints, "length": Value("int32"),
        "trained": Value("int32"), "error": Value("string"), "bad_turns": ints, "no_stop": Value("int32"),
        "truncated": Value("bool"), "drop_reason": Value("string"), "kept_length": Value("int32"),
        "kept_trained": Value("int32"), "special_at": Value("int32"), "specials": List(Value("string")),
        "dup": Value("string"),
    })


def encode_all(rows, tokenizer, settings: EncodeSettings, work: Path | None = None, num_proc: int | None = None):
    """One encoded row per row of `rows` (rowtable.py's table), in order; written to `work`/encoded*.arrow when given."""
    from datasets import Dataset

    if not len(rows):  # map would hand back the input columns unchanged
        return Dataset.from_dict({name: [] for name in features()}, features=features())
    if work is None or len(rows) < PARALLEL_MIN_ROWS:
        num_proc = None
    elif num_proc is None:
        num_proc = min(len(os.sched_getaffinity(0)), MAX_PROCESSES)
    with _progress_bar(len(rows) >= PARALLEL_MIN_ROWS), _same_os_environ():
        return rows.map(
            encode_rows, batched=True, batch_size=BATCH_SIZE, num_proc=num_proc if (num_proc or 1) > 1 else None,
            remove_columns=[name for name in rows.column_names if name != "source"], features=features(),
            desc="encode", fn_kwargs={"tokenizer": tokenizer, "settings": settings},
            new_fingerprint=hashlib.sha256(str(work).encode()).hexdigest()[:16],  # skips hashing the tokenizer
            cache_file_name=str(work / ENCODED_FILE) if work else None, keep_in_memory=work is None,
        )


@contextlib.contextmanager
def _same_os_environ():
    """Put the process's `os.environ` object back after datasets' map with num_proc.

    datasets 5.2.0 (arrow_dataset.py, `os.environ = prev_env`) swaps in a deep copy, so every
    library that captured the original mapping (rich's Console reads COLUMNS from it) no longer
    sees later changes. The original object gets the copy's contents, then takes its place.
    """
    environ = os.environ
    try:
        yield
    finally:
        current = dict(os.environ)
        os.environ = environ  # noqa: B003 (the object itself goes back; its contents follow)
        for key in set(environ) - set(current):
            del environ[key]
        environ.update(current)


@contextlib.contextmanager
def _progress_bar(show: bool):
    """datasets' bar for large sets only; its global switch is put back as it was."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_off = are_progress_bars_disabled()
    if not show:
        disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            enable_progress_bars()


def encode_rows(batch: dict, tokenizer, settings: EncodeSettings) -> dict:
    """Dataset.map's batched function: roles + contents -> ids, labels and facts."""
    convs = [[{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
             for roles, contents in zip(batch["roles"], batch["contents"], strict=True)]
    stops = set(settings.stop_ids)
    out: dict[str, list] = {name: [] for name in ("input_ids", "labels", *FACT_COLUMNS)}
    for messages, encoded in zip(convs, encode_batch(tokenizer, convs, stops, settings.mask), strict=True):
        for name, value in example_facts(tokenizer, messages, encoded, stops, settings).items():
            out[name].append(value)
    return out


def example_facts(tokenizer, messages: list[dict], encoded, stops: set[int], settings: EncodeSettings) -> dict:
    """Everything lint and the split counts need about one encoded conversation."""
    facts = {"input_ids": [], "labels": [], "length": 0, "trained": 0, "error": "", "bad_turns": [], "no_stop": 0,
             "truncated": False, "drop_reason": "", "kept_length": 0, "kept_trained": 0,
             **_special_text(messages, settings.specials), "dup": _duplicate_key(messages)}
    if isinstance(encoded, TemplateError):
        facts["error"] = str(encoded)
        return facts
    ids = encoded.input_ids
    facts.update(length=len(ids), trained=encoded.trained_tokens,
                 no_stop=sum(ids[end - 1] not in stops for end in encoded.turn_ends))
    if encoded.trained_tokens == 0:
        return facts
    facts["bad_turns"] = _untrained_ends(messages, encoded, stops, settings.mask)
    if len(ids) > settings.max_length:
        encoded, reason = fit_example(tokenizer, messages, encoded, settings.max_length, settings.truncation,
                                      stops, settings.mask)
        if encoded is None:
            facts["drop_reason"] = reason
            return facts
        facts["truncated"] = True
    facts.update(input_ids=encoded.input_ids, labels=encoded.labels, kept_length=len(encoded.input_ids),
                 kept_trained=encoded.trained_tokens)
    return facts


def _untrained_ends(messages: list[dict], encoded, stops: set[int], mask: str) -> list[int]:
    """Trained assistant turns (by answer number) that do not end on a trained stop token."""
    answers = sum(m["role"] == "assistant" for m in messages)
    turns = range(answers) if mask != "last" else [answers - 1]
    bad = []
    for turn in turns:
        end = encoded.turn_ends[turn]
        if not (encoded.input_ids[end - 1] in stops and encoded.labels[end - 1] != IGNORE_INDEX):
            bad.append(turn)
    return bad


def _special_text(messages: list[dict], specials: tuple[str, ...]) -> dict:
    for i, message in enumerate(messages):
        found = sorted(s for s in specials if s in message["content"])
        if found:
            return {"special_at": i, "specials": found}
    return {"special_at": -1, "specials": []}


def _duplicate_key(messages: list[dict]) -> str:
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def read_facts(table) -> dict[str, list]:
    """The small per-row columns as Python lists (ids and labels stay in Arrow)."""
    return {name: table.data.column(name).to_pylist() for name in (*FACT_COLUMNS, "source")}


class Examples(Sequence):
    """A split's training examples: rows of the encoded table, read as {input_ids, labels} dicts.

    Behaves as the list of dicts it replaces (len, index, iterate, ==), so the Trainer,
    the collators and the tests see the same thing; the ids stay in (memory-mapped) Arrow.
    """

    def __init__(self, table=None, rows: list[int] | None = None):
        self._table = table.select_columns(["input_ids", "labels", "source"]) if table is not None else None
        self._rows = list(rows or [])

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        row = self._table[self._rows[i]]
        return {"input_ids": row["input_ids"], "labels": row["labels"]}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A whole batch in one Arrow read (torch's DataLoader uses it when present)."""
        if not indices:
            return []
        batch = self._table[[self._rows[i] for i in indices]]
        return [{"input_ids": a, "labels": b} for a, b in zip(batch["input_ids"], batch["labels"], strict=True)]

    def __iter__(self):
        for start in range(0, len(self), 1024):
            yield from self.__getitems__(list(range(start, min(start + 1024, len(self)))))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Examples | list):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None

    def source(self, i: int) -> str:
        """The file:line the i-th example came from."""
        return self._table[self._rows[i]]["source"]
