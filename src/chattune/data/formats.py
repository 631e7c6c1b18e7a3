"""Turn data rows into conversations: a list of {role, content} messages per row.

Knows row shapes (alpaca with history, sharegpt, OpenAI-style messages), column renaming
and config-declared task conversion (a prompt with {column} placeholders plus an answer
column). Files are read by sources.py. Every problem is a DataError naming file:line:field.
It does not tokenize.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any

from chattune.data.sources import DataError, iter_rows, read_rows

__all__ = ["DataError", "Conversation", "RowSpec", "load_conversations", "read_rows"]

ROLES = ("system", "user", "assistant")
EXAMPLES = "examples"  # the data.prompt placeholder retrieval fills (data/retrieval.py); never a column
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    source: str  # "file:line", for error messages and reports
    meta: dict[str, Any] = field(default_factory=dict)  # "fields": the row field of each message

    @property
    def origin(self) -> str:
        """The source (file or built-in set) this conversation came from; "?" when not recorded."""
        return self.meta.get("origin", "?")


@dataclass
class RowSpec:
    """How to read rows: shape, column renames, task conversion, default system prompt."""

    format: str = "auto"
    system: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # our name -> the file's column
    prompt: str | None = None  # task conversion: user prompt with {column} placeholders
    response: str | None = None  # task conversion: the answer column
    retriever: Any = None  # data/retrieval.Retriever: fills {examples} of the prompt (data.retrieval)


Messages = tuple[list[dict[str, str]], list[str]]  # messages and the row field each came from


def detect_format(row: Any) -> str:
    if isinstance(row, dict) and "messages" in row:
        return "messages"
    if isinstance(row, dict) and "conversations" in row:
        return "sharegpt"
    if isinstance(row, dict) and ("instruction" in row or "output" in row):
        return "alpaca"
    keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
    raise ValueError(
        f"unknown row shape (keys: {keys}); expected alpaca (instruction/input/output), sharegpt "
        "(conversations), messages, or set data.columns / data.prompt + data.response"
    )


def _text_field(row: dict, key: str, where: str, required: bool, sep: str = ":") -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}{sep}{key}", "missing required field")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}{sep}{key}", f"must be a string, got {type(value).__name__} {value!r:.40}")
    return value


def _with_system(messages: list, fields: list, system: str | None, system_field: str) -> Messages:
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages], [system_field, *fields]
    return messages, fields


def alpaca_to_messages(row: dict, where: str, default_system: str | None) -> Messages:
    instruction = _text_field(row, "instruction", where, required=True)
    extra = _text_field(row, "input", where, required=False)
    output = _text_field(row, "output", where, required=True)
    system = _text_field(row, "system", where, required=False)
    messages, fields = [], []
    history = row.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{where}:history", "must be a list of [question, answer] pairs")
    for turn, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise DataError(f"{where}:history[{turn}]", "must be a [question, answer] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        fields += [f"history[{turn}][0]", f"history[{turn}][1]"]
    prompt = f"{instruction}\n{extra}" if instruction and extra else instruction + extra
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    fields += ["instruction", "output"]
    if system:
        return _with_system(messages, fields, system, "system")
    return _with_system(messages, fields, default_system, "data.system")


def chat_to_messages(row: dict, where: str, default_system: str | None) -> Messages:
    return _turns_to_messages(row, where, default_system, "messages", ("role", "content"), {r: r for r in ROLES})


def sharegpt_to_messages(row: dict, where: str, default_system: str | None) -> Messages:
    messages, fields = _turns_to_messages(row, where, None, "conversations", ("from", "value"), SHAREGPT_ROLES)
    system = _text_field(row, "system", where, required=False)
    if system:
        return _with_system(messages, fields, system, "system")
    return _with_system(messages, fields, default_system, "data.system")


def _turns_to_messages(row, where, default_system, key, names, roles: dict[str, str]) -> Messages:
    role_key, content_key = names
    items = row.get(key)
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}:{key}", f"must be a non-empty list of {{{role_key}, {content_key}}}")
    messages, fields = [], []
    for i, item in enumerate(items):
        spot = f"{where}:{key}[{i}]"
        if not isinstance(item, dict):
            raise DataError(spot, f"must be an object with {role_key} and {content_key}, got {type(item).__name__}")
        role = item.get(role_key)
        if role not in roles:
            raise DataError(f"{spot}.{role_key}", f"unknown role {role!r}; allowed: {', '.join(roles)}")
        messages.append({"role": roles[role], "content": _text_field(item, content_key, spot, required=True, sep=".")})
        fields.append(f"{key}[{i}].{content_key}")
    return _with_system(messages, fields, default_system, "data.system")


CONVERTERS = {"alpaca": alpaca_to_messages, "messages": chat_to_messages, "sharegpt": sharegpt_to_messages}


def task_to_messages(row: dict, where: str, spec: RowSpec) -> Messages:
    """Task conversion: user = spec.prompt filled from the row's columns, answer = spec.response.

    `{examples}` is never a column: spec.retriever fills it with the labelled rows nearest to the
    row's text (data.retrieval); without a retriever the line holding it is left out.
    """
    template = spec.prompt if spec.retriever else without_examples(spec.prompt)
    names = [n for _, n, _, _ in Formatter().parse(template) if n and n != EXAMPLES]
    query_field = getattr(spec.retriever, "text_field", None)
    values = {name: _column_text(row, name, where) for name in dict.fromkeys([*names, spec.response, query_field]) if name}
    if spec.retriever:
        values[EXAMPLES] = spec.retriever.examples_for(values[query_field])
    messages = [{"role": "user", "content": template.format_map(values)},
                {"role": "assistant", "content": values[spec.response]}]
    return _with_system(messages, ["data.prompt", spec.response], spec.system, "data.system")


def _column_text(row: dict, name: str, where: str) -> str:
    value = row.get(name)
    if value is None:
        raise DataError(f"{where}:{name}", f"missing column (columns here: {', '.join(map(str, row))})")
    scalar = (str, int, float)
    if not (isinstance(value, scalar) or isinstance(value, list) and all(isinstance(v, scalar) for v in value)):
        raise DataError(f"{where}:{name}", f"must be text, a number or a list of them, got {type(value).__name__}")
    return str(value)  # as the seed's f-string would (a list prints as ['a', 'b'])


def without_examples(prompt: str) -> str:
    """data.prompt with its {examples} placeholder left out, with the line it stands on alone."""
    return re.sub(r"^[ \t]*\{examples\}[ \t]*(\n|$)", "", prompt, flags=re.M).replace("{examples}", "")


def rename_columns(row: dict, columns: dict[str, str], where: str) -> dict:
    """Apply data.columns (our name -> the file's column); a missing mapped column is an error."""
    renamed = dict(row)
    for ours, theirs in columns.items():
        if theirs not in row:
            raise DataError(f"{where}:{theirs}", f"column for '{ours}' (data.columns) is missing")
        renamed[ours] = renamed.pop(theirs)
    return renamed


def row_to_messages(row: Any, where: str, spec: RowSpec) -> Messages:
    if not isinstance(row, dict):
        raise DataError(where, f"each row must be an object, got {type(row).__name__}")
    row = rename_columns(row, spec.columns, where) if spec.columns else row
    if spec.prompt:
        return task_to_messages(row, where, spec)
    try:
        row_format = detect_format(row) if spec.format == "auto" else spec.format
    except ValueError as err:
        raise DataError(where, str(err)) from None
    return CONVERTERS[row_format](row, where, spec.system)


def check_conversation(messages: list[dict[str, str]], where: str, fields: list[str] | None = None) -> None:
    """Roles alternate user/assistant after an optional leading system; answers not empty."""
    fields = fields or [""] * len(messages)
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    body = messages[offset:]
    for i, message in enumerate(body):
        spot = f"{where}:{fields[i + offset]}" if fields[i + offset] else where
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            item = spot.rsplit(".", 1)[0] if fields[i + offset].endswith((".content", ".value")) else spot
            raise DataError(item, f"roles must alternate user/assistant; turn {i + 1} is {message['role']!r}")
        if expected == "assistant" and not message["content"].strip():
            raise DataError(spot, f"empty assistant answer in turn {i + 1}")
    if not body or body[-1]["role"] != "assistant":
        raise DataError(where, "the conversation must end with an assistant answer")


def load_conversations(
    path: Path, fmt: str = "auto", default_system: str | None = None, spec: RowSpec | None = None,
    errors: list[DataError] | None = None,
) -> list[Conversation]:
    """Read every row of `path` into a Conversation.

    Fails on the first bad row, unless `errors` is a list: then bad rows (and undecodable
    lines) are appended to it and skipped, so a lint can report them all.
    """
    return list(iter_conversations(path, spec or RowSpec(format=fmt, system=default_system), errors))


def iter_conversations(path: Path, spec: RowSpec, errors: list[DataError] | None = None) -> Iterator[Conversation]:
    """load_conversations one row at a time (sources.iter_rows: JSONL streams)."""
    for line, row in iter_rows(path, errors):
        where = f"{path}:{line}"
        try:
            messages, fields = row_to_messages(row, where, spec)
            check_conversation(messages, where, fields)
        except DataError as err:
            if errors is None:
                raise
            errors.append(err)
            continue
        yield Conversation(messages, where, {"fields": fields})
