"""Retrieval-augmented prompts: an index of labelled rows, the k nearest to a text, the {examples} block.

`build_index(retrieval_cfg, data_cfg)` reads the corpus (the training file by default) and
indexes its `field` texts with their `label`s; `Retriever.examples_for(text)` returns the
block that fills data.prompt's `{examples}`. The same call builds training and inference
prompts (formats.task_to_messages), and it never returns a corpus row whose text equals the
query (the row itself or a duplicate of it). The index is saved in the run dir as JSON (the
corpus rows and a fingerprint, `rundir.RETRIEVAL_INDEX`) and the search structure is rebuilt
from them on load: bm25s indexed the 350-row topic sets in 22-270 ms, and answered a query in
0.2 ms, on a 2-core AVX2 EPYC (bench/retrieval.py). It does not tokenize for the model, load a
model or write prompts itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter

from chattune.data.formats import EXAMPLES, DataError, rename_columns
from chattune.data.sources import read_rows

INDEX_VERSION = 1
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Entry:
    text: str
    label: str
    source: str  # file:line


def bm25_terms(text: str) -> list[str]:
    """Lower-cased words, and for CJK runs each character and each pair of neighbours.

    Chinese has no spaces, so a run of CJK characters as one "word" would only ever match itself;
    unigrams + bigrams are the usual n-gram substitute for a word segmenter (jieba) and need none.
    """
    terms = []
    for match in _TOKEN.finditer(text.lower()):
        run = match.group()
        if re.match(rf"[{_CJK}]", run):
            terms += list(run) + [run[i:i + 2] for i in range(len(run) - 1)]
        else:
            terms.append(run)
    return terms


def normalized(text: str) -> str:
    """What counts as the same text: case and whitespace ignored (a duplicate row is not new evidence)."""
    return " ".join(text.lower().split())


def default_field(prompt: str | None) -> str:
    names = [n for _, n, _, _ in Formatter().parse(prompt or "") if n and n != EXAMPLES]
    if not names:
        raise DataError("data.retrieval.field", "no text column to search with: set it, or name one in data.prompt")
    return names[0]


def read_corpus(path: str, text_field: str, label_field: str, columns: dict | None = None) -> list[Entry]:
    """Every row of `path` as an Entry; a row without its text or label fails with file:line:field."""
    entries = []
    for line, row in read_rows(Path(path)):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise DataError(where, f"each row must be a JSON object, got {type(row).__name__}")
        row = rename_columns(row, columns, where) if columns else row
        values = []
        for name in (text_field, label_field):
            value = row.get(name)
            if value is None or not str(value).strip():
                raise DataError(f"{where}:{name}", f"missing or empty (data.retrieval needs {text_field} and {label_field})")
            if not isinstance(value, str | int | float):
                raise DataError(f"{where}:{name}", f"must be text or a number, got {type(value).__name__}")
            values.append(str(value))
        entries.append(Entry(values[0], values[1], where))
    if not entries:
        raise DataError(path, "the retrieval corpus has no rows")
    return entries


def fingerprint(entries: list[Entry]) -> str:
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(json.dumps([entry.text, entry.label], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()[:16]


@dataclass
class Retriever:
    """The corpus, its search structure, and how examples are written into a prompt."""

    entries: list[Entry]
    k: int
    example: str
    header: str
    text_field: str = "text"  # the row column searched with
    retriever: str = "bm25"
    corpus: str = ""
    _bm25: object = field(default=None, repr=False)

    def __post_init__(self):
        import bm25s

        self._bm25 = bm25s.BM25()
        self._bm25.index([bm25_terms(e.text) for e in self.entries], show_progress=False)
        self._same = {}
        for number, entry in enumerate(self.entries):
            self._same.setdefault(normalized(entry.text), []).append(number)

    def nearest(self, text: str) -> list[Entry]:
        """The k best-scoring entries for `text`, best first, none with `text`'s own (normalized) text."""
        import numpy as np

        own = set(self._same.get(normalized(text), []))
        wanted = min(self.k + len(own), len(self.entries))
        if wanted <= len(own):
            return []
        scores = self._bm25.get_scores(bm25_terms(text) or [""])
        # the `wanted` best without sorting the whole corpus; every row tied with the last one stays in,
        # so ties are broken by corpus order, as a full sort would
        bar = np.partition(scores, len(scores) - wanted)[len(scores) - wanted]
        candidates = np.flatnonzero(scores >= bar)
        order = candidates[np.lexsort((candidates, -scores[candidates]))]
        return [self.entries[i] for i in order if i not in own][: self.k]

    def examples_for(self, text: str) -> str:
        """The {examples} block: the header, then one `example` line per retrieved row, best first."""
        lines = [self.example.format(text=e.text, label=e.label) for e in self.nearest(text)]
        return "\n".join([self.header, *lines] if self.header and lines else lines)

    def fingerprint(self) -> str:
        return fingerprint(self.entries)

    def to_json(self) -> dict:
        return {"version": INDEX_VERSION, "retriever": self.retriever, "corpus": self.corpus,
                "fingerprint": self.fingerprint(), "k": self.k, "example": self.example, "header": self.header,
                "field": self.text_field, "rows": [[e.text, e.label, e.source] for e in self.entries]}


def corpus_path(retrieval_cfg, data_cfg) -> str:
    if retrieval_cfg.corpus:
        return retrieval_cfg.corpus
    if data_cfg.sources or data_cfg.path.startswith("builtin:"):
        raise DataError("data.retrieval.corpus", "set the corpus file: the training data is not one file")
    return data_cfg.path


def build_index(data_cfg) -> Retriever:
    """The retriever data_cfg.retrieval describes, built from its corpus (read and checked first)."""
    cfg = data_cfg.retrieval
    text_field = cfg.field or default_field(data_cfg.prompt)
    label_field = cfg.label or data_cfg.response
    path = corpus_path(cfg, data_cfg)
    entries = read_corpus(path, text_field, label_field, dict(data_cfg.columns or {}))
    return Retriever(entries, cfg.k, cfg.example, cfg.header, text_field, cfg.retriever, path)


_BUILT: dict[str, Retriever] = {}


def _index_key(data_cfg) -> str:
    """What decides an index: the retrieval settings, the columns read, the corpus file and its version."""
    path = Path(corpus_path(data_cfg.retrieval, data_cfg))
    stat = path.stat() if path.is_file() else None
    settings = {**data_cfg.retrieval.model_dump(mode="json"), "corpus": str(path)}
    return json.dumps([settings, data_cfg.prompt, data_cfg.response, data_cfg.columns,
                       stat and (stat.st_size, stat.st_mtime_ns)], sort_keys=True, ensure_ascii=False)


def cached_index(data_cfg) -> Retriever:
    """build_index, once per process for the same settings and corpus file (size and mtime): prepare()
    reads each source with a row spec, and training saves the very index its prompts were built with."""
    key = _index_key(data_cfg)
    if key not in _BUILT:
        remember_index(data_cfg, build_index(data_cfg))
    return _BUILT[key]


def remember_index(data_cfg, retriever: Retriever) -> None:
    """Make `retriever` (a run dir's saved index) the one cached_index gives for `data_cfg` (eval's loss)."""
    _BUILT.clear()  # one corpus at a time is enough; a notebook re-run must not keep every old one
    _BUILT[_index_key(data_cfg)] = retriever


def load_index(path: Path, data_cfg) -> Retriever:
    """A run dir's saved index, refused when it was built with another retriever or corpus than `data_cfg`'s."""
    saved = json.loads(Path(path).read_text(encoding="utf-8"))
    cfg = data_cfg.retrieval
    entries = [Entry(*row) for row in saved.get("rows", [])]
    expected_corpus = cfg.corpus or data_cfg.path
    if saved.get("retriever") != cfg.retriever or saved.get("corpus") != expected_corpus:
        raise DataError(str(path), f"index built with retriever {saved.get('retriever')!r} on corpus "
                        f"{saved.get('corpus')!r}, but the run's config says retriever {cfg.retriever!r} "
                        f"on corpus {expected_corpus!r}")
    if saved.get("version") != INDEX_VERSION or fingerprint(entries) != saved.get("fingerprint"):
        raise DataError(str(path), "the retrieval index is damaged or from another chattune version "
                        f"(fingerprint {saved.get('fingerprint')!r}, rows give {fingerprint(entries)!r})")
    text_field = cfg.field or default_field(data_cfg.prompt)
    return Retriever(entries, cfg.k, cfg.example, cfg.header, text_field, cfg.retriever, saved["corpus"])


def with_retrieved_examples(messages: list[dict], retriever: Retriever | None) -> list[dict]:
    """chat and serve: the last user turn is the text to answer; the block of its nearest labelled rows
    goes before it (a chat message has no columns to fill data.prompt with). No retriever: unchanged."""
    if retriever is None or not messages or messages[-1].get("role") != "user":
        return messages
    block = retriever.examples_for(messages[-1]["content"])
    return [*messages[:-1], {**messages[-1], "content": f"{block}\n\n{messages[-1]['content']}" if block else messages[-1]["content"]}]
