"""Mask strategies on a 3-turn conversation (exact label spans), truncation with them, pad = EOS."""

import pytest

from chattune.config import ModelConfig
from chattune.data.collate import PadCollator
from chattune.data.dataset import tokenize_conversations
from chattune.data.formats import Conversation
from chattune.data.templates import IGNORE_INDEX, encode_conversation, stop_token_ids

THREE_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You are welcome."},
]


def chatml_pieces(messages):
    """The built-in (ChatML) template's text cut into (piece, is_answer_turn_k) by hand."""
    pieces = []
    turn = 0
    for m in messages:
        if m["role"] == "assistant":
            pieces += [("<|im_start|>assistant\n", None), (m["content"] + "<|im_end|>", turn), ("\n", None)]
            turn += 1
        else:
            pieces.append((f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", None))
    return pieces


def expected_labels(tokenizer, messages, trained_turns):
    ids, labels = [], []
    for text, turn in chatml_pieces(messages):
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        trained = trained_turns == "all" or turn in trained_turns
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


@pytest.mark.parametrize("mask, trained_turns", [("assistant", {0, 1, 2}), ("last", {2}), ("all", "all")])
def test_mask_strategies_exact_label_spans(tokenizer, mask, trained_turns):
    ids, labels = expected_labels(tokenizer, THREE_TURNS, trained_turns)
    encoded = encode_conversation(tokenizer, THREE_TURNS, stop_token_ids(tokenizer), mask)
    assert encoded.input_ids == ids  # the hand-cut pieces tokenize like the whole text
    assert encoded.labels == labels
    eos = tokenizer.eos_token_id
    trained_eos = [i for i, (t, label) in enumerate(zip(ids, labels, strict=True)) if t == eos and label == eos]
    assert len(trained_eos) == {"assistant": 3, "last": 1, "all": 7}[mask]


def test_unknown_mask_is_refused(tokenizer):
    with pytest.raises(ValueError, match="unknown mask 'none'"):
        encode_conversation(tokenizer, THREE_TURNS, stop_token_ids(tokenizer), "none")


@pytest.mark.parametrize("mask", ["assistant", "last", "all"])
def test_truncation_with_each_mask_keeps_final_end_token(tokenizer, mask):
    long_answer = {"role": "assistant", "content": "word " * 200}
    conv = Conversation(THREE_TURNS[:-1] + [long_answer], "t:1")
    stops = stop_token_ids(tokenizer)
    examples, stats = tokenize_conversations(tokenizer, [conv], 64, "truncate", stops, mask=mask)
    (example,) = examples
    assert len(example["input_ids"]) == 64 and stats.truncated == 1
    assert example["input_ids"][-1] == tokenizer.eos_token_id and example["labels"][-1] == tokenizer.eos_token_id
    assert "Hello!" not in tokenizer.decode(example["input_ids"])  # earliest round went first
    if mask != "all":
        assert example["labels"][0] == IGNORE_INDEX
    _, dropped = tokenize_conversations(tokenizer, [conv], 64, "drop", stops, mask=mask)
    assert dropped.dropped == 1 and dropped.dropped_sources == ["t:1"]


def test_borrowed_tokenizer_with_pad_equal_eos_never_masks_the_real_eos(builtin_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from chattune.model.load import load_tokenizer

    borrowed = AutoTokenizer.from_pretrained(builtin_tokenizer_dir)
    borrowed.pad_token = None  # like Llama-2's tokenizer in seed 003
    borrowed.save_pretrained(tmp_path / "llama2-like")
    assert AutoTokenizer.from_pretrained(tmp_path / "llama2-like").pad_token is None
    tok = load_tokenizer(ModelConfig(name="builtin:smollm2-135m-instruct", tokenizer=str(tmp_path / "llama2-like")))
    assert tok.pad_token_id == tok.eos_token_id is not None
    stops = stop_token_ids(tok)
    short = encode_conversation(tok, THREE_TURNS[:3], stops)
    long = encode_conversation(tok, THREE_TURNS, stops)
    batch = PadCollator(tok.pad_token_id)([
        {"input_ids": short.input_ids, "labels": short.labels}, {"input_ids": long.input_ids, "labels": long.labels},
    ])
    n = len(short.input_ids)
    eos_at = short.turn_ends[-1] - 1
    assert short.input_ids[eos_at] == tok.eos_token_id
    assert batch["labels"][0, eos_at] == tok.eos_token_id and batch["attention_mask"][0, eos_at] == 1
    assert (batch["input_ids"][0, n:] == tok.pad_token_id).all()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, n:] == 0).all()
    assert int((batch["labels"][1] == tok.eos_token_id).sum()) == 3
