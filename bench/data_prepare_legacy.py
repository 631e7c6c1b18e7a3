"""The per-row data path as it was before `chattune.data.prepare` (bench baseline and test reference).

A copy of the old `lint_data` + `prepare_data`: every conversation is tokenized in lint's
check_example, then again in dataset.tokenize_conversations, one at a time, in plain Python
lists. bench/data_prepare.py times it against prepare(); tests/test_prepare.py checks that
prepare() gives the same findings, ids, labels and counts. Not used by chattune itself.
"""

from __future__ import annotations

import json

from chattune.data.dataset import (
    clip_length,
    clip_long_messages,
    load_splits,
    tokenize_conversations,
)
from chattune.data.formats import DataError
from chattune.data.lint import LintReport, _row_error_kind, add_skipped, warn_clipped
from chattune.data.named_templates import use_template
from chattune.data.templates import (
    IGNORE_INDEX,
    TemplateError,
    encode_conversation,
    special_texts,
    stop_token_ids,
)


def legacy_lint(data_cfg, tokenizer, seed: int):
    """(report, train conversations, eval conversations, lengths): the old lint_data."""
    report = LintReport(on_error=data_cfg.on_error)
    try:
        report.template = use_template(tokenizer, data_cfg.template)
    except TemplateError as err:
        report.error("data.template", str(err).removeprefix("data.template: "), "template missing")
        return report, [], [], {}
    row_errors: list[DataError] = []
    train, eval_ = load_splits(data_cfg, seed, row_errors)
    for err in row_errors:
        report.row_problem(err.where, str(err).removeprefix(f"{err.where}: "), _row_error_kind(str(err)))
    warn_clipped(report, clip_long_messages(train + eval_, clip_length(tokenizer, data_cfg.max_length)),
                 data_cfg.max_length)
    stops = stop_token_ids(tokenizer)
    specials = special_texts(tokenizer)
    lengths = {}
    for conv in {id(c): c for c in train + eval_}.values():
        lengths[conv.source] = _check_example(report, tokenizer, conv, data_cfg, stops)
        _check_special_text(report, conv, specials)
    first_seen: dict[str, str] = {}
    for conv in train:
        seen = first_seen.setdefault(json.dumps(conv.messages, ensure_ascii=False, sort_keys=True), conv.source)
        if seen != conv.source:
            report.warn(conv.source, f"duplicate of {seen}", "duplicate")
    if report.skipped:
        left_out = {f.where for f in report.skipped}
        train, eval_ = ([c for c in part if c.source not in left_out] for part in (train, eval_))
    return report, train, eval_, {k: v for k, v in lengths.items() if v}


def legacy_prepare(data_cfg, tokenizer, seed: int) -> dict:
    """The old prepare_data without printing or raising: findings, examples and stats per split.

    Like `data inspect`, rows with errors are left out of the counts (training refuses them).
    """
    report, train, eval_, lengths = legacy_lint(data_cfg, tokenizer, seed)
    bad = {part for f in report.errors for part in (f.where, f.where.rsplit(":", 1)[0])}
    stops = stop_token_ids(tokenizer)
    out = {"report": report, "stats": {}, "examples": {}, "eval_conversations": eval_, "lengths": []}
    for split, convs in (("train", train), ("eval", eval_)):
        usable = [c for c in convs if c.source not in bad]
        if split == "train":
            out["lengths"] = [lengths[c.source] for c in usable if c.source in lengths]
        if usable:
            examples, stats = tokenize_conversations(tokenizer, usable, data_cfg.max_length, data_cfg.truncation,
                                                     stops, mask=data_cfg.mask)
            out["examples"][split], out["stats"][split] = examples, stats.to_dict()
    add_skipped(out["stats"], report, data_cfg)
    return out


def _check_example(report, tokenizer, conv, data_cfg, stops) -> int:
    try:
        encoded = encode_conversation(tokenizer, conv.messages, stops, data_cfg.mask)
    except TemplateError as err:
        if "produced no tokens" in str(err):
            report.row_problem(conv.source, f"no trainable token: {err}", "no trainable token")
        else:
            report.error(conv.source, f"template: {err}", "template unusable")
        return 0
    if encoded.trained_tokens == 0:
        report.row_problem(conv.source, "no trainable token after templating", "no trainable token")
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
    if len(encoded.input_ids) > data_cfg.max_length and not conv.meta.get("clipped"):
        action = "dropped" if data_cfg.truncation == "drop" else "cut, or dropped if its prompt alone is longer"
        report.warn(conv.source, f"very long: {len(encoded.input_ids)} tokens > data.max_length="
                    f"{data_cfg.max_length} (will be {action})", "very long")
    return len(encoded.input_ids)


def _check_special_text(report, conv, specials) -> None:
    fields = conv.meta.get("fields") or []
    for i, message in enumerate(conv.messages):
        found = sorted(s for s in specials if s in message["content"])
        if found:
            spot = f"{conv.source}:{fields[i]}" if i < len(fields) else conv.source
            report.warn(spot, f"contains special-token text {', '.join(map(repr, found))}, which is tokenized as "
                        "the control token itself (an end-of-turn token inside an answer teaches the model to "
                        "stop there); remove or rewrite it", "special-token text")
            return
