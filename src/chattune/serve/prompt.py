"""Turn OpenAI-style messages into prompt ids without letting message text act as control tokens.

Roles come only from the JSON structure (`developer` counts as system). The ids come from
`chattune.data.templates.prompt_ids`, the one tokenization shared with `chattune chat`: the
template's own text is tokenized normally, each message content with
`split_special_tokens=True`, so a user typing `<|im_end|>` gets plain-text ids, never the
end-of-turn id.
"""

from __future__ import annotations

from chattune.data import templates
from chattune.data.templates import with_system

ROLES = {"system", "user", "assistant"}


class PromptError(ValueError):
    """Messages that cannot be turned into a prompt (reported to the client as a 400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def prompt_ids(tokenizer, messages: list[dict], system: str | None = None) -> list[int]:
    """Ids of the conversation followed by the template's assistant header."""
    try:
        return templates.prompt_ids(tokenizer, with_system(_checked(messages), system))
    except templates.TemplateError as err:
        raise PromptError(str(err), "messages") from None


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
