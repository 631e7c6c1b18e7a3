"""Property tests (hypothesis): random conversations through templating, masking and truncation.

Contents mix unicode, control characters, empty and long strings and special-token text
(`<|im_start|>`, `<|im_end|>`, ...), over the real SmolLM2 tokenizer with four templates.
Checked: nothing crashes except with the documented "no trainable token" error; every
trained token decodes to text inside an assistant answer (plus its end-of-turn token), so
no prompt token is ever trained; every kept example fits max_length and trains its
end-of-turn token; prompt ids for generation never turn message text into control tokens.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from chattune.data.dataset import tokenize_conversations
from chattune.data.formats import Conversation, DataError
from chattune.data.named_templates import use_template
from chattune.data.templates import (
    IGNORE_INDEX,
    TemplateError,
    encode_conversation,
    prompt_ids,
    stop_token_ids,
)

TEMPLATES = ("auto", "chatml", "plain", "alpaca")
SPECIAL_LOOKING = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>assistant\n", "</s>", "<sep>",
                   "### Response:\n", "<s>", "[INST]", "assistant", "\n", " ", "\t", "\r\n", "{{ x }}"]
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

piece = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),  # any unicode scalar, control characters included
    st.sampled_from(SPECIAL_LOOKING),
    st.tuples(st.sampled_from(["word ", "é", "漢字", "🙂", "ab"]), st.integers(1, 120)).map(lambda t: t[0] * t[1]),
)
content = st.lists(piece, max_size=5).map("".join)
answer = content.filter(lambda text: text.strip())  # blank answers are refused earlier (formats.py)


@st.composite
def conversations(draw, end_with_answer=True):
    messages = [{"role": "system", "content": draw(content)}] if draw(st.booleans()) else []
    rounds = draw(st.integers(1, 3))
    for i in range(rounds):
        messages.append({"role": "user", "content": draw(content)})
        if end_with_answer or i < rounds - 1:
            messages.append({"role": "assistant", "content": draw(answer)})
    return messages


@pytest.fixture(scope="module")
def tokenizers(builtin_tokenizer_dir):
    """One tokenizer per template (use_template sets the template, and EOS for chatml)."""
    out = {}
    for name in TEMPLATES:
        tok = AutoTokenizer.from_pretrained(builtin_tokenizer_dir)
        use_template(tok, name)
        out[name] = tok
    return out


def trained_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    runs, run = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token, "a label is always the token itself"
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    return runs + ([run] if run else [])


def assert_only_answers_trained(tok, messages, ids, labels, mask, stops):
    """Each run of trained tokens is (part of) one answer followed by its end-of-turn token."""
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    # what the tokenizer keeps of each answer (the GGUF-built SmolLM2 vocabulary lacks a few bytes)
    answers += [tok.decode(tok.encode(a, add_special_tokens=False), clean_up_tokenization_spaces=False) for a in answers]
    runs = trained_runs(ids, labels)
    assert 1 <= len(runs) <= (1 if mask == "last" else len(answers) // 2)
    stop_texts = [tok.decode([s], skip_special_tokens=False) for s in stops]
    for run in runs:
        assert run[-1] in stops, "every trained answer ends on its end-of-turn token"
        text = tok.decode(run[:-1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert any(text in a + stop for a in answers for stop in [""] + stop_texts), (text[-80:], [a[-80:] for a in answers])


@PROPERTY
@given(messages=conversations(), template=st.sampled_from(TEMPLATES), mask=st.sampled_from(["assistant", "last"]))
def test_no_prompt_token_is_ever_trained(tokenizers, messages, template, mask):
    tok = tokenizers[template]
    stops = stop_token_ids(tok)
    try:
        encoded = encode_conversation(tok, messages, stops, mask)
    except TemplateError as err:  # an answer glued into the prompt's last token: lint reports it
        assert "produced no tokens" in str(err)
        return
    assert len(encoded.input_ids) == len(encoded.labels)
    assert_only_answers_trained(tok, messages, encoded.input_ids, encoded.labels, mask, stops)


@PROPERTY
@given(messages=conversations(), template=st.sampled_from(TEMPLATES), mask=st.sampled_from(["assistant", "last", "all"]),
       max_length=st.integers(9, 160), policy=st.sampled_from(["truncate", "drop"]))
def test_truncation_keeps_only_trainable_examples_that_fit(tokenizers, messages, template, mask, max_length, policy):
    tok = tokenizers[template]
    stops = stop_token_ids(tok)
    try:
        examples, stats = tokenize_conversations(tok, [Conversation(messages, "x:1")], max_length, policy, stops,
                                                 mask=mask)
    except (TemplateError, DataError) as err:
        assert "produced no tokens" in str(err) or "no trainable token" in str(err)
        return
    assert stats.examples + stats.dropped == 1 == len(examples) + stats.dropped
    assert sum(stats.drop_reasons.values()) == stats.dropped
    for example in examples:
        ids, labels = example["input_ids"], example["labels"]
        assert len(ids) == len(labels) <= max_length
        trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        assert trained, "a kept example always trains something"
        if mask != "all":  # with "all" the template's glue after the last answer is trained too
            assert_only_answers_trained(tok, messages, ids, labels, mask, stops)  # each answer ends on its stop


@PROPERTY
@given(messages=conversations(end_with_answer=False), template=st.sampled_from(TEMPLATES))
def test_prompt_ids_never_turn_text_into_control_tokens(tokenizers, messages, template):
    tok = tokenizers[template]
    special = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(t) for t in tok.get_added_vocab()}
    ids = prompt_ids(tok, messages)
    blank = prompt_ids(tok, [{**m, "content": "x"} for m in messages])  # the template's own control tokens
    assert sorted(t for t in ids if t in special) == sorted(t for t in blank if t in special)
