"""Stream every configured source into one Arrow table of rows, a chunk at a time, and split it by row number.

The rows of data.sources (or data.path), data.eval_path and data.replay are converted to
conversations as they are read (JSONL line by line, sources.iter_rows), over-long messages
clipped, and written to an Arrow file in chunks of CHUNK_ROWS, so no more than one chunk
of conversations is ever held in memory. A `RowRef` stands in for each row's Conversation
(its source and origin at hand, its messages read from the table when asked). The split
and the weighting are dataset.split_eval and dataset.weighted applied to row numbers, so
they pick the same rows as dataset.load_splits. It does not tokenize (encode.py) or lint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from chattune.data.builtin_general import replay_conversations
from chattune.data.dataset import (
    clip_long_messages,
    iter_source,
    source_weights,
    split_eval,
    weighted,
)
from chattune.data.formats import Conversation, DataError

CHUNK_ROWS = 10_000  # conversations held in memory at a time
ROWS_FILE = "rows.arrow"


def row_features():
    from datasets import Features, List, Value

    texts = List(Value("string"))
    return Features({"source": Value("string"), "origin": Value("string"), "roles": texts, "contents": texts,
                     "fields": texts, "clipped": Value("bool")})


@dataclass
class Block:
    """One source's rows: table rows start .. start + count - 1."""

    start: int = 0
    count: int = 0

    def rows(self) -> list[int]:
        return list(range(self.start, self.start + self.count))


@dataclass
class RowTable:
    table: object  # datasets.Dataset with row_features()
    blocks: list[Block]  # one per training source, in data.sources order
    eval_block: Block | None = None  # data.eval_path
    replay: Block = field(default_factory=Block)
    clipped: list[tuple[int, int, int]] = field(default_factory=list)  # (row, message index, characters before)


class RowRef:
    """A table row standing in for its Conversation: `source` and `origin` at hand, the rest read when asked."""

    __slots__ = ("table", "row", "source", "origin", "__dict__")

    def __init__(self, table, row: int, source: str, origin: str):
        self.table, self.row, self.source, self.origin = table, row, source, origin

    @functools.cached_property
    def _stored(self) -> dict:
        return self.table[self.row]

    @property
    def messages(self) -> list[dict[str, str]]:
        stored = self._stored
        return [{"role": r, "content": c} for r, c in zip(stored["roles"], stored["contents"], strict=True)]

    @property
    def meta(self) -> dict:
        stored = self._stored
        meta = {} if stored["fields"] is None else {"fields": stored["fields"]}
        return {**meta, "origin": self.origin, **({"clipped": True} if stored["clipped"] else {})}


def write_rows(data_cfg, seed: int, errors: list[DataError], clip_chars: int, work: Path | None) -> RowTable:
    """Every source's rows into one table (on disk in `work`, else in memory), in dataset.load_splits' read order."""
    writer = _ChunkWriter(work / ROWS_FILE if work else None, clip_chars)
    blocks = [writer.add_all(iter_source(data_cfg, path, seed, errors)) for path, _ in source_weights(data_cfg)]
    eval_block = writer.add_all(iter_source(data_cfg, data_cfg.eval_path, seed, errors)) if data_cfg.eval_path else None
    replay = writer.add_all(replay_conversations(getattr(data_cfg, "replay", 0), seed))
    return RowTable(writer.finish(), blocks, eval_block, replay, writer.clipped)


def split_rows(rows: RowTable, data_cfg, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, eval rows), as dataset.load_splits splits and weights the conversations."""
    train, eval_ = [], []
    for number, (block, (_, weight)) in enumerate(zip(rows.blocks, source_weights(data_cfg), strict=True)):
        part_train, part_eval = (block.rows(), []) if data_cfg.eval_path else split_eval(
            block.rows(), data_cfg.eval_ratio, seed)
        train += weighted(part_train, weight, seed + number)
        eval_ += part_eval
    if rows.eval_block is not None:
        eval_ = rows.eval_block.rows()
    return train + rows.replay.rows(), eval_


def row_refs(table) -> list[RowRef]:
    """One RowRef per table row (source and origin read column-wise, at once)."""
    sources = table.data.column("source").to_pylist()
    origins = table.data.column("origin").to_pylist()
    return [RowRef(table, row, source, origin) for row, (source, origin) in enumerate(zip(sources, origins, strict=True))]


class _ChunkWriter:
    """Appends conversations to the table, CHUNK_ROWS at a time; remembers which messages were clipped."""

    def __init__(self, path: Path | None, clip_chars: int):
        self.path, self.clip_chars = path, clip_chars
        self.count, self.clipped, self.parts = 0, [], []
        self.columns: dict[str, list] = {name: [] for name in row_features()}
        self.writer = None
        if path is not None:
            from datasets.arrow_writer import ArrowWriter

            self.writer = ArrowWriter(features=row_features(), path=str(path))

    def add_all(self, conversations) -> Block:
        block = Block(self.count)
        for conv in conversations:
            self._add(conv)
        block.count = self.count - block.start
        return block

    def _add(self, conv: Conversation) -> None:
        for _, index, chars in clip_long_messages([conv], self.clip_chars):
            self.clipped.append((self.count, index, chars))
        values = {"source": conv.source, "origin": conv.meta.get("origin", "?"),
                  "roles": [m["role"] for m in conv.messages], "contents": [m["content"] for m in conv.messages],
                  "fields": conv.meta.get("fields"), "clipped": bool(conv.meta.get("clipped"))}
        for name, value in values.items():
            self.columns[name].append(value)
        self.count += 1
        if len(self.columns["source"]) >= CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.columns["source"]:
            return
        if self.writer is not None:
            self.writer.write_batch(self.columns)
        else:
            from datasets import Dataset

            self.parts.append(Dataset.from_dict(self.columns, features=row_features()))
        self.columns = {name: [] for name in row_features()}

    def finish(self):
        from datasets import Dataset, concatenate_datasets

        self._flush()
        if self.writer is not None and self.count:
            self.writer.finalize()
            return Dataset.from_file(str(self.path))
        if not self.parts:
            return Dataset.from_dict({name: [] for name in row_features()}, features=row_features())
        return concatenate_datasets(self.parts) if len(self.parts) > 1 else self.parts[0]
