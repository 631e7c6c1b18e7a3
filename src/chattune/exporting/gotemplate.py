"""Render the subset of Go's text/template that chattune's Ollama TEMPLATE uses; nothing else.

Ollama renders a Modelfile's TEMPLATE with Go's text/template. chattune writes templates from
these constructs only: literal text, `{{ range .Messages }}`, `{{ if eq .Role "R" }}`,
`{{ else if eq .Role "R" }}`, `{{ else }}`, `{{ end }}`, `{{ .Content }}`, `{{ .Role }}`, and the
`{{-` / `-}}` whitespace trims. This interpreter follows text/template's rules for them (a trim
marker removes all adjacent ASCII whitespace), so the export can check, token for token, that
the Modelfile renders what the training template renders. Anything else is a TemplateSyntaxError.
"""

from __future__ import annotations

import re

ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
IF_ROLE = re.compile(r'^(?:else )?if eq \.Role "([a-z]+)"$')


class TemplateSyntaxError(ValueError):
    """A construct outside the subset chattune writes."""


def tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with the trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in ACTION.finditer(template):
        text = template[position:match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        out += [("text", text), ("action", match.group(2))]
        position, trim_next = match.end(), bool(match.group(3))
    tail = template[position:]
    out.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return out


def parse(template: str) -> list:
    """A tree: text strings, ("field", name), ("range", body), ("if", [(role or None, body), ...])."""
    stack: list[list] = [[]]
    kinds: list[str] = []
    for kind, value in tokens(template):
        if kind == "text":
            if value:
                stack[-1].append(value)
        elif value in (".Content", ".Role"):
            stack[-1].append(("field", value[1:]))
        elif value == "range .Messages":
            node = ("range", [])
            stack[-1].append(node)
            stack.append(node[1])
            kinds.append("range")
        elif (match := IF_ROLE.match(value)) and not value.startswith("else"):
            branches = [(match.group(1), [])]
            stack[-1].append(("if", branches))
            stack.append(branches[0][1])
            kinds.append("if")
        elif (match := IF_ROLE.match(value)) or value == "else":
            if not kinds or kinds[-1] != "if":
                raise TemplateSyntaxError(f"{{{{ {value} }}}} outside an if")
            stack.pop()
            branches = stack[-1][-1][1]
            branches.append((match.group(1) if match else None, []))
            stack.append(branches[-1][1])
        elif value == "end":
            if not kinds:
                raise TemplateSyntaxError("{{ end }} without an open range or if")
            stack.pop()
            kinds.pop()
        else:
            raise TemplateSyntaxError(f"unsupported action {{{{ {value} }}}}")
    if kinds:
        raise TemplateSyntaxError(f"unclosed {kinds[-1]}")
    return stack[0]


def render(template: str, messages: list[dict]) -> str:
    """The template applied to `messages` (each {"role", "content"}), as Go's text/template would."""
    return _render(parse(template), messages, None)


def _render(nodes: list, messages: list[dict], message: dict | None) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "field":
            if message is None:
                raise TemplateSyntaxError(f".{node[1]} outside range .Messages")
            out.append(str(message[node[1].lower()]))
        elif node[0] == "range":
            out.extend(_render(node[1], messages, m) for m in messages)
        else:
            for role, body in node[1]:
                if role is None or (message is not None and message["role"] == role):
                    out.append(_render(body, messages, message))
                    break
    return "".join(out)
