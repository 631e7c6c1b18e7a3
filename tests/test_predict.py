"""Batch predict on a tiny random Llama: same answers as seed 002's loop, rows kept, bad data early."""

import json

import pytest
import torch
from bench.predict_speed import seed_002_predict  # the reference loop the benchmark times

from chattune.cli import main

ROWS = [
    {"id": 1, "instruction": "Who are you?", "output": "I am Tuna.", "label": {"kind": "identity"}},
    {"id": 2, "messages": [{"role": "user", "content": "Hi"}]},
    {"id": 3, "instruction": "Summarise", "input": "A long text " * 12, "tags": ["a", "b"]},
    {"id": 4, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, please, and explain why you like it in detail."},
        {"role": "assistant", "content": "Green."},
    ]},
    {"id": 5, "instruction": "2+2?", "output": "4"},
]


@pytest.fixture(scope="module")
def chat(varied_tiny_model_dir):
    from chattune.infer.chat import ChatModel

    return ChatModel.load(str(varied_tiny_model_dir))


@pytest.fixture
def data_file(write_jsonl):
    return write_jsonl(ROWS)


def test_batched_greedy_equals_one_at_a_time(chat, data_file):
    from chattune.infer.chat import GenerationSettings
    from chattune.infer.predict import load_prompt_rows, predict_all

    rows = load_prompt_rows(data_file)
    settings = GenerationSettings(max_new_tokens=16)
    batched = predict_all(chat, [r.messages for r in rows], settings, batch_size=4)
    with torch.inference_mode():
        single = [seed_002_predict(r.messages, chat.model, chat.tokenizer, 16).strip() for r in rows]
    assert batched == single
    assert all(batched), "a random model still produces text for each prompt"
    lengths = {len(chat.tokenizer.apply_chat_template(r.messages, tokenize=True)["input_ids"]) for r in rows}
    assert len(lengths) > 2, "prompts of different lengths, so left padding is exercised"


def test_each_row_stops_at_its_own_end_of_turn(chat, data_file):
    """Make row 0's first greedy token a stop token: row 0 ends right there, the others go on."""
    from chattune.infer.chat import GenerationSettings
    from chattune.infer.predict import load_prompt_rows
    from chattune.infer.predict import predict_all as generate_batch

    rows = load_prompt_rows(data_file)
    messages = [r.messages for r in rows[:3]]
    text = chat.tokenizer.apply_chat_template(messages[0], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([chat.tokenizer.encode(text, add_special_tokens=False)])
    with torch.inference_mode():
        first = int(chat.model(input_ids=ids).logits[0, -1].argmax())
    settings = GenerationSettings(max_new_tokens=8)
    before = generate_batch(chat, messages, settings)
    original_stops = chat.stop_ids
    chat.stop_ids = {*original_stops, first}
    try:
        after = generate_batch(chat, messages, settings)
        alone = [generate_batch(chat, [m], settings)[0] for m in messages[1:]]
    finally:
        chat.stop_ids = original_stops
    stop_text = chat.tokenizer.decode([first]).strip()  # not a special token, so it stays visible
    assert before[0].startswith(stop_text) and len(before[0]) > len(stop_text)
    assert after[0] == stop_text
    assert after[1:] == alone


def test_cli_keeps_every_row_field_and_order(varied_tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(varied_tiny_model_dir), "--data", str(data_file), "--out", str(out),
                 "--max-new-tokens", "6", "--batch-size", "2"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in row.items() if k != "prediction"} for row in written] == ROWS
    assert all(isinstance(row["prediction"], str) and row["prediction"] for row in written)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".preds")], "no temp file left"


def test_reference_answer_is_not_shown_to_the_model(data_file):
    from chattune.infer.predict import load_prompt_rows

    rows = load_prompt_rows(data_file)
    assert [m["role"] for m in rows[0].messages] == ["user"]
    assert [m["role"] for m in rows[3].messages] == ["system", "user", "assistant", "user"]
    assert all("Green." not in m["content"] for m in rows[3].messages)
    assert rows[0].row["output"] == "I am Tuna."


def test_sampling_differs_from_greedy(chat, data_file):
    from chattune.infer.chat import GenerationSettings
    from chattune.infer.predict import load_prompt_rows, predict_all

    messages = [r.messages for r in load_prompt_rows(data_file)]
    greedy = predict_all(chat, messages, GenerationSettings(max_new_tokens=8))
    torch.manual_seed(0)
    sampled = predict_all(chat, messages, GenerationSettings(max_new_tokens=8, temperature=1.0))
    assert len(sampled) == len(messages) and sampled != greedy


@pytest.mark.parametrize("bad_row, where", [
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "roles must alternate"),
    ({"instruction": 3}, "instruction"),
])
def test_bad_rows_fail_before_the_model_loads(bad_row, where, write_jsonl, tmp_path, capsys, monkeypatch):
    from chattune.infer import chat as chat_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for bad data")

    monkeypatch.setattr(chat_module.ChatModel, "load", no_model)
    data = write_jsonl([ROWS[0], bad_row])
    out = tmp_path / "preds.jsonl"
    assert main(["predict", "some-model-never-loaded", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err.replace("\n", "") and where in err.replace("\n", "")
    assert not out.exists()

