"""data.retrieval: never retrieves a row's own text, one prompt function for training and inference,
the index saved in the run dir and checked on load, bad corpora named by file:line:field."""

import json

import pytest

from chattune.config import ConfigError, DataConfig, load_config
from chattune.data.formats import DataError, row_to_messages

PROMPT = "{examples}\nText: {text}\nCategories: {category}"
ROWS = [
    {"text": "The striker scored twice.", "category": "sports, finance", "output": "sports"},
    {"text": "The goalkeeper scored twice.", "category": "sports, finance", "output": "sports"},
    {"text": "the striker  scored twice.", "category": "sports, finance", "output": "sports"},  # a duplicate of 1
    {"text": "Stocks fell sharply.", "category": "sports, finance", "output": "finance"},
    {"text": "Bonds fell sharply today.", "category": "sports, finance", "output": "finance"},
    {"text": "The bank raised rates.", "category": "sports, finance", "output": "finance"},
]


def data_cfg(path, **retrieval) -> DataConfig:
    return DataConfig(path=str(path), prompt=PROMPT, response="output", retrieval={"k": 2, **retrieval})


def test_terms_split_cjk_into_characters_and_pairs():
    from chattune.data.retrieval import bm25_terms

    assert bm25_terms("Stocks FELL, 央行加息") == ["stocks", "fell", "央", "行", "加", "息", "央行", "行加", "加息"]


def test_a_row_never_retrieves_itself_or_a_duplicate_of_its_text(write_jsonl):
    from chattune.data.dataset import load_data_conversations
    from chattune.data.retrieval import build_index, normalized

    path = write_jsonl(ROWS)
    cfg = data_cfg(path, k=5)  # more than the other rows: everything else is returned
    index = build_index(cfg)
    for row in ROWS:
        found = [e.text for e in index.nearest(row["text"])]
        assert normalized(row["text"]) not in map(normalized, found), (row["text"], found)
    assert len(index.nearest(ROWS[0]["text"])) == 4  # 6 rows less itself and its duplicate
    for conv, row in zip(load_data_conversations(cfg, seed=0), ROWS, strict=True):
        prompt = conv.messages[-2]["content"]
        examples = prompt.split("\nText: ")[0].splitlines()[1:]  # under the header
        assert examples and all(normalized(line.split(" => ")[0]) != normalized(row["text"]) for line in examples)
    assert index.nearest(ROWS[3]["text"])[0].label == "finance"  # the nearest shares words with it


def test_without_retrieval_the_examples_line_is_left_out(write_jsonl):
    from chattune.data.dataset import row_spec

    path = write_jsonl(ROWS)
    plain = data_cfg(path).model_copy(update={"retrieval": None})
    (user, _), _ = row_to_messages(ROWS[3], "x:1", row_spec(plain))
    assert user["content"] == "Text: Stocks fell sharply.\nCategories: sports, finance"
    (user, _), _ = row_to_messages(ROWS[3], "x:1", row_spec(data_cfg(path)))
    assert user["content"].startswith("Labelled examples of similar texts:\n") and " => finance" in user["content"]


def test_retrieval_needs_an_examples_placeholder_and_named_columns():
    with pytest.raises(ValueError, match=r"\{examples\}"):
        DataConfig(path="x.jsonl", prompt="Text: {text}", response="output", retrieval={})
    with pytest.raises(ValueError, match=r"\{text\} and \{label\}"):
        DataConfig(path="x.jsonl", prompt=PROMPT, response="output", retrieval={"example": "{text}"})


def test_a_corpus_row_without_its_label_is_named_before_any_model_loads(write_jsonl, tmp_path, tiny_model_dir,
                                                                        monkeypatch):
    from chattune.training import trainer

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the corpus was checked")

    monkeypatch.setattr(trainer, "setup_model", no_model)
    data = write_jsonl(ROWS)
    corpus = write_jsonl([ROWS[0], {"text": "no label here", "category": "x"}], "corpus.jsonl")
    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}",
                             f"data.path={data}", f"data.prompt={PROMPT}", "data.response=output",
                             f"data.retrieval.corpus={corpus}"])
    with pytest.raises(DataError, match=r"corpus\.jsonl:2:output"):
        trainer.train(cfg)
    blank = write_jsonl([{**ROWS[0], "text": "  "}], "blank.jsonl")
    with pytest.raises(DataError, match=r"blank\.jsonl:1:text"):
        from chattune.data.retrieval import build_index

        build_index(data_cfg(data, corpus=str(blank)))


@pytest.fixture(scope="module")
def rag_run(tiny_model_dir, tmp_path_factory):
    from chattune.training.trainer import train

    folder = tmp_path_factory.mktemp("rag")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"run_dir={folder / 'run'}", f"data.path={data}",
                             f"data.prompt={PROMPT}", "data.response=output", "data.retrieval.k=2",
                             "train.max_steps=2", "train.batch_size=2", "train.precision=fp32"])
    return train(cfg).run_dir, data


def test_the_index_is_saved_in_the_run_dir_and_checked_on_load(rag_run, tmp_path):
    from chattune import rundir
    from chattune.data.retrieval import build_index

    run_dir, data = rag_run
    run = rundir.open_run_dir(run_dir)
    saved = json.loads((run_dir / rundir.RETRIEVAL_INDEX).read_text())
    assert saved["corpus"] == str(data) and len(saved["rows"]) == len(ROWS)
    loaded = run.retriever()
    assert loaded.fingerprint() == build_index(run.config().data).fingerprint()
    assert [e.text for e in loaded.nearest("Stocks rose.")] == [e.text for e in build_index(run.config().data).nearest("Stocks rose.")]
    other = run.config().data.model_copy(update={"retrieval": run.config().data.retrieval.model_copy(
        update={"corpus": "other.jsonl"})})
    with pytest.raises(DataError, match="corpus.*other.jsonl"):
        run.retriever(other)
    tampered = {**saved, "rows": saved["rows"][:-1]}
    (run_dir / rundir.RETRIEVAL_INDEX).write_text(json.dumps(tampered))
    try:
        with pytest.raises(DataError, match="damaged"):
            run.retriever()
    finally:
        (run_dir / rundir.RETRIEVAL_INDEX).write_text(json.dumps(saved))


def test_training_and_predict_build_the_same_prompt(rag_run, tmp_path):
    from chattune import rundir
    from chattune.data.dataset import load_data_conversations
    from chattune.data.prompts import load_prompt_rows
    from chattune.infer.chat import run_row_spec

    run_dir, data = rag_run
    trained = [c.messages[:-1] for c in load_data_conversations(rundir.open_run_dir(run_dir).config().data, seed=0)]
    predicted = [r.messages for r in load_prompt_rows(data, run_row_spec(str(run_dir)))]
    assert trained == predicted
    assert all("Labelled examples of similar texts:" in m[-1]["content"] for m in predicted)


def test_eval_scores_four_ways_and_chat_uses_the_index(rag_run):
    from chattune.api import retrieval_ablation
    from chattune.infer.chat import ChatModel, GenerationSettings

    run_dir, data = rag_run
    table = retrieval_ablation(run_dir, data, "accuracy", max_new_tokens=2, device="cpu")
    assert [v["name"] for v in table["variants"]] == ["base zero-shot", "base + retrieval", "fine-tuned",
                                                      "fine-tuned + retrieval"]
    assert [v["retrieval"] for v in table["variants"]] == [False, True, False, True]
    with_, without = table["variants"][1]["prompt_tokens_mean"], table["variants"][0]["prompt_tokens_mean"]
    assert with_ > without  # the examples are in the prompt
    saved = sorted(p.name for p in (run_dir / "eval").glob("*-retrieval.json"))
    assert saved and json.loads((run_dir / "eval" / saved[-1]).read_text())["variants"] == table["variants"]
    chat = ChatModel.load(str(run_dir))
    (turn,) = chat.with_examples([{"role": "user", "content": "Stocks fell sharply."}])
    assert turn["content"].endswith("\n\nStocks fell sharply.") and "Bonds fell sharply today. => finance" in turn["content"]
    assert chat.with_examples([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])[-1]["content"] == "y"
    # predict on a text is a chat turn: the same prompt, so the same greedy answer
    plain = [{"role": "user", "content": "Stocks fell sharply."}]
    assert chat.predict(["Stocks fell sharply."], max_new_tokens=3) == [chat.reply(plain, GenerationSettings(max_new_tokens=3))]


def test_unknown_retrieval_keys_are_refused():
    with pytest.raises((ConfigError, ValueError)):
        load_config(None, ["data.prompt=" + PROMPT, "data.response=output", "data.retrieval.kk=2"])


def test_the_chinese_set_has_seed_002s_shape_and_disjoint_splits(tmp_path):
    from chattune.data.builtin_classify_zh import LABELS_ZH, task_rows_zh, write_files_zh

    train, test = task_rows_zh("train"), task_rows_zh("test")
    assert (len(train), len(test)) == (350, 100) and not {r["text"] for r in train} & {r["text"] for r in test}
    assert all(r["category"] == LABELS_ZH and r["output"] in LABELS_ZH for r in train + test)
    assert [json.loads(line) for line in write_files_zh(tmp_path)[1].read_text().splitlines()] == test


def test_nearest_equals_a_full_ranking_of_the_corpus_ties_in_corpus_order():
    """The top-k selection (no full sort) gives what ranking every row by score, then by row, gives."""
    import random

    import numpy as np

    from chattune.data.retrieval import Entry, Retriever, bm25_terms, normalized

    rng = random.Random(0)
    words = ["stocks", "fell", "rose", "bank", "goal", "match", "rain", "sun", "央行", "加息", "天气"]
    entries = [Entry(" ".join(rng.choices(words, k=rng.randint(1, 4))), rng.choice("ab"), f"c:{i}") for i in range(60)]
    for k in (1, 3, 8):
        index = Retriever(entries, k, "{text} => {label}", "")
        for query in [e.text for e in entries[:20]] + ["nothing shared", "rain rain sun"]:
            scores = index._bm25.get_scores(bm25_terms(query) or [""])
            ranked = [entries[i] for i in np.lexsort((np.arange(len(entries)), -scores))
                      if normalized(entries[i].text) != normalized(query)]
            assert index.nearest(query) == ranked[:k], (k, query)
