"""`chattune data inspect`: dataset stats, lint findings and examples with trained tokens coloured.

Shows what training would see: examples per source, a token length histogram, the share
of trained tokens, truncated/dropped counts with reasons, every lint error and warning
(grouped), and N examples rendered token by token (green = trained, dim = context,
magenta = special tokens). Needs only the tokenizer; the caller loads it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from chattune.data.dataset import DataStats
from chattune.data.lint import SHOWN_PER_KIND, Finding
from chattune.data.prepare import Prepared, prepare
from chattune.data.templates import IGNORE_INDEX

if TYPE_CHECKING:
    from chattune.config import DataConfig

BAR_WIDTH = 40
BINS = 8


def inspect_data(cfg, tokenizer, n: int, console: Console) -> Prepared:
    """Print the report; return the prepared data (its report's errors: training would refuse)."""
    if cfg.train.stage != "sft":
        return inspect_preferences(cfg, tokenizer, n, console)
    data = prepare(cfg.data, tokenizer, cfg.seed)
    console.print(f"[bold]template[/] {data.report.template or 'none'}; mask {cfg.data.mask}; "
                  f"max_length {cfg.data.max_length} ({cfg.data.truncation})")
    print_sources(data, cfg.data, console)
    if data.usable.get("train"):
        print_histogram(data.lengths, cfg.data.max_length, console)
        print_stats("train", _counted(data.stats["train"]), console)
    if data.usable.get("eval"):
        print_stats("eval", _counted(data.stats["eval"]), console)
    print_findings("error", "red", data.report.errors, console)
    print_findings("warning", "yellow", data.report.warnings, console)
    print_findings("skipped (data.on_error=skip)", "yellow", data.report.skipped, console)
    for i in range(min(n, len(data.train))):
        example = data.train[i]
        console.rule(f"{data.train.source(i)}  ({len(example['input_ids'])} tokens, "
                     f"{sum(x != IGNORE_INDEX for x in example['labels'])} trained)")
        console.print(render_example(tokenizer, example["input_ids"], example["labels"]))
    console.print("[dim]legend: [green]trained[/green], context, [magenta]special token[/magenta], "
                  "↵ newline[/dim]")
    return data


def _counted(stats: dict) -> DataStats:
    return DataStats(**stats)


def print_sources(data: Prepared, data_cfg: DataConfig, console: Console) -> None:
    weights = {s.path: s.weight for s in data_cfg.sources or []}
    table = Table(title="examples per source", title_justify="left")
    for column in ("source", "weight", "train", "eval"):
        table.add_column(column, justify="left" if column == "source" else "right")
    train, eval_ = Counter(data.origins.get("train", {})), Counter(data.origins.get("eval", {}))
    for origin in list(dict.fromkeys([*train, *eval_])):
        table.add_row(origin, f"{weights.get(origin, 1.0):g}", str(train[origin]), str(eval_[origin]))
    console.print(table)


def histogram_bins(lengths: list[int], bins: int = BINS) -> list[tuple[int, int, int]]:
    """(lo, hi, count) for up to `bins` equal-width bins over the lengths."""
    if not lengths:
        return []
    low, top = min(lengths), max(lengths)
    width = max(1, -(-(top - low + 1) // bins))
    counts = Counter((length - low) // width for length in lengths)
    return [(low + b * width, low + (b + 1) * width - 1, counts[b]) for b in range(bins) if low + b * width <= top]


def length_histogram(lengths: list[int], max_length: int, bins: int = BINS) -> list[str]:
    """Text rows 'lo-hi | bar count'; rows past max_length are flagged."""
    rows = histogram_bins(lengths, bins)
    peak = max((count for _, _, count in rows), default=1)
    return [f"{lo:>6}-{hi:<6}| {'█' * round(BAR_WIDTH * count / peak):<{BAR_WIDTH}} {count}"
            f"{'  > max_length' if hi > max_length else ''}" for lo, hi, count in rows]


def print_histogram(lengths: list[int], max_length: int, console: Console) -> None:
    console.print(f"[bold]token lengths before truncation[/] (n={len(lengths)}, "
                  f"min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)})")
    for row in length_histogram(lengths, max_length):
        console.print(row, highlight=False)


def print_stats(split: str, stats, console: Console) -> None:
    share = stats.trained_tokens / max(stats.tokens, 1)
    console.print(
        f"[bold]{split} split[/]: {stats.examples} examples, {stats.tokens} tokens, "
        f"{stats.trained_tokens} trained ({100 * share:.1f}%); truncated {stats.truncated}, dropped {stats.dropped}",
        highlight=False,
    )
    if stats.truncated:
        console.print(f"  truncated, e.g. {', '.join(stats.truncated_sources)}", highlight=False)
    for reason, count in stats.drop_reasons.items():
        console.print(f"  dropped {count}: {reason}; e.g. {', '.join(stats.dropped_sources)}", highlight=False)


def print_findings(label: str, colour: str, findings: list[Finding], console: Console) -> None:
    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for finding in findings:
        by_kind[finding.kind].append(finding)
    for kind, items in by_kind.items():
        console.print(f"[bold {colour}]{label}[/] {kind}: {len(items)}")
        for finding in items[:SHOWN_PER_KIND]:
            console.print(f"  {escape(str(finding))}", highlight=False)
        if len(items) > SHOWN_PER_KIND:
            console.print(f"  ... and {len(items) - SHOWN_PER_KIND} more")


STYLES = {"trained": "green", "context": "dim", "special": "magenta", "special-trained": "bold magenta on dark_green"}


def example_segments(tokenizer, ids: list[int], labels: list[int]) -> list[tuple[str, str]]:
    """(text, kind) runs: kind is trained, context, special or special-trained. Runs of tokens of one
    kind are decoded together (keeps multi-byte characters whole); each special token is its own run."""
    special = set(tokenizer.all_special_ids)
    segments: list[tuple[str, str]] = []
    run: list[int] = []
    run_kind = None
    for token, label in zip(ids, labels, strict=True):
        kind = "trained" if label != IGNORE_INDEX else "context"
        if token in special:
            kind = "special-trained" if kind == "trained" else "special"
        if kind != run_kind or token in special:
            _flush(segments, tokenizer, run, run_kind)
            run, run_kind = [], kind
        run.append(token)
    _flush(segments, tokenizer, run, run_kind)
    return segments


def render_example(tokenizer, ids: list[int], labels: list[int]) -> Text:
    text = Text()
    for piece, kind in example_segments(tokenizer, ids, labels):
        text.append(piece.replace("\n", "↵\n"), style=STYLES[kind])
    return text


def _flush(segments: list, tokenizer, run: list[int], kind: str | None) -> None:
    if run:
        segments.append((tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False), kind))


def inspection_report(data: Prepared, cfg, tokenizer, n: int) -> dict:
    """What `inspect_data` prints, as JSON-ready data (the web UI renders it): template, sources,
    length histogram, per-split stats, every finding (where = file:line:field) and n examples."""
    findings = {name: [{"where": f.where, "message": f.message, "kind": f.kind} for f in items]
                for name, items in (("errors", data.report.errors), ("warnings", data.report.warnings),
                                    ("skipped", data.report.skipped))}
    examples = [{"source": data.train.source(i), "tokens": len(data.train[i]["input_ids"]),
                 "trained": sum(x != IGNORE_INDEX for x in data.train[i]["labels"]),
                 "segments": example_segments(tokenizer, data.train[i]["input_ids"], data.train[i]["labels"])}
                for i in range(min(n, len(data.train)))]
    return {"template": data.report.template or "none", "max_length": cfg.data.max_length,
            "sources": {split: dict(counts) for split, counts in data.origins.items()},
            "histogram": [{"lo": lo, "hi": hi, "count": c, "over_max_length": hi > cfg.data.max_length}
                          for lo, hi, c in histogram_bins(data.lengths)],
            "stats": {split: stats for split, stats in data.stats.items() if data.usable.get(split)},
            **findings, "examples": examples}


def inspect_preferences(cfg, tokenizer, n: int, console: Console):
    """train.stage dpo/orpo/kto: the counts, then each of `n` rows as its prompt and every side, trained tokens
    coloured as training sees them (a bad row raises the lint's DataError, every row at file:line:field)."""
    from chattune.data.preference_encode import prepare_preferences

    data = prepare_preferences(cfg, tokenizer)
    console.print(f"[bold]template[/] {data.template}; stage {cfg.train.stage}; max_length {cfg.data.max_length} "
                  f"({cfg.data.truncation})")
    for split, stats in data.stats.items():
        print_stats(split, _counted(stats), console)
    print_findings("skipped (data.on_error=skip)", "yellow", data.report.skipped, console)
    for row in data.train[:n]:
        sides = [k.removesuffix("_ids") for k in ("chosen_ids", "rejected_ids", "completion_ids") if k in row]
        console.rule(f"{row['source']}  (prompt {len(row['prompt_ids'])} tokens)")
        console.print(render_example(tokenizer, row["prompt_ids"], [IGNORE_INDEX] * len(row["prompt_ids"])))
        for side in sides:
            label = f" (label {row['label']})" if "label" in row else ""
            console.print(Text(f"{side}{label}:", style="bold"), render_example(tokenizer, row[f"{side}_ids"],
                                                                                  row[f"{side}_ids"]))
    console.print("[dim]legend: [green]trained[/green], context, [magenta]special token[/magenta], ↵ newline[/dim]")
    return data
