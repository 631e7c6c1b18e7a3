"""Check a configured dataset, encoded once, against its tokenizer and template before any model loads.

A note, once, when data.template adds its markers to the vocabulary (named_templates.py).
Hard errors (file:line:field): bad rows (empty answer, roles not alternating, unknown
role, missing fields, undecodable lines), template missing or unusable, no trainable token,
a trained turn whose end-of-turn token is not trained. With data.on_error=skip, row-level
problems are skipped and counted instead. Warnings: duplicate conversations, examples
longer than data.max_length, special-token text inside a message. It judges the facts
encode.py computed per example (ids, labels, lengths); it never tokenizes, needs no
model weights and does not choose the template: prepare.py applies it first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from chattune.data.dataset import SKIPPED_KEPT, DataStats, clip_length
from chattune.data.encode import EncodeSettings, encode_all, read_facts
from chattune.data.formats import Conversation, DataError
from chattune.data.named_templates import TemplateChoice, apply_template, choose_template
from chattune.data.rowtable import row_refs, split_rows, write_rows
from chattune.data.templates import TemplateError, special_texts

if TYPE_CHECKING:
    from chattune.config import DataConfig

SHOWN_PER_KIND = 10  # findings printed per kind; all are counted
ROW_KINDS = {"bad row", "empty answer", "roles not alternating", "unknown role", "undecodable line", "ragged row",
             "wrong type", "missing field", "no trainable token"}


@dataclass
class Finding:
    where: str
    message: str
    kind: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def grouped_by_message(findings: list[Finding]) -> list[str]:
    """One line per distinct message: its place, or the count and the first places of the rows sharing it."""
    places: dict[str, list[str]] = {}
    for finding in findings:
        places.setdefault(finding.message, []).append(finding.where)
    lines = []
    for message, where in places.items():
        if len(where) == 1:
            lines.append(f"{where[0]}: {message}")
        else:
            first = ", ".join(where[:3]) + (", ..." if len(where) > 3 else "")
            lines.append(f"{len(where)} rows ({first}): {message}")
    return lines


@dataclass
class LintReport:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)  # bad rows left out (data.on_error=skip)
    template: str = ""
    on_error: str = "raise"
    added_tokens: list[str] = field(default_factory=list)  # markers data.template adds to the vocab

    def error(self, where: str, message: str, kind: str) -> None:
        self.errors.append(Finding(where, message, kind))

    def warn(self, where: str, message: str, kind: str) -> None:
        self.warnings.append(Finding(where, message, kind))

    def row_problem(self, where: str, message: str, kind: str) -> None:
        """A problem confined to one row: an error, or a skipped row with data.on_error=skip."""
        (self.skipped if self.on_error == "skip" else self.errors).append(Finding(where, message, kind))

    def raise_if_errors(self) -> None:
        if self.errors:
            groups = grouped_by_message(self.errors)  # a finding every row shares is said once, counted
            shown = "\n  ".join(groups[:SHOWN_PER_KIND])
            more = f"\n  ... and {len(groups) - SHOWN_PER_KIND} more" if len(groups) > SHOWN_PER_KIND else ""
            hint = ""
            if self.on_error == "raise" and any(e.kind in ROW_KINDS for e in self.errors):
                hint = "\nFix these rows, or set data.on_error=skip to leave bad rows out (counted in data_stats.json)."
            raise DataError("data", f"{len(self.errors)} error(s); fix them before training:\n  {shown}{more}{hint}")

    def summary_lines(self) -> list[str]:
        """Markers the template adds (once), then warnings and skipped rows counted per kind,
        each with its first example (rich markup)."""
        lines = [added_tokens_note(self.added_tokens)] if self.added_tokens else []
        for label, findings in (("warning", self.warnings), ("skipped", self.skipped)):
            by_kind: dict[str, list[Finding]] = {}
            for finding in findings:
                by_kind.setdefault(finding.kind, []).append(finding)
            for kind, items in by_kind.items():
                what = "row(s) skipped (data.on_error=skip)" if label == "skipped" else "example(s)"
                lines.append(f"[yellow]{label}[/] {kind}: {len(items)} {what}, e.g. {escape(str(items[0]))}")
        return lines


def added_tokens_note(tokens: list[str]) -> str:
    """The one line saying that data.template's markers are missing from the vocabulary."""
    return (f"[cyan]note[/] data.template: {escape(', '.join(tokens))} not in the tokenizer's "
            "vocabulary: added as special tokens; the model's embedding gets a row for each, "
            "trained and saved with the adapter (model/vocab.py)")


@dataclass
class CheckedData:
    report: LintReport
    train: list[Conversation]
    eval: list[Conversation]
    lengths: dict[str, int] = field(default_factory=dict)  # source -> tokens before truncation
    encoded: Any = None  # encode.encode_all's table: one row per distinct conversation
    rows: dict[int, int] = field(default_factory=dict)  # id(conversation) -> its row in `encoded`
    facts: dict[str, list] = field(default_factory=dict)  # encode.read_facts(encoded)


def template_step(report: LintReport, tokenizer, spec: str) -> TemplateChoice | None:
    """choose_template, recording an unusable data.template as an error (None then)."""
    try:
        choice = choose_template(tokenizer, spec)
        report.added_tokens = list(choice.added_tokens)
        return choice
    except TemplateError as err:
        report.error("data.template", str(err).removeprefix("data.template: "), "template missing")
        return None


def lint_data(data_cfg: DataConfig, tokenizer, seed: int) -> CheckedData:
    """Choose and apply data.template, then check_data: prepare()'s steps before counting, for callers that only lint."""
    report = LintReport(on_error=getattr(data_cfg, "on_error", "raise"))
    choice = template_step(report, tokenizer, data_cfg.template)
    if choice is None:
        return CheckedData(report, [], [])
    choice = apply_template(tokenizer, choice)
    report.template = choice.description
    return check_data(data_cfg, tokenizer, seed, report, set(choice.stop_ids))


def check_data(data_cfg: DataConfig, tokenizer, seed: int, report: LintReport, stops: set[int], work=None,
               num_proc: int | None = None) -> CheckedData:
    """Stream every source into a row table collecting row errors, encode each row once, then check it.

    File-level problems (missing, empty, a broken JSON array) raise DataError at once.
    The tokenizer must already carry the chosen template; `work` keeps the tables on disk.
    Findings come in dataset.load_splits' order: row errors, clipped messages, then each
    distinct example of train and eval, then duplicates.
    """
    row_errors: list[DataError] = []
    rows = write_rows(data_cfg, seed, row_errors, clip_length(tokenizer, data_cfg.max_length), work)
    for err in row_errors:
        report.row_problem(err.where, str(err).removeprefix(f"{err.where}: "), _row_error_kind(str(err)))
    refs = row_refs(rows.table)
    train_rows, eval_rows = split_rows(rows, data_cfg, seed)
    order = list(dict.fromkeys(train_rows + eval_rows))  # weighted copies once, first seen first
    position = {row: i for i, row in enumerate(order)}
    clipped = sorted((c for c in rows.clipped if c[0] in position), key=lambda c: position[c[0]])
    warn_clipped(report, [(refs[row], index, chars) for row, index, chars in clipped], data_cfg.max_length)
    settings = EncodeSettings(tuple(sorted(stops)), data_cfg.mask, data_cfg.max_length, data_cfg.truncation,
                              tuple(special_texts(tokenizer)))
    encoded = encode_all(rows.table, tokenizer, settings, work, num_proc)
    facts = read_facts(encoded)
    names = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(stops)) or "none"
    lengths = {}
    for row in order:
        lengths[refs[row].source] = check_example(report, refs[row], facts, row, data_cfg, names)
        if facts["special_at"][row] >= 0:
            warn_special_text(report, refs[row], facts["special_at"][row], facts["specials"][row])
    train, eval_ = [refs[row] for row in train_rows], [refs[row] for row in eval_rows]
    check_duplicates(report, train, [facts["dup"][row] for row in train_rows])
    if report.skipped:
        left_out = {f.where for f in report.skipped}
        train, eval_ = ([c for c in part if c.source not in left_out] for part in (train, eval_))
    return CheckedData(report, train, eval_, {k: v for k, v in lengths.items() if v}, encoded,
                       {id(ref): ref.row for ref in refs}, facts)


def warn_clipped(report: LintReport, clipped, max_length: int) -> None:
    for conv, index, chars in clipped:
        fields = conv.meta.get("fields") or []
        spot = f"{conv.source}:{fields[index]}" if index < len(fields) else conv.source
        report.warn(spot, f"very long: {chars:,} characters in one message, far more than data.max_length="
                    f"{max_length} tokens; clipped to {len(conv.messages[index]['content']):,} characters before "
                    "tokenizing (the example is then cut or dropped as usual)", "very long")


def warn_special_text(report: LintReport, conv: Conversation, index: int, found: list[str]) -> None:
    """Text like '<|im_end|>' in a message becomes the control token itself when tokenized."""
    fields = conv.meta.get("fields") or []
    spot = f"{conv.source}:{fields[index]}" if index < len(fields) else conv.source
    report.warn(spot, f"contains special-token text {', '.join(map(repr, found))}, which is tokenized as "
                "the control token itself (an end-of-turn token inside an answer teaches the model to "
                "stop there); remove or rewrite it", "special-token text")


def _row_error_kind(message: str) -> str:
    for needle, kind in (("empty assistant", "empty answer"), ("alternate", "roles not alternating"),
                         ("unknown role", "unknown role"), ("invalid JSON", "undecodable line"),
                         ("not UTF-8", "undecodable line"), ("cells but the header", "ragged row"),
                         ("must be a string", "wrong type"), ("missing", "missing field")):
        if needle in message:
            return kind
    return "bad row"


def check_example(report: LintReport, conv: Conversation, facts: dict[str, list], row: int, data_cfg: DataConfig,
                  stop_names: str) -> int:
    """Check one encoded conversation (its `row` of the facts); return its token count before truncation (0 if unusable)."""
    if error := facts["error"][row]:
        if "produced no tokens" in error:  # the answer merged into a prompt token
            report.row_problem(conv.source, f"no trainable token: {error}", "no trainable token")
        else:
            report.error(conv.source, f"template: {error}", "template unusable")
        return 0
    if facts["trained"][row] == 0:
        report.row_problem(conv.source, "no trainable token after templating", "no trainable token")
        return 0
    if facts["bad_turns"][row]:
        answers = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant"]
        fields = conv.meta.get("fields") or []
        for turn in facts["bad_turns"][row]:
            spot = f"{conv.source}:{fields[answers[turn]]}" if fields else conv.source
            report.error(
                spot, f"end-of-turn token not trained: the answer does not end on a stop token ({stop_names}); "
                "the model would never learn to stop. Pick a template (data.template) that matches "
                "the tokenizer", "end-of-turn not trained",
            )
    length = facts["length"][row]
    if length > data_cfg.max_length and not conv.meta.get("clipped"):
        action = "dropped" if data_cfg.truncation == "drop" else "cut, or dropped if its prompt alone is longer"
        report.warn(conv.source, f"very long: {length} tokens > data.max_length="
                    f"{data_cfg.max_length} (will be {action})", "very long")
    return length


def check_duplicates(report: LintReport, convs: list[Conversation], keys: list[str]) -> None:
    """Identical conversations from rows (weighted copies of one row are not duplicates); keys from encode.py."""
    first_seen: dict[str, str] = {}
    for conv, key in zip(convs, keys, strict=True):
        seen = first_seen.setdefault(key, conv.source)
        if seen != conv.source:
            report.warn(conv.source, f"duplicate of {seen}", "duplicate")


def add_skipped(stats: dict[str, dict], report: LintReport, data_cfg: DataConfig) -> None:
    """Count skipped rows (data.on_error=skip) in data_stats: per split, with reasons and the first rows."""
    eval_file = f"{data_cfg.eval_path}:" if data_cfg.eval_path else None
    for split in ("train", "eval"):
        mine = [f for f in report.skipped if (eval_file is not None and f.where.startswith(eval_file)) == (split == "eval")]
        if mine:
            entry = stats.setdefault(split, DataStats().to_dict())
            entry.update(skipped=len(mine), skip_reasons=dict(Counter(f.kind for f in mine)),
                         skipped_rows=[str(f) for f in mine[:SKIPPED_KEPT]])


def nothing_to_train(train_stats: dict | None, data_cfg: DataConfig) -> DataError:
    """Why no training example is left, and what to change."""
    stats = train_stats or {}
    if stats.get("dropped"):
        reasons = "; ".join(f"{n} {reason}" for reason, n in stats["drop_reasons"].items())
        fix = ("raise data.max_length or use data.truncation=truncate" if data_cfg.truncation == "drop"
               else "raise data.max_length or shorten the prompts and system prompt")
        return DataError("data", f"all {stats['dropped']} training examples were dropped ({reasons}; e.g. "
                         f"{', '.join(stats['dropped_sources'])}); {fix}")
    if stats.get("skipped"):
        return DataError("data", f"every training row was skipped as bad ({stats['skipped']}, data.on_error=skip), "
                         f"e.g. {stats['skipped_rows'][0]}; fix the data")
    return DataError("data", "no training examples; the data has no rows")

