"""Batched decoding (model/decode.py): the shared-prefix prefill and dropping finished rows give
exactly the tokens of decoding each prompt alone with a plain `model.generate`."""

from types import SimpleNamespace

import pytest
import torch

from chattune.model import decode
from chattune.model.decode import decode_batch, shared_prefix_length

QUESTIONS = ["Hi", "A much longer question about the weather today?", "法国的首都是哪里？", "Name three colours."]


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    common = list(range(100, 112))
    assert shared_prefix_length([common + [1], common + [2, 3]]) == 12
    assert shared_prefix_length([common, common + [5]]) == 11, "the shortest row keeps its last token"
    assert shared_prefix_length([[1, 2, 3, 9], [1, 2, 3, 8]]) == 0, "below MIN_SHARED_PREFIX: not worth a pass"
    assert shared_prefix_length([common + [1]]) == 0, "a single row has nothing to share"


@pytest.fixture(scope="module")
def varied(varied_tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chattune.data.templates import render

    tokenizer = AutoTokenizer.from_pretrained(varied_tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(varied_tiny_model_dir, dtype=torch.float32).eval()
    rows = [tokenizer(render(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    return model, tokenizer, rows


def _alone(model, row, stops, max_new_tokens):
    """One prompt, one plain generate call: new tokens up to and including the first stop."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stops))
    return _until_stop(out[0, len(row):].tolist(), stops)


def _until_stop(tokens, stops):
    ends = [i for i, t in enumerate(tokens) if t in stops]
    return tokens[: ends[0] + 1] if ends else tokens


def test_decoding_a_batch_equals_decoding_each_prompt_alone(varied, monkeypatch):
    model, tokenizer, rows = varied
    assert shared_prefix_length(rows) >= decode.MIN_SHARED_PREFIX, "the chat template's prefix is shared"
    free = _alone(model, rows[0], {tokenizer.eos_token_id}, 12)
    stops = {free[3]}  # a token row 0 really produces: row 0 ends early, the others may run on
    expected = [_alone(model, row, stops, 12) for row in rows]
    assert len(expected[0]) == 4 and any(len(e) == 12 for e in expected), "some rows end early, some run to the cap"
    calls = []
    real_generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw["input_ids"].shape[0]) or real_generate(**kw))
    options = {"max_new_tokens": 12, "do_sample": False, "use_cache": True, "eos_token_id": sorted(stops),
               "pad_token_id": tokenizer.pad_token_id}
    with torch.inference_mode():
        got = decode_batch(model, rows, options, stops)
    assert [_until_stop(g, stops) for g in got] == expected
    assert calls[0] == len(rows) and len(calls) > 1 and calls[-1] < len(rows), "finished rows left the batch"
    assert all(len(g) <= 12 for g in got)


def test_models_with_their_own_cache_decode_in_one_plain_call(varied, monkeypatch):
    model, tokenizer, rows = varied
    stops = {tokenizer.eos_token_id}
    expected = [_alone(model, row, stops, 5) for row in rows]
    monkeypatch.setattr(model.generation_config, "cache_implementation", "static")
    calls = []
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw) or SimpleNamespace(
        sequences=torch.cat([kw["input_ids"], torch.tensor([e + [0] * (5 - len(e)) for e in expected])], dim=1),
        past_key_values=None))
    got = decode_batch(model, rows, {"max_new_tokens": 5, "pad_token_id": 0}, stops)
    assert len(calls) == 1 and calls[0]["past_key_values"] is None and calls[0]["stopping_criteria"] is None
    assert [_until_stop(g, stops) for g in got] == expected
