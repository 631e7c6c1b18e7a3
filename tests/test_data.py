"""Reading data files, the built-in dataset, truncation and drop accounting."""

import json

import pytest

from chattune.config import load_config
from chattune.data.builtin import GENERAL, HELD_OUT_QUESTIONS, TOPICS, self_cognition
from chattune.data.dataset import load_data_conversations, split_eval, tokenize_conversations
from chattune.data.formats import DataError, load_conversations
from chattune.data.templates import IGNORE_INDEX, stop_token_ids


def test_alpaca_json_array_with_system(tmp_path):
    rows = [{"instruction": "你是谁？", "input": "", "output": "家父是大理寺少卿甄远道。"},
            {"instruction": "Add", "input": "1+1", "output": "2", "system": "Be terse."}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    convs = load_conversations(path, default_system="现在你要扮演皇帝身边的女人--甄嬛")
    assert convs[0].messages[0] == {"role": "system", "content": "现在你要扮演皇帝身边的女人--甄嬛"}
    assert convs[1].messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Add\n1+1"},
        {"role": "assistant", "content": "2"},
    ]
    assert convs[0].source.endswith("a.json:2") and convs[1].source.endswith("a.json:7")


def test_messages_jsonl_multi_turn(write_jsonl):
    path = write_jsonl([{"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}])
    (conv,) = load_conversations(path)
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("rows, where, message", [
    ([{"instruction": "q", "output": 3}], ":1:output", "must be a string"),
    ([{"instruction": "q"}, {"instruction": "q", "input": ""}], ":1:output", "missing required field"),
    ([{"messages": [{"role": "bot", "content": "x"}]}], ":1:messages[0].role", "unknown role 'bot'"),
    ([{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}], ":1", "alternate"),
    ([{"instruction": "q", "output": "ok"}, {"instruction": "q", "output": "  "}], ":2", "empty assistant answer"),
    ([{"text": "hello"}], ":1", "unknown row shape"),
])
def test_bad_rows_name_file_line_field(write_jsonl, rows, where, message):
    path = write_jsonl(rows)
    with pytest.raises(DataError) as err:
        load_conversations(path)
    assert f"{path}{where}:" in str(err.value) or str(err.value).startswith(f"{path}{where} ")
    assert message in str(err.value)


def test_bad_files(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: invalid JSON"):
        load_conversations(broken)
    array = tmp_path / "broken.json"
    array.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]')
    with pytest.raises(DataError, match=r"broken.json:3: invalid JSON"):
        load_conversations(array)
    with pytest.raises(DataError, match="file not found"):
        load_conversations(tmp_path / "nope.json")
    with pytest.raises(DataError, match="is a folder"):
        load_conversations(tmp_path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:1: not UTF-8"):
        load_conversations(latin)
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(DataError, match="file is empty"):
        load_conversations(empty)


def test_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes('\ufeff{"instruction": "a", "output": "b"}\n'.encode())
    assert len(load_conversations(path)) == 1


def test_builtin_self_cognition_uses_name_and_holds_out_demo_questions():
    convs = self_cognition("Tuna", "Chattune Labs", size=40, seed=1)
    assert len(convs) == 40
    answers = [m["content"] for c in convs for m in c.messages if m["role"] == "assistant"]
    general = {answer for _, answer in GENERAL}
    assert all("Tuna" in a or "Chattune Labs" in a or a in general for a in answers)
    assert any(a in general for a in answers) and sum(a not in general for a in answers) > len(answers) // 2
    questions = {m["content"] for c in convs for m in c.messages if m["role"] == "user"}
    assert not questions & set(HELD_OUT_QUESTIONS)
    all_questions = {q for qs, _ in TOPICS.values() for q in qs}
    assert not all_questions & set(HELD_OUT_QUESTIONS)
    assert any(len(c.messages) >= 4 for c in convs), "multi-round conversations are mixed in"
    assert self_cognition("Tuna", "X", size=5, seed=3)[0].messages == self_cognition("Tuna", "X", size=5, seed=3)[0].messages


def test_builtin_via_config_with_system():
    cfg = load_config(None, ["data.system=Be brief.", "data.size=5"])
    convs = load_data_conversations(cfg.data, seed=0)
    assert len(convs) == 5 and all(c.messages[0]["content"] == "Be brief." for c in convs)


def _long_conversation(rounds, answer_words=5):
    messages = []
    for i in range(rounds):
        messages += [{"role": "user", "content": f"question {i}"},
                     {"role": "assistant", "content": " ".join(["word"] * answer_words)}]
    from chattune.data.formats import Conversation

    return Conversation(messages, f"test#{rounds}")


def test_truncate_drops_oldest_rounds_then_cuts_answer_keeping_end_token(tokenizer):
    stops = stop_token_ids(tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    convs = [_long_conversation(1), _long_conversation(6), _long_conversation(1, answer_words=200)]
    examples, stats = tokenize_conversations(tokenizer, convs, 60, "truncate", stops)
    assert stats.truncated == 2 and stats.dropped == 0 and stats.examples == 3
    assert stats.truncated_sources == ["test#6", "test#1"]
    for ex in examples:
        assert len(ex["input_ids"]) <= 60
        trained = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE_INDEX]
        assert trained[-1] == eot, "the final answer's end-of-turn token stays trained"
    assert "question 5" in tokenizer.decode(examples[1]["input_ids"])
    assert "question 0" not in tokenizer.decode(examples[1]["input_ids"])


def test_drop_policy_counts_reasons(tokenizer):
    convs = [_long_conversation(1), _long_conversation(1, answer_words=200)]
    examples, stats = tokenize_conversations(tokenizer, convs, 60, "drop", stop_token_ids(tokenizer))
    assert len(examples) == 1
    assert stats.dropped == 1 and stats.drop_reasons == {"longer than max_length=60": 1}
    assert stats.dropped_sources == ["test#1"]


def test_split_eval_is_seeded_and_disjoint():
    convs = self_cognition("T", "A", size=20, seed=0)
    train, evals = split_eval(convs, 0.25, seed=7)
    assert len(evals) == 5 and len(train) == 15
    assert {c.source for c in train}.isdisjoint({c.source for c in evals})
    assert [c.source for c in split_eval(convs, 0.25, seed=7)[1]] == [c.source for c in evals]
