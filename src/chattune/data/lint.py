"""Check a configured dataset against its tokenizer and template before any model loads.

Hard errors (file:line:field): bad rows (empty answer, roles not alternating, unknown
role, missing fields), template missing or unusable, no trainable token, a trained turn
whose end-of-turn token is not trained. Warnings: duplicate conversations, examples
longer than data.max_length. `chattune train` and `chattune data inspect` both run it.
It needs only the tokenizer, never model weights; it does not build training examples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from chattune.data.dataset import load_splits
from chattune.data.formats import Conversation, DataError
from chattune.data.named_templates import use_template
from chattune.data.templates import IGNORE_INDEX, TemplateError, encode_conversation, stop_token_ids

SHOWN_PER_KIND = 10  # findings printed per kind; all are counted


@dataclass
class Finding:
    where: str
    message: str
    kind: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class LintReport:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    template: str = ""

    def error(self, where: str, message: str, kind: str) -> None:
        self.errors.append(Finding(where, message, kind))

    def warn(self, where: str, message: str, kind: str) -> None:
        self.warnings.append(Finding(where, message, kind))

    def raise_if_errors(self) -> None:
        if self.errors:
            shown = "\n  ".join(str(e) for e in self.errors[:SHOWN_PER_KIND])
            more = f"\n  ... and {len(self.errors) - SHOWN_PER_KIND} more" if len(self.errors) > SHOWN_PER_KIND else ""
            raise DataError("data", f"{len(self.errors)} error(s); fix them before training:\n  {shown}{more}")


@dataclass
class CheckedData:
    report: LintReport
    train: list[Conversation]
    eval: list[Conversation]
    lengths: dict[str, int] = field(default_factory=dict)  # source -> tokens before truncation


def lint_data(data_cfg, tokenizer, seed: int) -> CheckedData:
    """Apply data.template, load every source collecting row errors, then check each example."""
    report = LintReport()
    try:
        report.template = use_template(tokenizer, data_cfg.template)
    except TemplateError as err:
        report.error("data.template", str(err).removeprefix("data.template: "), "template missing")
        return CheckedData(report, [], [])
    row_errors: list[DataError] = []
    train, eval_ = load_splits(data_cfg, seed, row_errors)
    for err in row_errors:
        report.error(err.where, str(err).removeprefix(f"{err.where}: "), _row_error_kind(str(err)))
    stops = stop_token_ids(tokenizer)
    lengths = {}
    for conv in {id(c): c for c in train + eval_}.values():  # weighted copies once
        lengths[conv.source] = check_example(report, tokenizer, conv, data_cfg, stops)
    check_duplicates(report, train)
    return CheckedData(report, train, eval_, {k: v for k, v in lengths.items() if v})


def _row_error_kind(message: str) -> str:
    for needle, kind in (("empty assistant", "empty answer"), ("alternate", "roles not alternating"),
                         ("unknown role", "unknown role")):
        if needle in message:
            return kind
    return "bad row"


def check_example(report: LintReport, tokenizer, conv: Conversation, data_cfg, stops: set[int]) -> int:
    """Check one conversation; return its token count before truncation (0 if unusable)."""
    try:
        encoded = encode_conversation(tokenizer, conv.messages, stops, data_cfg.mask)
    except TemplateError as err:
        if "produced no tokens" in str(err):  # the answer merged into a prompt token
            report.error(conv.source, f"no trainable token: {err}", "no trainable token")
        else:
            report.error(conv.source, f"template: {err}", "template unusable")
        return 0
    if encoded.trained_tokens == 0:
        report.error(conv.source, "no trainable token after templating", "no trainable token")
        return 0
    answers = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant"]
    trained_turns = range(len(answers)) if data_cfg.mask != "last" else [len(answers) - 1]
    fields = conv.meta.get("fields") or []
    for turn in trained_turns:
        end = encoded.turn_ends[turn]
        if encoded.input_ids[end - 1] in stops and encoded.labels[end - 1] != IGNORE_INDEX:
            continue
        spot = f"{conv.source}:{fields[answers[turn]]}" if fields else conv.source
        names = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(stops)) or "none"
        report.error(
            spot, f"end-of-turn token not trained: the answer does not end on a stop token ({names}); "
            "the model would never learn to stop. Pick a template (data.template) that matches "
            "the tokenizer", "end-of-turn not trained",
        )
    if len(encoded.input_ids) > data_cfg.max_length:
        action = "dropped" if data_cfg.truncation == "drop" else "cut, or dropped if its prompt alone is longer"
        report.warn(conv.source, f"very long: {len(encoded.input_ids)} tokens > data.max_length="
                    f"{data_cfg.max_length} (will be {action})", "very long")
    return len(encoded.input_ids)


def check_duplicates(report: LintReport, convs: list[Conversation]) -> None:
    """Identical conversations from rows (weighted copies of one row are not duplicates)."""
    first_seen: dict[str, str] = {}
    for conv in convs:
        key = json.dumps(conv.messages, ensure_ascii=False, sort_keys=True)
        seen = first_seen.setdefault(key, conv.source)
        if seen != conv.source:
            report.warn(conv.source, f"duplicate of {seen}", "duplicate")
