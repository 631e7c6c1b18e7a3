"""Turn OpenAI-style messages into prompt ids without letting message text act as control tokens.

Roles come only from the JSON structure. The chat template renders the conversation with a
placeholder in place of each message's content; the template's own text (its special tokens
included) is tokenized normally, while each content is tokenized with
`split_special_tokens=True`, so a user typing `<|im_end|>` gets plain-text ids, never the
end-of-turn id. When no content holds special-token text the ordinary tokenization of the
full render is used, which is exactly what training saw.
"""

from __future__ import annotations

import re

from chattune.data.templates import render, with_system

ROLES = {"system", "user", "assistant"}
_MARK = re.compile("\ue000(\\d+)\ue001")


class PromptError(ValueError):
    """Messages that cannot be turned into a prompt (reported to the client as a 400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def prompt_ids(tokenizer, messages: list[dict], system: str | None = None) -> list[int]:
    """Ids of the conversation followed by the template's assistant header."""
    messages = with_system(_checked(messages), system)
    specials = _special_texts(tokenizer)
    if not any(s in m["content"] for m in messages for s in specials):
        text = render(tokenizer, messages, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return _ids_by_segments(tokenizer, messages)


def _checked(messages: list[dict]) -> list[dict]:
    if not messages:
        raise PromptError("messages must not be empty", "messages")
    out = []
    for i, message in enumerate(messages):
        role = "system" if message["role"] == "developer" else message["role"]
        if role not in ROLES:
            raise PromptError(
                f"messages[{i}].role {message['role']!r} is not supported (use system, user or assistant)",
                f"messages[{i}].role",
            )
        out.append({"role": role, "content": message["content"]})
    return out


def _special_texts(tokenizer) -> list[str]:
    added = getattr(tokenizer, "get_added_vocab", dict)()
    return [text for text in {*added, *tokenizer.all_special_tokens} if text]


def _ids_by_segments(tokenizer, messages: list[dict]) -> list[int]:
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    template_text = render(tokenizer, marked, add_generation_prompt=True)
    pieces = _MARK.split(template_text)  # glue, index, glue, index, ..., glue
    rebuilt = "".join(
        messages[int(p)]["content"] if k % 2 else p for k, p in enumerate(pieces)
    )
    if rebuilt != render(tokenizer, messages, add_generation_prompt=True):
        raise PromptError(
            "a message contains special-token text that this model's chat template "
            "cannot carry safely (the template rewrites message contents)",
            "messages",
        )
    ids: list[int] = []
    for k, piece in enumerate(pieces):
        if not piece:
            continue
        if k % 2:
            content = messages[int(piece)]["content"]
            ids += tokenizer(content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        else:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids
