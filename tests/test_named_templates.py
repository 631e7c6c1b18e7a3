"""Named templates: ids equal the published jinja's ids, exact text for the others, data.template resolution."""

import pytest
from transformers import AutoTokenizer

from chattune.data.named_templates import NAMED_TEMPLATES, use_template
from chattune.data.templates import (
    IGNORE_INDEX,
    TemplateError,
    encode_conversation,
    render,
    stop_token_ids,
)

# Published chat templates, copied from each model's tokenizer_config.json "chat_template"
# (JSON-decoded): Qwen2-7B-Instruct (same as Qwen1.5-Chat), Meta-Llama-3-8B-Instruct,
# Llama-2-7b-chat-hf. Our named templates are written independently; only ids must agree.
QWEN2_REFERENCE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_REFERENCE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA2_REFERENCE = (
    r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    r"{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    r"{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    r"{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    r"{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
    r"{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    r"{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    r"{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Tuna."}],
    [{"role": "system", "content": "现在你要扮演皇帝身边的女人--甄嬛"},
     {"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "家父是大理寺少卿甄远道。"},
     {"role": "user", "content": "  Two\nlines  "}, {"role": "assistant", "content": " spaced answer \n"},
     {"role": "user", "content": "third"}, {"role": "assistant", "content": "done"}],
]


@pytest.fixture
def fresh(builtin_tokenizer_dir):
    """A tokenizer of our own to set templates on (the session `tokenizer` stays untouched)."""
    return lambda: AutoTokenizer.from_pretrained(builtin_tokenizer_dir)


@pytest.mark.parametrize("name, reference", [
    ("chatml", QWEN2_REFERENCE), ("llama3", LLAMA3_REFERENCE), ("llama2", LLAMA2_REFERENCE),
])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_named_template_ids_equal_published_jinja(fresh, name, reference, messages):
    ours, ref = fresh(), fresh()
    use_template(ours, name)
    ref.chat_template = reference
    expected = ref.apply_chat_template(messages, tokenize=True)["input_ids"]
    encoded = encode_conversation(ours, messages, stop_token_ids(ours))
    assert encoded.input_ids == list(expected)
    assert encoded.trained_tokens > 0
    if name != "llama2":  # Llama-2's template has no generation prompt
        prompt = messages[:-1]
        assert render(ours, prompt, add_generation_prompt=True) == ref.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True)


def test_chatml_answers_train_through_im_end(fresh):
    tok = fresh()
    use_template(tok, "chatml")
    encoded = encode_conversation(tok, CONVERSATIONS[0], stop_token_ids(tok))
    trained = [i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tok.decode(trained) == "I am Tuna.<|im_end|>"


def test_plain_template_seed_003(fresh):
    tok = fresh()
    use_template(tok, "plain")
    messages = [{"role": "user", "content": "Add 1+1"}, {"role": "assistant", "content": "2"}]
    assert render(tok, messages) == f"{tok.bos_token}Add 1+1<sep>2{tok.eos_token}"
    encoded = encode_conversation(tok, messages, stop_token_ids(tok))
    trained = [i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    context = [i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE_INDEX]
    assert tok.decode(trained) == f"2{tok.eos_token}"
    assert tok.decode(context) == f"{tok.bos_token}Add 1+1<sep>"


def test_alpaca_and_baichuan2_text(fresh):
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    tok = fresh()
    use_template(tok, "alpaca")
    eos, bos = tok.eos_token, tok.bos_token
    assert render(tok, messages) == (
        f"{bos}Below is an instruction that describes a task. Write a response that appropriately completes "
        f"the request.\n\n### Instruction:\nq1\n\n### Response:\na1{eos}\n\n### Instruction:\nq2\n\n"
        f"### Response:\na2{eos}"
    )
    assert render(tok, [{"role": "system", "content": "S"}, *messages[:1]], add_generation_prompt=True) == (
        f"{bos}S\n\n### Instruction:\nq1\n\n### Response:\n")
    use_template(tok, "baichuan2")
    assert render(tok, [{"role": "system", "content": "S"}, *messages]) == (
        f"S<reserved_106>q1<reserved_107>a1{eos}<reserved_106>q2<reserved_107>a2{eos}")
    assert render(tok, messages[:3], add_generation_prompt=True).endswith("<reserved_106>q2<reserved_107>")


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_every_named_template_labels_each_answer(fresh, name):
    tok = fresh()
    use_template(tok, name)
    messages = CONVERSATIONS[1]
    encoded = encode_conversation(tok, messages, stop_token_ids(tok))
    assert len(encoded.turn_ends) == 3
    text = tok.decode([i for i, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX])
    for answer in ("家父是大理寺少卿甄远道。", "spaced answer", "done"):
        assert answer in text
    assert "你是谁" not in text and "third" not in text


def test_user_jinja_file_auto_and_unknown(fresh, tmp_path):
    tok = fresh()
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
                     "{% if add_generation_prompt %}[assistant] {% endif %}", encoding="utf-8")
    assert "jinja file" in use_template(tok, str(jinja))
    assert render(tok, CONVERSATIONS[0]) == f"[user] Who are you?{tok.eos_token}[assistant] I am Tuna.{tok.eos_token}"
    own = fresh()
    assert use_template(own, "auto") == "the tokenizer's own chat template"
    own.chat_template = None
    with pytest.raises(TemplateError, match="data.template: the tokenizer has no chat template; set data.template"):
        use_template(own, "auto")
    with pytest.raises(TemplateError, match=r"'vicuna' is not 'auto', a named template \(chatml, llama2"):
        use_template(tok, "vicuna")


def test_template_end_of_turn_becomes_eos_when_it_is_one_token(fresh):
    tok = fresh()
    tok.eos_token = "<|endoftext|>"  # a base-model tokenizer: EOS is not the chat end-of-turn
    use_template(tok, "chatml")
    assert tok.eos_token == "<|im_end|>"
    use_template(tok, "llama3")  # <|eot_id|> is not one token here: EOS stays (lint reports it)
    assert tok.eos_token == "<|im_end|>"


def test_config_help_lists_every_named_template():
    from chattune.config import DataConfig

    description = DataConfig.model_fields["template"].description
    assert all(name in description for name in NAMED_TEMPLATES)
