"""`chattune.data.prepare`: the same findings, ids, labels and counts as the old per-row path, each
example tokenized once, and a cache that hits on the same inputs and misses when data, template or
settings change."""

import json
import os
from pathlib import Path

import pytest
import yaml
from bench.data_prepare_legacy import legacy_prepare
from transformers import AutoTokenizer

from chattune.config import load_config
from chattune.data import encode, prepare
from chattune.data.formats import DataError
from chattune.data.named_templates import NAMED_TEMPLATES, apply_template, choose_template
from chattune.data.templates import stop_token_ids

BAD = Path(__file__).parent / "data" / "bad"
BAD_CASES = yaml.safe_load((BAD / "expected.yaml").read_text(encoding="utf-8"))


def chat(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


ROWS = [
    {"instruction": "Who are you?", "output": "I am Tuna."},
    chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "And?"), ("assistant", "Bye.")),
    {"instruction": "Who are you?", "output": "I am Tuna."},  # a duplicate
    {"instruction": "Repeat", "input": "x", "output": "word " * 120},  # over max_length=64
    {"instruction": "Say <|im_end|> please", "output": "No."},  # special-token text
    chat(("user", "q"), ("assistant", "")),  # a bad row
    {"instruction": "多轮", "output": "好的。", "history": [["一", "二"], ["三", "四"]]},
] + [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(12)]


@pytest.fixture
def fresh(builtin_tokenizer_dir):
    return lambda: AutoTokenizer.from_pretrained(builtin_tokenizer_dir)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def findings(report):
    return {kind: [(f.where, f.message, f.kind) for f in getattr(report, kind)]
            for kind in ("errors", "warnings", "skipped")}


def assert_same_as_legacy(fresh, overrides, **kwargs):
    cfg = load_config(None, overrides)
    old = legacy_prepare(cfg.data, fresh(), cfg.seed)
    new = prepare(cfg.data, fresh(), cfg.seed, **kwargs)
    assert new.report.template == old["report"].template
    assert findings(new.report) == findings(old["report"])
    assert new.stats == old["stats"]
    assert list(new.train) == old["examples"].get("train", [])
    assert list(new.eval) == old["examples"].get("eval", [])
    assert [(c.source, c.messages) for c in new.eval_conversations] == \
        [(c.source, c.messages) for c in old["eval_conversations"]]
    assert new.lengths == old["lengths"]
    return new


CASES = {
    "defaults": [],
    "skip bad rows, eval split": ["data.on_error=skip", "data.eval_ratio=0.2", "data.max_length=64"],
    "drop, mask last": ["data.on_error=skip", "data.truncation=drop", "data.max_length=64", "data.mask=last"],
    "chatml, mask all": ["data.on_error=skip", "data.template=chatml", "data.mask=all", "data.system=Sys."],
    "llama3 (end of turn not trained)": ["data.template=llama3"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prepare_matches_the_per_row_path(name, fresh, write_jsonl, home):
    path = write_jsonl(ROWS)
    new = assert_same_as_legacy(fresh, [f"data.path={path}", *CASES[name]], cache_mode=False)
    assert not new.from_cache


def test_weighted_sources_and_eval_file_match(fresh, write_jsonl, home):
    a, b = write_jsonl(ROWS[:5], "a.jsonl"), write_jsonl(ROWS[6:], "b.jsonl")
    held = write_jsonl(ROWS[7:10], "held.jsonl")
    assert_same_as_legacy(fresh, [f"data.sources=[{{path: {a}, weight: 2}}, {{path: {b}, weight: 0.5}}]",
                                  f"data.eval_path={held}", "data.replay=3"])


# huge_row.jsonl (10 MB, made on the fly): test_bad_data.py::test_huge_row_is_clipped_before_tokenizing
@pytest.mark.parametrize("name", sorted(n for n, c in BAD_CASES.items() if c.get("level") != "file" and n != "huge_row.jsonl"))
def test_bad_data_corpus_matches(name, fresh, home):
    for on_error in ("raise", "skip"):
        assert_same_as_legacy(fresh, [f"data.path={BAD / name}", f"data.on_error={on_error}"])


def test_a_file_level_problem_still_raises(fresh, home):
    with pytest.raises(DataError, match="empty"):
        prepare(load_config(None, [f"data.path={BAD / 'empty.jsonl'}"]).data, fresh(), 0, cache_mode=True)


def test_several_processes_give_the_same_result(fresh, write_jsonl, home, monkeypatch):
    monkeypatch.setattr(encode, "PARALLEL_MIN_ROWS", 0)
    monkeypatch.setenv("CHATTUNE_TEST_MARK", "before")
    environ, path = os.environ, write_jsonl(ROWS * 3)
    new = assert_same_as_legacy(fresh, [f"data.path={path}", "data.on_error=skip", "data.max_length=64"],
                                cache_mode=True, num_proc=2)
    assert len({Path(f["filename"]).name for f in new.train._table.cache_files}) == 2  # two workers wrote
    assert os.environ is environ, "datasets' map swapped os.environ; rich would stop seeing COLUMNS"
    assert os.environ["CHATTUNE_TEST_MARK"] == "before"


def test_a_jsonl_file_streams_in_chunks_and_is_never_read_whole(fresh, write_jsonl, home, monkeypatch):
    """Files larger than memory: JSONL is read line by line, and at most rowtable.CHUNK_ROWS conversations
    are held before they go to the row table on disk; the result is the per-row path's all the same."""
    from chattune.data import cache, rowtable

    monkeypatch.setattr(rowtable, "CHUNK_ROWS", 4)
    held, flush = [], rowtable._ChunkWriter._flush

    def counted_flush(self):
        held.append((len(self.columns["source"]), self.writer is not None))
        flush(self)

    tokenizers, path = iter([fresh(), fresh()]), write_jsonl(ROWS * 2)
    read_bytes, read_text = Path.read_bytes, Path.read_text

    def never_the_data(read):
        def guarded(self, *args, **kwargs):
            assert self != path, f"{self} was read whole"
            return read(self, *args, **kwargs)
        return guarded

    monkeypatch.setattr(rowtable._ChunkWriter, "_flush", counted_flush)
    monkeypatch.setattr(Path, "read_bytes", never_the_data(read_bytes))
    monkeypatch.setattr(Path, "read_text", never_the_data(read_text))
    new = assert_same_as_legacy(lambda: next(tokenizers), [f"data.path={path}", "data.on_error=skip"], cache_mode=True)
    written = [n for n, on_disk in held if n and on_disk]  # the legacy path reads the same rows, unchunked
    assert written == [4] * 9 and sum(written) == len(ROWS) * 2 - 2  # the two bad rows are skipped
    assert not list((cache.cache_root() / new.key).glob(rowtable.ROWS_FILE))  # only the encoded table is kept


class CountingBackend:
    """The Rust tokenizer, counting every text it encodes (transformers' calls included)."""

    def __init__(self, inner):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "texts", [])

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    def encode(self, text, *args, **kwargs):
        self.texts.append(text)
        return self.inner.encode(text, *args, **kwargs)

    def encode_batch(self, texts, *args, **kwargs):
        self.texts.extend(texts)
        return self.inner.encode_batch(texts, *args, **kwargs)


def test_each_example_is_tokenized_once(fresh, write_jsonl, home, monkeypatch):
    tok = fresh()
    counting = CountingBackend(tok._tokenizer)
    monkeypatch.setattr(tok, "_tokenizer", counting)
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(30)]
    cfg = load_config(None, [f"data.path={write_jsonl(rows)}"])
    data = prepare(cfg.data, tok, 0, cache_mode=False)
    assert len(data.train) == 30
    texts = [t for t in counting.texts if t]
    assert len(texts) == 30 and len(set(texts)) == 30
    counting.texts.clear()
    legacy_prepare(cfg.data, tok, 0)
    assert len([t for t in counting.texts if t]) == 60  # the per-row path tokenized each twice


def test_cache_hits_on_the_same_inputs_and_misses_on_a_change(fresh, write_jsonl, home):
    path = write_jsonl(ROWS)

    def run(*overrides):
        cfg = load_config(None, [f"data.path={path}", "data.on_error=skip", *overrides])
        return prepare(cfg.data, fresh(), cfg.seed, cache_mode=True)

    first = run()
    assert not first.from_cache and first.key and (home / "data-cache" / first.key / "meta.json").is_file()
    again = run()
    assert again.from_cache and again.key == first.key
    assert list(again.train) == list(first.train) and again.stats == first.stats
    assert findings(again.report) == findings(first.report) and again.lengths == first.lengths
    assert [c.messages for c in again.eval_conversations] == [c.messages for c in first.eval_conversations]
    assert not run("data.template=chatml").from_cache
    assert not run("data.max_length=64").from_cache
    path.write_text(path.read_text(encoding="utf-8") + json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    changed = run()
    assert not changed.from_cache and changed.key != first.key
    assert run().from_cache
    assert not list((home / "data-cache").glob(".tmp-*")), "a temporary folder was left behind"


def test_cache_keeps_the_newest_entries(fresh, write_jsonl, home, monkeypatch):
    from chattune.data import cache

    monkeypatch.setattr(cache, "KEEP", 2)
    path = write_jsonl(ROWS)
    for length in (40, 50, 60):
        prepare(load_config(None, [f"data.path={path}", "data.on_error=skip", f"data.max_length={length}"]).data,
                fresh(), 0, cache_mode=True)
    assert len([p for p in (home / "data-cache").iterdir() if not p.name.startswith(".")]) == 2


def test_small_data_is_not_cached_by_default(fresh, write_jsonl, home):
    cfg = load_config(None, [f"data.path={write_jsonl(ROWS[:2])}"])
    assert not prepare(cfg.data, fresh(), 0).key
    assert not (home / "data-cache").exists()


@pytest.mark.parametrize("spec", ["auto", *NAMED_TEMPLATES])
def test_choose_template_changes_nothing_and_knows_the_stop_ids(spec, fresh):
    tok = fresh()
    before = (tok.chat_template, tok.eos_token)
    choice = choose_template(tok, spec)
    assert (tok.chat_template, tok.eos_token) == before
    apply_template(tok, choice)
    assert tok.chat_template == choice.jinja and set(choice.stop_ids) == stop_token_ids(tok)


def test_examples_read_like_a_list_of_dicts(fresh, write_jsonl, home):
    data = prepare(load_config(None, [f"data.path={write_jsonl(ROWS[:2])}"]).data, fresh(), 0, cache_mode=False)
    items = list(data.train)
    assert data.train == items and data.train[-1] == items[-1] and data.train[:1] == items[:1]
    assert data.train.__getitems__([1, 0]) == [items[1], items[0]]
    assert items[0] in data.train and data.train.source(0).endswith(":1")
