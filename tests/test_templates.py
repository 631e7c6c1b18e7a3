"""Label masks: prompts masked, every answer token and its end-of-turn token trained, pad never."""

import pytest

from chattune.data.templates import IGNORE_INDEX, TemplateError, encode_conversation, stop_token_ids

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def _expected(tokenizer, segments):
    ids, labels = [], []
    for text, trained in segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def test_two_turn_labels_match_exact_spans(tokenizer):
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! I am Tuna."},
        {"role": "user", "content": "Who made you?"},
        {"role": "assistant", "content": "Chattune Labs made me."},
    ]
    encoded = encode_conversation(tokenizer, messages, stop_token_ids(tokenizer))
    ids, labels = _expected(tokenizer, [
        (SYSTEM + "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello! I am Tuna.<|im_end|>", True),
        ("\n<|im_start|>user\nWho made you?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Chattune Labs made me.<|im_end|>", True),
        ("\n", False),
    ])
    assert encoded.input_ids == ids
    assert encoded.labels == labels
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained = [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != IGNORE_INDEX]
    assert trained.count(eot) == 2, "each answer's end-of-turn token is trained"
    assert tokenizer.pad_token_id == eot, "this tokenizer has pad == eos: the case the seeds get wrong"
    assert len(encoded.turn_ends) == 2


def test_system_prompt_is_masked(tokenizer):
    messages = [
        {"role": "system", "content": "You are Zhen Huan."},
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "家父是大理寺少卿甄远道。"},
    ]
    encoded = encode_conversation(tokenizer, messages, stop_token_ids(tokenizer))
    trained = [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "家父是大理寺少卿甄远道。<|im_end|>"


def test_template_that_rewrites_history_fails_loudly(tokenizer):
    class Rewriting:
        """A template whose rendering of earlier turns depends on what follows."""

        chat_template = "x"
        is_fast = True

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            return "".join(f"[{len(messages)}]{m['content']}" for m in messages)

    with pytest.raises(TemplateError, match="differently"):
        encode_conversation(Rewriting(), [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], set())


def test_missing_template_is_an_error(tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(TemplateError, match="no chat template"):
        encode_conversation(NoTemplate(), [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], set())


def test_spans_from_the_encoding_equal_spans_from_the_offsets_list(tokenizer):
    """encode_batch locates answers with char_to_token; the rule is _spans_from_offsets', for every span
    of a text with CJK, emoji (several byte pieces per character), spaces, newlines and special tokens."""
    from chattune.data.templates import TemplateError, _spans_from_encoding, _spans_from_offsets

    text = "<|im_start|>user\n甄嬛 🙂🙂 say  hi\n\n<|im_end|>\n<|im_start|>assistant\n臣妾做不到啊 ok.<|im_end|>\n"
    tokenizer("", add_special_tokens=False)
    encoding = tokenizer._tokenizer.encode(text, add_special_tokens=False)
    offsets = encoding.offsets

    def located(find, source, span):
        try:
            return find(source, [span])
        except TemplateError:
            return "no tokens"

    spans = [(lo, hi) for lo in range(len(text)) for hi in range(lo + 1, len(text) + 1)]
    assert all(located(_spans_from_encoding, encoding, s) == located(_spans_from_offsets, offsets, s) for s in spans)
    assert len({str(located(_spans_from_offsets, offsets, s)) for s in spans}) > 100  # the spans differ
