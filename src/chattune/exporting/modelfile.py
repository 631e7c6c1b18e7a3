"""An Ollama Modelfile for an exported GGUF: FROM, a TEMPLATE equal to the training template, stops, SYSTEM.

The training chat template (Jinja) is rendered on a conversation of sentinel strings; the text
between the sentinels gives each role's opening and closing pieces (a closing piece ends at an
end-of-turn token), the text before the first message, and the generation prompt. The TEMPLATE is
written from those pieces in the subset of Go templates that gotemplate.py renders, and
`check_modelfile_template` renders both on sample conversations and compares token ids. A template
whose turns cannot be cut that way (no end-of-turn token between turns, content rewritten) is
refused with the reason; ollama itself is not run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chattune.data.templates import render
from chattune.exporting import gotemplate
from chattune.exporting.merge import ExportError

MARK = {"system": "CHATTUNESYSTEM7F3A", "user": "CHATTUNEUSER51C2", "assistant": "CHATTUNEASSISTANT9D04",
        "user2": "CHATTUNEUSERTWO3B88"}


class ModelfileError(ExportError):
    """A chat template that the Modelfile cannot reproduce exactly."""


@dataclass
class TurnPieces:
    head: str  # before the first message (e.g. a BOS text)
    opening: dict[str, str]  # role -> text before its content
    closing: dict[str, str]  # role -> text after its content
    generation: str  # the assistant's opening at the end of the prompt
    default_system: str | None  # the system prompt the template adds when a conversation has none


def _between(text: str, names: list[str]) -> list[str]:
    """The text before, between and after the sentinels `names`, which must appear in order."""
    parts, position = [], 0
    for name in names:
        found = text.find(MARK[name], position)
        if found < 0:
            raise ModelfileError(f"the chat template does not show the {name.rstrip('2')} message as written")
        parts.append(text[position:found])
        position = found + len(MARK[name])
    return [*parts, text[position:]]


def _cut(gap: str, stops: list[str], what: str) -> tuple[str, str]:
    """Split the text between two contents at its first end-of-turn token (and the newlines after it)."""
    hits = [(gap.find(s), s) for s in stops if s and s in gap]
    if not hits:
        raise ModelfileError(f"no end-of-turn token between turns ({what}): {gap!r}; a Modelfile needs one")
    at, stop = min(hits)
    end = at + len(stop)
    while end < len(gap) and gap[end] == "\n":
        end += 1
    return gap[:end], gap[end:]


def turn_pieces(tokenizer, stop_texts: list[str]) -> TurnPieces:
    conversation = [{"role": "system", "content": MARK["system"]}, {"role": "user", "content": MARK["user"]},
                    {"role": "assistant", "content": MARK["assistant"]}, {"role": "user", "content": MARK["user2"]}]
    first, sys_user, user_asst, asst_user, tail = _between(render(tokenizer, conversation, add_generation_prompt=True),
                                                           ["system", "user", "assistant", "user2"])
    close_sys, open_user = _cut(sys_user, stop_texts, "system -> user")
    close_user, open_asst = _cut(user_asst, stop_texts, "user -> assistant")
    close_asst, open_user_again = _cut(asst_user, stop_texts, "assistant -> user")
    close_user_again, generation = _cut(tail, stop_texts, "user -> generation")
    if (open_user, close_user) != (open_user_again, close_user_again):
        raise ModelfileError("the user turn is written differently in different places of the conversation")
    alone, _ = _between(render(tokenizer, [{"role": "user", "content": MARK["user"]}], add_generation_prompt=True), ["user"])
    if not alone.endswith(open_user):
        raise ModelfileError("the first user turn opens differently without a system prompt")
    head_and_default = alone[: len(alone) - len(open_user)]
    default = None
    fits_default = len(head_and_default) >= len(first) + len(close_sys) > 0
    if fits_default and head_and_default.startswith(first) and head_and_default.endswith(close_sys):
        default = head_and_default[len(first): len(head_and_default) - len(close_sys)]
        head, open_sys = "", first
    else:
        head, open_sys = head_and_default, first[len(head_and_default):]
        if not first.startswith(head_and_default):
            raise ModelfileError("the text before the first message differs with and without a system prompt")
    return TurnPieces(head, {"system": open_sys, "user": open_user, "assistant": open_asst},
                      {"system": close_sys, "user": close_user, "assistant": close_asst}, generation, default)


def go_template(pieces: TurnPieces) -> str:
    def branch(role: str) -> str:
        return f"{pieces.opening[role]}{{{{ .Content }}}}{pieces.closing[role]}"

    return (f"{pieces.head}{{{{ range .Messages }}}}{{{{ if eq .Role \"system\" }}}}{branch('system')}"
            f"{{{{ else if eq .Role \"user\" }}}}{branch('user')}{{{{ else if eq .Role \"assistant\" }}}}"
            f"{branch('assistant')}{{{{ end }}}}{{{{ end }}}}{pieces.generation}")


def ollama_messages(messages: list[dict], system: str | None) -> list[dict]:
    """What Ollama hands the template: the Modelfile's SYSTEM first when the conversation has none."""
    if system is not None and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def check_modelfile_template(tokenizer, template: str, system: str | None, conversations: list[list[dict]]) -> int:
    """Token ids of the Modelfile's rendering == the training template's, per conversation; returns the count."""
    for i, messages in enumerate(conversations):
        prompt = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        ours = gotemplate.render(template, ollama_messages(prompt, system))
        theirs = render(tokenizer, prompt if system is None or any(m["role"] == "system" for m in prompt)
                        else [{"role": "system", "content": system}, *prompt], add_generation_prompt=True)
        if tokenizer.encode(ours, add_special_tokens=False) != tokenizer.encode(theirs, add_special_tokens=False):
            raise ModelfileError(f"the Modelfile TEMPLATE renders sample conversation {i} differently:\n"
                                 f"{ours!r}\nvs the training template:\n{theirs!r}")
    return len(conversations)


def modelfile_text(gguf_name: str, template: str, stop_texts: list[str], system: str | None) -> str:
    if '"""' in template or (system and '"""' in system):
        raise ModelfileError('the template or system prompt contains """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stop_texts]
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_name: str, tokenizer, stop_ids: set[int], system: str | None,
                    conversations: list[list[dict]]) -> int:
    """Write folder/Modelfile after checking its template; returns how many conversations were compared."""
    from chattune.io import write_text_atomic

    stop_texts = [tokenizer.convert_ids_to_tokens(i) for i in sorted(stop_ids)]
    pieces = turn_pieces(tokenizer, stop_texts)
    system = system if system is not None else pieces.default_system
    template = go_template(pieces)
    samples = [*conversations, [{"role": "system", "content": "Answer in one word."},
                                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                {"role": "user", "content": "Again?"}]]
    checked = check_modelfile_template(tokenizer, template, system, samples)
    write_text_atomic(folder / "Modelfile", modelfile_text(gguf_name, template, stop_texts, system))
    return checked
