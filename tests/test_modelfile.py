"""Ollama Modelfile (exporting/modelfile.py) and the Go-template subset it is checked with (gotemplate.py)."""

from __future__ import annotations

import copy

import pytest

from chattune.exporting import gotemplate
from chattune.exporting.modelfile import (
    ModelfileError,
    check_modelfile_template,
    go_template,
    turn_pieces,
    write_modelfile,
)

CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More?"}],
    [{"role": "user", "content": "a\n\nb  "}, {"role": "assistant", "content": " spaced "}, {"role": "user", "content": "?"}],
]
LLAMA3_LIKE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
               "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def with_template(tokenizer, template: str):
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def test_go_subset_follows_text_template_trim_rules():
    template = 'A  {{- range .Messages }} [{{ .Role }}]\n {{- if eq .Role "user" }}{{ .Content }}{{ else }}-{{ end -}}  \n{{ end }}Z'
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert gotemplate.render(template, messages) == "A [user]hi [assistant]-Z"
    with pytest.raises(gotemplate.TemplateSyntaxError, match="unsupported action"):
        gotemplate.render("{{ .Messages | len }}", messages)
    with pytest.raises(gotemplate.TemplateSyntaxError, match="unclosed range"):
        gotemplate.render("{{ range .Messages }}x", messages)


def test_chatml_template_with_its_default_system_prompt(tokenizer):
    pieces = turn_pieces(tokenizer, ["<|im_end|>"])
    assert pieces.opening["user"] == "<|im_start|>user\n" and pieces.closing["assistant"] == "<|im_end|>\n"
    assert pieces.default_system.startswith("You are a helpful AI assistant named SmolLM")  # SmolLM2's own default
    template = go_template(pieces)
    assert check_modelfile_template(tokenizer, template, pieces.default_system, CONVERSATIONS) == 3
    assert check_modelfile_template(tokenizer, template, "Talk like a pirate.", CONVERSATIONS) == 3


def test_a_template_with_a_bos_head_and_no_default(tokenizer):
    llama3 = with_template(tokenizer, LLAMA3_LIKE)
    pieces = turn_pieces(llama3, ["<|eot_id|>"])
    assert pieces.head == tokenizer.bos_token and pieces.default_system is None
    assert pieces.generation == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert check_modelfile_template(llama3, go_template(pieces), None, CONVERSATIONS) == 3


def test_templates_it_cannot_reproduce_are_refused(tokenizer):
    plain = with_template(tokenizer, "{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    with pytest.raises(ModelfileError, match="no end-of-turn token between turns"):
        turn_pieces(plain, ["<|im_end|>"])
    pieces = turn_pieces(tokenizer, ["<|im_end|>"])
    broken = go_template(pieces).replace("<|im_start|>user\n", "<|im_start|>user ", 1)
    with pytest.raises(ModelfileError, match="renders sample conversation 0 differently"):
        check_modelfile_template(tokenizer, broken, pieces.default_system, CONVERSATIONS)


def test_modelfile_names_the_file_stops_and_system(tokenizer, tmp_path):
    write_modelfile(tmp_path, "model-q4_0.gguf", tokenizer, {tokenizer.convert_tokens_to_ids("<|im_end|>")},
                    "You are Tuna.", CONVERSATIONS)
    text = (tmp_path / "Modelfile").read_text()
    assert text.startswith("FROM ./model-q4_0.gguf\nTEMPLATE \"\"\"{{ range .Messages }}")
    assert 'PARAMETER stop "<|im_end|>"' in text and text.endswith('SYSTEM """You are Tuna."""\n')
