"""`chattune runs` and `chattune compare`: a table of run dirs and their loss curves on one plot."""

from __future__ import annotations

from pathlib import Path

from chattune.report.plots import compare_png, write_png
from chattune.report.runinfo import find_runs, read_run


def runs_rows(parent: str | Path) -> list[list[str]]:
    rows = []
    for path in find_runs(parent):
        info = read_run(path)
        final = info.summary.get("final_loss")
        rows.append([
            info.name, str((info.config.get("model") or {}).get("name", "-")),
            str((info.config.get("data") or {}).get("path", "-")), str(info.summary.get("steps", "-")),
            f"{final:.4f}" if isinstance(final, int | float) else "-", info.best_metric(),
        ])
    return rows


def print_runs(parent: str | Path, console) -> int:
    from rich.table import Table

    rows = runs_rows(parent)
    if not rows:
        console.print(f"no run dirs in {parent}")
        return 0
    table = Table(title=f"runs in {parent}")
    for column in ("run", "model", "data", "steps", "final loss", "best metric"):
        table.add_column(column, justify="right" if column in ("steps", "final loss") else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return len(rows)


def compare_runs(paths: list[str | Path], out: str | Path) -> Path:
    runs = {}
    for path in paths:
        info = read_run(path)
        name = info.name if info.name not in runs else str(info.path)
        runs[name] = info.records
    out = Path(out)
    write_png(compare_png(runs), out)
    return out
