"""Read preference rows into (prompt messages, chosen, rejected) pairs or KTO's (prompt, completion, label).

The forms users have, detected per row:
- `prompt` / `chosen` / `rejected`: strings, or message lists (TRL's conversational form);
- `chosen` / `rejected` as whole conversations without `prompt` (the prompt is their shared start);
- sharegpt `conversations` + `chosen` + `rejected` ({from, value} or strings: LLaMA-Factory's form);
- alpaca `instruction` (+ `input`, `system`, `history`) + `chosen` + `rejected`;
- KTO's unpaired `prompt` + `completion` + `label` (true: desirable).
data.columns renames, data.system fills an absent system prompt. Every problem is a DataError naming
file:line:field: a missing or empty side, `chosen` equal to `rejected`, a prompt that is not a prefix.
It does not tokenize (preference_encode.py does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.data.formats import (
    ROLES,
    SHAREGPT_ROLES,
    _turns_to_messages,
    alpaca_to_messages,
    check_conversation,
    rename_columns,
)
from chattune.data.sources import DataError, iter_rows

PAIR_FIELDS = ("chosen", "rejected")


@dataclass
class PreferenceRow:
    """One row: the prompt conversation (ends with a user turn) and its answers.

    Pairs have `chosen` and `rejected`; KTO rows have `completion` and `label`."""

    prompt: list[dict[str, str]]
    source: str  # "file:line"
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    label: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        return self.chosen is not None

    def conversations(self) -> list[tuple[str, list[dict[str, str]]]]:
        """(side, whole conversation) per answer: chosen and rejected, or the one completion."""
        sides = (("chosen", self.chosen), ("rejected", self.rejected)) if self.paired else (
            ("completion", self.completion),)
        return [(side, [*self.prompt, {"role": "assistant", "content": text}]) for side, text in sides]


def read_preference_rows(path: Path, system: str | None = None, columns: dict | None = None,
                         errors: list[DataError] | None = None) -> Iterator[PreferenceRow]:
    """Every row of `path` as a PreferenceRow; a bad row raises, or joins `errors` and is skipped."""
    for line, row in iter_rows(path, errors):
        where = f"{path}:{line}"
        try:
            yield preference_row(row, where, system, columns or {})
        except DataError as err:
            if errors is None:
                raise
            errors.append(err)


def preference_row(row: Any, where: str, system: str | None, columns: dict) -> PreferenceRow:
    """One file row in any supported form, checked."""
    if not isinstance(row, dict):
        raise DataError(where, f"each row must be an object, got {type(row).__name__}")
    row = rename_columns(row, columns, where) if columns else row
    if "completion" in row or "label" in row:
        return _checked(_unpaired_row(row, where, system))
    if not all(side in row for side in PAIR_FIELDS):
        missing = next(side for side in PAIR_FIELDS if side not in row)
        raise DataError(f"{where}:{missing}", "missing required field (a preference row has prompt, chosen and "
                        "rejected; or conversations/instruction with chosen and rejected; or KTO's prompt, "
                        "completion and label)")
    if "conversations" in row:
        prompt = _sharegpt_prompt(row, where, system)
    elif "instruction" in row:
        prompt = alpaca_to_messages({**row, "output": "-"}, where, system)[0][:-1]
    elif "prompt" in row:
        prompt = _prompt_messages(row["prompt"], f"{where}:prompt", system)
    else:
        return _checked(_implicit_prompt_row(row, where, system))
    chosen, rejected = (_answer_text(row[side], f"{where}:{side}", prompt) for side in PAIR_FIELDS)
    return _checked(PreferenceRow(prompt, where, chosen=chosen, rejected=rejected))


def _checked(row: PreferenceRow) -> PreferenceRow:
    """Roles alternate, the prompt ends with the user; no side is empty; chosen differs from rejected."""
    for side, text in (("chosen", row.chosen), ("rejected", row.rejected), ("completion", row.completion)):
        if text is not None and not text.strip():
            raise DataError(f"{row.source}:{side}", "empty answer: a preference needs text on both sides")
    check_conversation([*row.prompt, {"role": "assistant", "content": "-"}], f"{row.source}:prompt")
    if row.paired and row.chosen.strip() == row.rejected.strip():
        raise DataError(f"{row.source}:rejected", "equal to chosen: the pair teaches no preference")
    return row


def _prompt_messages(value: Any, where: str, system: str | None) -> list[dict[str, str]]:
    """`prompt` as a string (one user turn) or a message list ending with a user turn."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(where, "empty prompt")
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value:
        messages = _messages(value, where)
    else:
        raise DataError(where, f"must be a string or a non-empty list of {{role, content}}, got {value!r:.40}")
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def _messages(items: list, where: str) -> list[dict[str, str]]:
    """A {role, content} (or sharegpt {from, value}) list as messages."""
    key = "conversations" if isinstance(items[0], dict) and "from" in items[0] else "messages"
    names, roles = (("from", "value"), SHAREGPT_ROLES) if key == "conversations" else (
        ("role", "content"), {r: r for r in ROLES})
    try:
        return _turns_to_messages({key: items}, "", None, key, names, roles)[0]
    except DataError as err:  # re-anchored at this field: "<where><item index and key>"
        raise DataError(where + err.where.removeprefix(":" + key), str(err).split(": ", 1)[1]) from None


def _answer_text(value: Any, where: str, prompt: list[dict[str, str]]) -> str:
    """A side as text: a string, one {role: assistant} / {from: gpt} message, or a one-message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value:
        messages = _messages(value, where)
        if messages[: len(prompt)] == prompt and len(messages) > len(prompt):  # whole conversation given
            messages = messages[len(prompt):]
        if len(messages) == 1 and messages[0]["role"] == "assistant":
            return messages[0]["content"]
        raise DataError(where, f"must be one assistant answer; got {len(messages)} messages "
                        f"({', '.join(m['role'] for m in messages)})")
    raise DataError(where, f"must be a string or an assistant message, got {value!r:.40}")


def _sharegpt_prompt(row: dict, where: str, system: str | None) -> list[dict[str, str]]:
    messages, _ = _turns_to_messages(row, where, None, "conversations", ("from", "value"), SHAREGPT_ROLES)
    own = row.get("system")
    if isinstance(own, str) and own:
        system = own
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def _implicit_prompt_row(row: dict, where: str, system: str | None) -> PreferenceRow:
    """`chosen` and `rejected` as whole conversations: the prompt is everything before their last answer."""
    chosen, rejected = (_messages(row[side], f"{where}:{side}") if isinstance(row[side], list) and row[side]
                        else None for side in PAIR_FIELDS)
    if chosen is None or rejected is None:
        raise DataError(f"{where}:prompt", "missing required field (chosen and rejected are not whole "
                        "conversations, so the prompt cannot be taken from them)")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}:rejected", "the prompt is not a prefix of both sides: chosen and rejected "
                        "differ before their last answer")
    for side, messages in zip(PAIR_FIELDS, (chosen, rejected), strict=True):
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise DataError(f"{where}:{side}", "must end with an assistant answer after the prompt")
    prompt = _prompt_messages(chosen[:-1], f"{where}:chosen", system)
    return PreferenceRow(prompt, where, chosen=chosen[-1]["content"], rejected=rejected[-1]["content"])


def _unpaired_row(row: dict, where: str, system: str | None) -> PreferenceRow:
    """KTO: prompt + completion + label (true/false, 1/0)."""
    for name in ("prompt", "completion", "label"):
        if name not in row:
            raise DataError(f"{where}:{name}", "missing required field (a KTO row has prompt, completion and label)")
    label = row["label"]
    if label not in (True, False, 0, 1):
        raise DataError(f"{where}:label", f"must be true or false, got {label!r:.40}")
    prompt = _prompt_messages(row["prompt"], f"{where}:prompt", system)
    completion = _answer_text(row["completion"], f"{where}:completion", prompt)
    return PreferenceRow(prompt, where, completion=completion, label=bool(label))


def as_unpaired(rows: list[PreferenceRow]) -> list[PreferenceRow]:
    """KTO from pairs as well: each pair gives a desirable (chosen) and an undesirable (rejected) row."""
    out = []
    for row in rows:
        if row.paired:
            out += [PreferenceRow(row.prompt, row.source, completion=row.chosen, label=True),
                    PreferenceRow(row.prompt, row.source, completion=row.rejected, label=False)]
        else:
            out.append(row)
    return out
