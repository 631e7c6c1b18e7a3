"""Read data files into conversations: a list of {role, content} messages per row.

Knows file formats (JSON array, JSONL) and row shapes (alpaca, OpenAI-style messages).
Every problem is raised as DataError naming file, line and field. It does not tokenize.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A data problem located at file:line:field."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    source: str  # "file:line", for error messages and reports
    meta: dict[str, Any] = field(default_factory=dict)


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """Return (line number, parsed row) pairs from a .json array or .jsonl file."""
    if not path.exists():
        raise DataError(str(path), "file not found")
    if path.is_dir():
        raise DataError(str(path), "is a folder; give a .json or .jsonl file")
    text = _read_text(path)
    if not text.strip():
        raise DataError(str(path), "file is empty")
    if path.suffix.lower() == ".jsonl" or not text.lstrip().startswith("["):
        return _jsonl_rows(path, text)
    return _json_array_rows(path, text)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}", f"not UTF-8 (byte {raw[err.start]:#x}); re-save the file as UTF-8") from None


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}", f"invalid JSON ({err.msg} at column {err.colno})") from None
    return rows


def _json_array_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    """Parse a JSON array element by element so each row keeps its line number."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    rows = []
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            return rows
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}", f"invalid JSON ({err.msg} at column {err.colno})") from None
        rows.append((text.count("\n", 0, pos) + 1, row))
        pos = _skip_space(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            line = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}:{line}", "invalid JSON (expected ',' or ']' between rows)")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def detect_format(row: Any) -> str:
    if isinstance(row, dict) and "messages" in row:
        return "messages"
    if isinstance(row, dict) and ("instruction" in row or "output" in row):
        return "alpaca"
    keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
    raise ValueError(f"unknown row shape (keys: {keys}); expected alpaca (instruction/input/output) or messages")


def _text_field(row: dict, key: str, where: str, required: bool) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}:{key}", "missing required field")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}:{key}", f"must be a string, got {type(value).__name__} {value!r:.40}")
    return value


def alpaca_to_messages(row: dict, where: str, default_system: str | None) -> list[dict[str, str]]:
    instruction = _text_field(row, "instruction", where, required=True)
    extra = _text_field(row, "input", where, required=False)
    output = _text_field(row, "output", where, required=True)
    system = _text_field(row, "system", where, required=False) or default_system
    messages = [{"role": "system", "content": system}] if system else []
    for turn, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise DataError(f"{where}:history[{turn}]", "must be a [question, answer] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n{extra}" if instruction and extra else instruction + extra
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return messages


def chat_to_messages(row: dict, where: str, default_system: str | None) -> list[dict[str, str]]:
    items = row.get("messages")
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}:messages", "must be a non-empty list of {role, content}")
    messages = []
    for i, item in enumerate(items):
        spot = f"{where}:messages[{i}]"
        if not isinstance(item, dict):
            raise DataError(spot, f"must be an object with role and content, got {type(item).__name__}")
        role = item.get("role")
        if role not in ROLES:
            raise DataError(f"{spot}.role", f"unknown role {role!r}; allowed: {', '.join(ROLES)}")
        messages.append({"role": role, "content": _text_field(item, "content", spot, required=True)})
    if default_system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": default_system})
    return messages


CONVERTERS = {"alpaca": alpaca_to_messages, "messages": chat_to_messages}


def check_conversation(messages: list[dict[str, str]], where: str) -> None:
    """Roles alternate user/assistant after an optional leading system; answers not empty."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise DataError(where, f"roles must alternate user/assistant; turn {i + 1} is {message['role']!r}")
        if expected == "assistant" and not message["content"].strip():
            raise DataError(where, f"empty assistant answer in turn {i + 1}")
    if not body or body[-1]["role"] != "assistant":
        raise DataError(where, "the conversation must end with an assistant answer")


def load_conversations(path: Path, fmt: str = "auto", default_system: str | None = None) -> list[Conversation]:
    """Read every row of `path` into a Conversation, failing on the first bad row."""
    conversations = []
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise DataError(where, f"each row must be a JSON object, got {type(row).__name__}")
        try:
            row_format = detect_format(row) if fmt == "auto" else fmt
        except ValueError as err:
            raise DataError(where, str(err)) from None
        messages = CONVERTERS[row_format](row, where, default_system)
        check_conversation(messages, where)
        conversations.append(Conversation(messages, where))
    return conversations
