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


def length_histogram(lengths: list[int], max_length: int, bins: int = BINS) -> list[str]:
    """Text rows 'lo-hi | bar count'; rows past max_length are flagged."""
    if not lengths:
        return []
    low, top = min(lengths), max(lengths)
    width = max(1, -(-(top - low + 1) // bins))
    counts = Counter((length - low) // width for length in lengths)
    peak = max(counts.values())
    rows = []
    for b in range(bins):
        lo, hi = low + b * width, low + (b + 1) * width - 1
        if lo > top:
            break
        bar = "█" * round(BAR_WIDTH * counts[b] / peak)
        flag = "  > max_length" if hi > max_length else ""
        rows.append(f"{lo:>6}-{hi:<6}| {bar:<{BAR_WIDTH}} {counts[b]}{flag}")
    return rows


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


def render_example(tokenizer, ids: list[int], labels: list[int]) -> Text:
    """Decode runs of tokens with the same style together (keeps multi-byte characters whole)."""
    special = set(tokenizer.all_special_ids)
    text = Text()
    run: list[int] = []
    run_style = None
    for token, label in zip(ids, labels, strict=True):
        style = "magenta" if token in special else ("green" if label != IGNORE_INDEX else "dim")
        if token in special and label != IGNORE_INDEX:
            style = "bold magenta on dark_green"
        if style != run_style or token in special:
            _flush(text, tokenizer, run, run_style)
            run, run_style = [], style
        run.append(token)
    _flush(text, tokenizer, run, run_style)
    return text


def _flush(text: Text, tokenizer, run: list[int], style: str | None) -> None:
    if run:
        piece = tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text.append(piece.replace("\n", "↵\n"), style=style)
