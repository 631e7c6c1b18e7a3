"""Encode preference rows for TRL's trainers with SFT's template, mask and truncation rules, and count them.

`prepare_preferences(cfg, tokenizer)` is the preference stages' data step: choose and apply
data.template (as SFT does), read the rows (preference.py), split off eval rows, encode each side
as the conversation prompt + answer, and give TRL's columns: `prompt_ids`, `chosen_ids`,
`rejected_ids` (DPO, ORPO) or `prompt_ids`, `completion_ids`, `label` (KTO). The completion ends
with the template's end-of-turn token, which truncation never cuts (earliest prompt rounds go first,
then the answer's middle, as for SFT); data.truncation=drop drops the row instead. Every drop and
cut is counted in DataStats. It does not build batches or losses (TRL does).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chattune.data.dataset import DataStats, _cut_last_answer, remember_source, split_eval
from chattune.data.lint import LintReport, add_skipped
from chattune.data.named_templates import apply_template, choose_template
from chattune.data.preference import PreferenceRow, as_unpaired, read_preference_rows
from chattune.data.sources import DataError
from chattune.data.templates import encode_conversation

BUILTIN_PAIRS = "builtin:identity-pairs"


@dataclass
class PreparedPreferences:
    """What the trainer needs, shaped like prepare.Prepared: train/eval rows in TRL's columns, counts."""

    train: list[dict]
    eval: list[dict]
    stats: dict  # split -> DataStats fields: data_stats.json
    template: str
    report: LintReport  # the bad rows: raised (data.on_error=raise) or left out and listed (skip)
    eval_conversations: list = field(default_factory=list)  # no generation metrics in preference stages


def prepare_preferences(cfg, tokenizer) -> PreparedPreferences:
    """Template, read, split, encode and count the preference data of `cfg` (a RunConfig) for `cfg.train.stage`."""
    data_cfg, stage = cfg.data, cfg.train.stage
    choice = choose_template(tokenizer, data_cfg.template)
    choice = apply_template(tokenizer, choice)
    stops = set(choice.stop_ids)
    errors: list[DataError] = []
    train_rows = load_preference_rows(data_cfg, data_cfg.path, stage, errors, cfg.seed)
    if data_cfg.eval_path:
        eval_rows = load_preference_rows(data_cfg, data_cfg.eval_path, stage, errors, cfg.seed)
    else:
        train_rows, eval_rows = split_eval(train_rows, data_cfg.eval_ratio, cfg.seed)
    report = LintReport(on_error=data_cfg.on_error)
    for err in errors:  # every bad row at once, each at file:line:field; data.on_error=skip leaves them out
        report.row_problem(err.where, str(err).removeprefix(f"{err.where}: "), "bad preference row")
    report.raise_if_errors()
    stats, encoded = {}, {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        if rows:
            encoded[split], split_stats = encode_rows(tokenizer, rows, data_cfg, stops)
            stats[split] = split_stats.to_dict()
    if report.skipped:
        stats.setdefault("train", DataStats().to_dict())
        add_skipped(stats, report, data_cfg)
    if not encoded.get("train"):
        raise DataError(data_cfg.path, f"no preference example left to train on ({stats.get('train', {})})")
    return PreparedPreferences(encoded["train"], encoded.get("eval", []), stats, choice.description, report)


def load_preference_rows(data_cfg, path: str, stage: str, errors: list, seed: int) -> list[PreferenceRow]:
    """The rows of one file (or the built-in pairs), as the stage needs them: pairs for DPO/ORPO, unpaired for KTO."""
    if path == BUILTIN_PAIRS:
        from chattune.data.builtin_pairs import identity_pairs

        rows = identity_pairs(data_cfg.name, data_cfg.author, system=data_cfg.system, seed=seed)
    else:
        rows = list(read_preference_rows(Path(path), data_cfg.system, data_cfg.columns, errors))
    if stage == "kto":
        return as_unpaired(rows)
    for row in rows:
        if not row.paired:
            errors.append(DataError(f"{row.source}:chosen", f"train.stage={stage} needs chosen and rejected; "
                                    "this row is KTO's unpaired completion + label (train.stage=kto)"))
    return [row for row in rows if row.paired]


def encode_rows(tokenizer, rows: list[PreferenceRow], data_cfg, stops: set[int]) -> tuple[list[dict], DataStats]:
    """Each row's TRL columns; rows that cannot fit are dropped with their reason (counted)."""
    stats, drops, out = DataStats(), Counter(), []
    for row in rows:
        fitted, reason, truncated = fit_sides(tokenizer, row, data_cfg.max_length, data_cfg.truncation, stops)
        if fitted is None:
            drops[reason] += 1
            remember_source(stats.dropped_sources, row.source)
            continue
        if truncated:
            stats.truncated += 1
            remember_source(stats.truncated_sources, row.source)
        prompt, answers = fitted
        sides = [len(prompt) + len(ids) for ids in answers]
        stats.tokens += sum(sides)
        stats.trained_tokens += sum(len(ids) for ids in answers)
        stats.max_tokens = max(stats.max_tokens, *sides)
        stats.turns_without_stop += sum(ids[-1] not in stops for ids in answers)
        out.append(columns(row, prompt, answers))
    stats.examples, stats.dropped, stats.drop_reasons = len(out), sum(drops.values()), dict(drops)
    return out, stats


def columns(row: PreferenceRow, prompt: list[int], answers: list[list[int]]) -> dict:
    if row.paired:
        return {"prompt_ids": prompt, "chosen_ids": answers[0], "rejected_ids": answers[1], "source": row.source}
    return {"prompt_ids": prompt, "completion_ids": answers[0], "label": row.label, "source": row.source}


def fit_sides(tokenizer, row: PreferenceRow, max_length: int, policy: str, stops: set[int]):
    """((prompt ids, [answer ids per side]), drop reason, truncated?) with every side within `max_length`.

    Both sides keep one prompt: the earliest prompt rounds go first for both, then a side still too long
    keeps its answer's head and its end-of-turn token (dataset._cut_last_answer, SFT's rule)."""
    conversations = [messages for _, messages in row.conversations()]
    encoded = [encode_conversation(tokenizer, messages, stops, mask="last") for messages in conversations]
    if max(len(e.input_ids) for e in encoded) <= max_length:
        return split_prompt(encoded, row), "", False
    if policy == "drop":
        return None, f"longer than max_length={max_length}", False
    system = row.prompt[:1] if row.prompt[0]["role"] == "system" else []
    body = row.prompt[len(system):]
    while max(len(e.input_ids) for e in encoded) > max_length and len(body) > 2:
        body = body[2:]  # one user/assistant round of the prompt, oldest first
        encoded = [encode_conversation(tokenizer, [*system, *body, messages[-1]], stops, mask="last")
                   for messages in conversations]
    fitted = []
    for e in encoded:
        if len(e.input_ids) > max_length:
            e, reason = _cut_last_answer(e, max_length, tokenizer)
            if e is None:
                return None, reason, False
        fitted.append(e)
    return split_prompt(fitted, row), "", True


def split_prompt(encoded: list, row: PreferenceRow) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, answer ids per side): the answer runs from its turn's start through its end-of-turn token."""
    starts = [e.turn_starts[-1] for e in encoded]
    prompts = [e.input_ids[:start] for e, start in zip(encoded, starts, strict=True)]
    if any(p != prompts[0] for p in prompts):
        raise DataError(f"{row.source}:prompt", "the template renders the prompt differently before chosen and "
                        "before rejected, so the prompt is not a prefix of both; check data.template")
    return prompts[0], [e.input_ids[start:e.turn_ends[-1]] for e, start in zip(encoded, starts, strict=True)]
