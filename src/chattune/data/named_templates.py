"""Named chat templates for tokenizers that have none or a wrong one, and `data.template` resolution.

Each template is one small jinja string that is set on the tokenizer, so templates.py finds
the assistant spans the same way as for a tokenizer's own template. `chatml`, `llama2`
and `llama3` render exactly what Qwen2, Llama-2-chat and Llama-3-Instruct's published
templates render (tests compare ids). It does not tokenize or read data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from chattune.data.templates import TemplateError


@dataclass(frozen=True)
class NamedTemplate:
    jinja: str
    end_of_turn: str | None  # text that ends an assistant turn (None: the tokenizer's EOS)
    note: str
    markers: tuple[str, ...] = ()  # control tokens added (special) when the vocabulary lacks them


_CHATML = (
    "{% for m in messages %}"
    "{% if loop.first and m.role != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_LLAMA3 = (
    "{% for m in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Llama-2-chat: the system prompt sits inside the first [INST] block; each answer ends with EOS.
_LLAMA2 = (
    "{% set system = messages[0].content if messages and messages[0].role == 'system' else none %}"
    "{% for m in messages if m.role != 'system' %}"
    "{% if m.role == 'user' %}"
    "{% set text = m.content if not (loop.first and system is not none) "
    "else '<<SYS>>\\n' ~ system ~ '\\n<</SYS>>\\n\\n' ~ m.content %}"
    "{{ bos_token }}[INST] {{ text | trim }} [/INST]"
    "{% else %} {{ m.content | trim }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)

# Baichuan2-Chat marks turns with reserved tokens 195 (user) and 196 (assistant).
_BAICHUAN2 = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}"
    "{% elif m.role == 'user' %}<reserved_106>{{ m.content }}"
    "{% else %}<reserved_107>{{ m.content }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<reserved_107>{% endif %}"
)

# Seed 003 (OpenELM): BOS, prompt, <sep>, answer, EOS; no role markers.
_PLAIN = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}{{ m.content }}<sep>"
    "{% else %}{{ m.content }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

# jinja here drops the first newline after a block tag (trim_blocks), hence {{ '\\n\\n' }}.
_ALPACA = (
    "{{ bos_token }}"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}"
    "{% else %}Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
    "{% endif %}"
    "{% for m in messages if m.role != 'system' %}"
    "{% if m.role == 'user' %}{{ '\\n\\n' }}### Instruction:\n{{ m.content }}\n\n### Response:\n"
    "{% else %}{{ m.content }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

NAMED_TEMPLATES: dict[str, NamedTemplate] = {
    "chatml": NamedTemplate(_CHATML, "<|im_end|>", "Qwen1.5 / Qwen2 chat",
                            ("<|im_start|>", "<|im_end|>")),
    "llama2": NamedTemplate(_LLAMA2, None, "Llama-2-chat [INST] blocks"),
    "llama3": NamedTemplate(_LLAMA3, "<|eot_id|>", "Llama-3 Instruct headers"),
    "baichuan2": NamedTemplate(_BAICHUAN2, None, "Baichuan2-Chat reserved role tokens"),
    "plain": NamedTemplate(_PLAIN, None, "prompt<sep>answer</s> (seed 003, OpenELM)"),
    "alpaca": NamedTemplate(_ALPACA, None, "### Instruction / ### Response, for base models"),
}


@dataclass(frozen=True)
class TemplateChoice:
    """What `data.template` resolves to for one tokenizer, before anything is set on it."""

    jinja: str  # the chat template to render with
    eos_token: str | None  # a new EOS (a named template's one-token end of turn), or None to keep the tokenizer's
    stop_ids: frozenset[int]  # the ids that end an assistant turn once the template is applied
    description: str
    added_tokens: tuple[str, ...] = ()  # markers to add as special tokens (model/vocab.py: rows)


def choose_template(tokenizer, spec: str = "auto") -> TemplateChoice:
    """Resolve `data.template` for `tokenizer` without changing it; TemplateError if unusable.

    "auto" keeps the tokenizer's own (an error if it has none). A named template whose
    end-of-turn text is one token of this tokenizer makes that token the EOS, as the
    models it mirrors do, so training and generation stop on it. A template with markers
    (chatml) on a vocabulary without them adds them as special tokens, as TRL's
    setup_chat_format does: apply_template adds them, model/vocab.py grows and trains their rows.
    """
    keep = frozenset() if tokenizer.eos_token_id is None else frozenset({tokenizer.eos_token_id})
    if spec == "auto":
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "data.template: the tokenizer has no chat template; set data.template to one of "
                f"{', '.join(NAMED_TEMPLATES)} or a .jinja file"
            )
        return TemplateChoice(tokenizer.chat_template, None, keep, "the tokenizer's own chat template")
    if spec in NAMED_TEMPLATES:
        named = NAMED_TEMPLATES[spec]
        if missing := tuple(m for m in named.markers if _single_token_id(tokenizer, m) is None):
            return _with_markers(tokenizer, spec, named, missing)
        end_id = _single_token_id(tokenizer, named.end_of_turn) if named.end_of_turn else None
        eos, stops = (named.end_of_turn, frozenset({end_id})) if end_id is not None else (None, keep)
        return TemplateChoice(named.jinja, eos, stops, f"named template {spec!r} ({named.note})")
    path = Path(spec)
    if path.suffix != ".jinja" or not path.is_file():
        raise TemplateError(
            f"data.template: {spec!r} is not 'auto', a named template ({', '.join(NAMED_TEMPLATES)}) "
            "or an existing .jinja file"
        )
    return TemplateChoice(path.read_text(encoding="utf-8"), None, keep, f"jinja file {path}")


def _with_markers(tokenizer, spec: str, named: NamedTemplate, missing: tuple[str, ...]):
    """The choice for a vocabulary lacking the template's markers: they get the next free ids."""
    ids = {marker: len(tokenizer) + k for k, marker in enumerate(missing)}
    end = named.end_of_turn or ""
    stop = ids.get(end, _single_token_id(tokenizer, end))
    return TemplateChoice(named.jinja, end, frozenset({stop}),
                          f"named template {spec!r} ({named.note}); {', '.join(missing)} added "
                          "as special tokens (not in the vocabulary), their embedding rows trained",
                          missing)


def apply_template(tokenizer, choice: TemplateChoice) -> TemplateChoice:
    """Set the chosen chat template (and EOS, when the choice changes it) on `tokenizer`; return the
    choice with the stop ids the tokenizer now has (its added markers' real ids).

    Markers are added as special tokens (never split, CONTROL in a GGUF) and recorded on the
    tokenizer for model/vocab.py. The pad token is kept: it was set before (model/load.py) and
    is never a label, while a pad equal to the new EOS would hide the trained stop token.
    """
    tokenizer.chat_template = choice.jinja
    if choice.added_tokens:
        from tokenizers import AddedToken

        markers = [AddedToken(m, special=True, normalized=False) for m in choice.added_tokens]
        tokenizer.add_tokens(markers, special_tokens=True)
        tokenizer.chattune_added_tokens = list(choice.added_tokens)
    if choice.eos_token is not None:
        tokenizer.eos_token = choice.eos_token
    if choice.added_tokens:
        choice = replace(choice, stop_ids=frozenset({tokenizer.eos_token_id}))
    return choice


def added_token_ids(tokenizer) -> list[int]:
    """Ids of the markers apply_template added to this tokenizer ([] when it added none)."""
    return tokenizer.convert_tokens_to_ids(list(getattr(tokenizer, "chattune_added_tokens", [])))


def use_template(tokenizer, spec: str = "auto") -> str:
    """choose_template, then apply_template; return the description."""
    choice = choose_template(tokenizer, spec)
    apply_template(tokenizer, choice)
    return choice.description


def _single_token_id(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None
