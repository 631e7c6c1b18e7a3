"""Read a data file as prompts for generation (predict, eval): the conversation up to its last user turn.

The rows are read as training reads them (sources.py, formats.py, the same RowSpec), so a
run's columns, task prompt and system prompt shape the prompt exactly as in training. A
row's final assistant answer, when present, is the reference: kept, never shown to the
model. Every problem names file:line:field, before any model loads. Scoring the answers'
tokens (eval's loss) goes through prepare.prepare_scoring instead; this module does not
tokenize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chattune.data.formats import DataError, RowSpec, check_conversation, read_rows, row_to_messages


@dataclass
class PromptRow:
    row: dict[str, Any]  # the input row, unchanged
    messages: list[dict[str, str]]  # what the model sees: ends with a user turn
    source: str  # "file:line"


@dataclass
class EvalRow:
    source: str  # file:line
    prompt: list[dict]  # messages ending with the user turn
    reference: str | None  # the final assistant answer, when the row has one


def prompt_messages(row: dict, where: str, spec: RowSpec | None = None) -> list[dict]:
    """The conversation up to the last user turn; a trailing assistant answer is dropped."""
    spec = spec or RowSpec()
    answer_key = spec.response if spec.prompt else spec.columns.get("output", "output")
    chat_shaped = "messages" in row or "conversations" in row
    if answer_key and not chat_shaped and row.get(answer_key) is None:
        row = {**row, answer_key: ""}  # no reference answer: a predict-only row
    messages, fields = row_to_messages(row, where, spec)
    if messages and messages[-1]["role"] == "assistant":
        messages, fields = messages[:-1], fields[:-1]
    # Validate roles by closing the prompt with a placeholder answer.
    check_conversation([*messages, {"role": "assistant", "content": "-"}], where, [*fields, ""])
    return messages


def load_prompt_rows(path: str | Path, spec: RowSpec | None = None) -> list[PromptRow]:
    """Read every row of `path`; fails on the first bad row with file:line:field."""
    path = Path(path)
    out = []
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise DataError(where, f"each row must be a JSON object, got {type(row).__name__}")
        out.append(PromptRow(row, prompt_messages(row, where, spec), where))
    return out


def load_eval_rows(path: str | Path, spec: RowSpec, need_reference: bool) -> list[EvalRow]:
    """Prompt rows with their reference answers; `need_reference`: a row without one is an error."""
    rows = []
    for prompt_row in load_prompt_rows(path, spec):
        try:
            messages, _ = row_to_messages(prompt_row.row, prompt_row.source, spec)
        except DataError:  # an alpaca row without its answer field: the prompt was valid
            messages = []
        reference = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None
        if need_reference and not (reference or "").strip():
            raise DataError(prompt_row.source, "no reference answer (output / final assistant message) to score against")
        rows.append(EvalRow(prompt_row.source, prompt_row.messages, reference))
    if not rows:
        raise DataError(str(path), "no rows to evaluate")
    return rows
