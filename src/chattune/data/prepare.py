"""`prepare(data_cfg, tokenizer, seed) -> Prepared`: the one way from data settings to training examples.

Steps, in order: choose data.template and apply it to the tokenizer (the one change made
to it), load and split the rows, encode each distinct conversation once (encode.py, over
processes), lint the encoded examples (lint.py), leave out bad rows, truncate or drop, and
count (DataStats, written as data_stats.json). The result is cached by a key of everything
that decides it (cache.py), so a second run on the same data and tokenizer skips all of it.
Train, `data inspect`, lint and eval's loss (`prepare_scoring`: one file scored whole) use it;
`prepare_data` is the train stage's step (print the findings, refuse errors). Prompts for
generation are read by prompts.py. Not here: formats, templates (formats.py, templates.py), batching.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console

from chattune.config import DataConfig, RunConfig
from chattune.data import cache
from chattune.data.builtin_general import REPLAY_SOURCE
from chattune.data.dataset import DataStats, remember_source
from chattune.data.encode import Examples
from chattune.data.formats import Conversation
from chattune.data.lint import (
    CheckedData,
    Finding,
    LintReport,
    add_skipped,
    check_data,
    nothing_to_train,
    template_step,
)
from chattune.data.named_templates import apply_template
from chattune.data.rowtable import ROWS_FILE
from chattune.data.sources import DataError


@dataclass
class Prepared:
    train: Examples  # {input_ids, labels} per example, in order (a list of dicts to its readers)
    eval: Examples
    stats: dict  # split -> DataStats fields (and skipped rows): data_stats.json
    report: LintReport  # every error, warning and skipped row, and the template used
    eval_conversations: list[Conversation] = field(default_factory=list)  # untokenized, for generation metrics
    origins: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> source file -> rows
    lengths: list[int] = field(default_factory=list)  # train: tokens before truncation of each usable example
    usable: dict[str, int] = field(default_factory=dict)  # split -> examples counted (before drops)
    key: str = ""  # the cache key ("" when not cached)
    from_cache: bool = False


def prepare(data_cfg: DataConfig, tokenizer, seed: int, *, cache_mode: bool | None = None, num_proc: int | None = None) -> Prepared:
    """Template, load, encode once, lint, split, truncate, count; cached (see cache.py).

    Lint findings never raise here (Prepared.report holds them); file-level problems (a
    missing or empty file, a broken JSON array) raise DataError. `cache_mode`: None caches
    data files of at least cache.MIN_BYTES, True always, False never. `num_proc`: encoding
    processes (None: one per core for large sets).
    """
    report = LintReport(on_error=getattr(data_cfg, "on_error", "raise"))
    choice = template_step(report, tokenizer, data_cfg.template)  # step 1: choose
    if choice is None:
        return Prepared(Examples(), Examples(), {}, report)
    choice = apply_template(tokenizer, choice)  # step 2: set it on the tokenizer, here only
    report.template = choice.description
    found = cache.cache_key(data_cfg, tokenizer, seed, choice.stop_ids) if cache_mode is not False else None
    key = found[0] if found and (cache_mode or found[1] >= cache.MIN_BYTES) else None
    if key and (entry := cache.load_entry(key)) is not None:
        return from_entry(*entry, key=key, from_cache=True)
    with contextlib.ExitStack() as stack:
        work = _work_folder(stack, key)
        checked = check_data(data_cfg, tokenizer, seed, report, set(choice.stop_ids), work, num_proc)
        meta = summarize(checked, data_cfg)
        if work is None or report.errors:  # errors are fixed before training again: nothing worth keeping
            return from_entry(meta, checked.encoded)
        (work / ROWS_FILE).unlink(missing_ok=True)  # the rows are encoded now; only the encoded table is kept
        cache.commit(work, key, meta, checked.encoded)
    entry = cache.load_entry(key)  # read back from where it now lives
    return from_entry(*entry, key=key) if entry else from_entry(meta, checked.encoded)


def _work_folder(stack: contextlib.ExitStack, key: str | None):
    """The cache entry's temporary folder, or None (no key, or the cache folder is not writable)."""
    if key is None:
        return None
    try:
        return stack.enter_context(cache.staging(key))
    except OSError:
        return None


def summarize(checked: CheckedData, data_cfg: DataConfig) -> dict:
    """Per split: the rows kept, their DataStats, rows per source; the report; the eval conversations."""
    report, facts = checked.report, checked.facts
    bad = {part for f in report.errors for part in (f.where, f.where.rsplit(":", 1)[0])}
    meta: dict = {"stats": {}, "rows": {}, "origins": {}, "usable": {}, "lengths": []}
    for split, convs in (("train", checked.train), ("eval", checked.eval)):
        usable = [c for c in convs if c.source not in bad]
        rows = [checked.rows[id(c)] for c in usable]
        meta["origins"][split] = dict(Counter(c.origin for c in convs))
        meta["usable"][split] = len(rows)
        if split == "train":
            meta["lengths"] = [facts["length"][r] for r in rows if facts["length"][r]]
        if rows:
            replay = {checked.rows[id(c)] for c in usable if c.origin == REPLAY_SOURCE}
            meta["rows"][split], stats = split_stats(rows, facts, replay)
            meta["stats"][split] = stats.to_dict()
    add_skipped(meta["stats"], report, data_cfg)
    meta["report"] = {"template": report.template, "on_error": report.on_error,
                      "added_tokens": report.added_tokens,
                      **{kind: [[f.where, f.message, f.kind] for f in getattr(report, kind)]
                         for kind in ("errors", "warnings", "skipped")}}
    meta["eval_conversations"] = [{"messages": c.messages, "source": c.source, "meta": c.meta} for c in checked.eval]
    return meta


def split_stats(rows: list[int], facts: dict[str, list], replay: set[int]) -> tuple[list[int], DataStats]:
    """The rows kept after truncation and drops, and their counts (what tokenize_conversations counted)."""
    stats, drops, kept = DataStats(), Counter(), []
    for row in rows:
        stats.turns_without_stop += facts["no_stop"][row]
        if reason := facts["drop_reason"][row]:
            drops[reason] += 1
            remember_source(stats.dropped_sources, facts["source"][row])
            continue
        if facts["truncated"][row]:
            stats.truncated += 1
            remember_source(stats.truncated_sources, facts["source"][row])
        kept.append(row)
        stats.replay += row in replay
        stats.tokens += facts["kept_length"][row]
        stats.trained_tokens += facts["kept_trained"][row]
        stats.max_tokens = max(stats.max_tokens, facts["kept_length"][row])
    stats.examples = len(kept)
    stats.dropped = sum(drops.values())
    stats.drop_reasons = dict(drops)
    return kept, stats


def from_entry(meta: dict, table, key: str = "", from_cache: bool = False) -> Prepared:
    """A Prepared from summarize()'s meta and the encoded table (fresh, or a cache entry's)."""
    saved = meta["report"]
    report = LintReport(template=saved["template"], on_error=saved["on_error"],
                        added_tokens=saved.get("added_tokens", []),
                        **{kind: [Finding(*f) for f in saved[kind]] for kind in ("errors", "warnings", "skipped")})
    rows = meta["rows"]
    return Prepared(
        Examples(table, rows.get("train", [])), Examples(table, rows.get("eval", [])), meta["stats"], report,
        [Conversation(c["messages"], c["source"], c["meta"]) for c in meta["eval_conversations"]],
        meta["origins"], meta["lengths"], meta["usable"], key, from_cache,
    )


def prepare_data(cfg: RunConfig, tokenizer, console: Console) -> Prepared:
    """The train stage's data step: prepare(), print the findings, refuse errors and an empty train split."""
    data = prepare(cfg.data, tokenizer, cfg.seed)
    for line in data.report.summary_lines():  # counts per kind; all of them: chattune data inspect
        console.print(line, highlight=False)
    data.report.raise_if_errors()
    if not data.train:
        raise nothing_to_train(data.stats.get("train"), cfg.data)
    if data.from_cache:
        console.print(f"[dim]data: {len(data.train)} examples from the cache ({cache.cache_root() / data.key})[/]")
    return data


def scoring_config(data_cfg: DataConfig, path) -> DataConfig:
    """`data_cfg` reading the one file `path` whole: no split, no mix, no eval file, no replay rows;
    data.retrieval still retrieves from the training corpus (named, since data.path changes)."""
    retrieval = data_cfg.retrieval
    if retrieval and not retrieval.corpus:
        retrieval = retrieval.model_copy(update={"corpus": data_cfg.path})
    return data_cfg.model_copy(update={"path": str(path), "sources": None, "eval_path": None,
                                       "eval_ratio": 0.0, "replay": 0, "retrieval": retrieval})


def prepare_scoring(data_cfg: DataConfig, tokenizer, seed: int, path, console: Console) -> Prepared:
    """prepare() for a file scored whole (`chattune eval --metric loss`): the template, encoding, lint,
    mask and truncation of training; findings printed, errors and a file with nothing to score raised."""
    data = prepare(scoring_config(data_cfg, path), tokenizer, seed)
    for line in data.report.summary_lines():
        console.print(line, highlight=False)
    data.report.raise_if_errors()
    if not data.train:
        stats = data.stats.get("train") or {}
        raise DataError(str(path), f"no example left to score the loss on (dropped {stats.get('dropped', 0)} "
                        f"{stats.get('drop_reasons', {})}, skipped {stats.get('skipped', 0)})")
    return data


def report_data(stats: dict, console: Console) -> None:
    for split, s in stats.items():
        console.print(
            f"[bold]{split}[/]: {s['examples']} examples"
            + (f" ({s['replay']} of them general rows from data.replay)" if s.get("replay") else "")
            + f", {s['tokens']} tokens, {s['trained_tokens']} trained; truncated {s['truncated']}, dropped {s['dropped']}"
            + (f" {s['drop_reasons']}" if s["dropped"] else "")
            + (f", skipped {s['skipped']} bad rows {s['skip_reasons']} (data.on_error=skip)" if s.get("skipped") else ""),
            highlight=False,
        )
        if s["turns_without_stop"]:
            console.print(f"[yellow]warning[/]: {s['turns_without_stop']} assistant turns have no end-of-turn token")

