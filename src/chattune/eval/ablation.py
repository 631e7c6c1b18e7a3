"""`chattune eval RUN --retrieval-ablation`: a data.retrieval run scored four ways on one test file.

Base model zero-shot, base + retrieval, fine-tuned, fine-tuned + retrieval: the same rows,
read the run's way (runner.run_eval with `like` for the base model), the run's saved index
for the retrieval rows. Each variant is an ordinary eval folder in RUN_DIR/eval/ (the report
lists them); the table is also written as RUN_DIR/eval/<data>-<time>-retrieval.json. It does not
train or build an index.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from chattune import rundir
from chattune.io import write_json_atomic

VARIANTS = (  # name, is the base model, with retrieval
    ("base zero-shot", True, False),
    ("base + retrieval", True, True),
    ("fine-tuned", False, False),
    ("fine-tuned + retrieval", False, True),
)


def retrieval_ablation(run_path: str, data: str | Path, metrics: list[str], console=None, **options) -> dict:
    """Run the four evaluations; return (and write) {"variants": [{name, metrics, ...}], ...}."""
    from chattune.eval.runner import run_eval

    run = rundir.open_run_dir(run_path)
    cfg = run.config()
    if not cfg.data.retrieval:
        raise rundir.RunDirError(f"{run_path}: --retrieval-ablation needs a run trained with data.retrieval")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(data)).stem) or "data"
    variants = []
    for name, is_base, retrieval in VARIANTS:
        out = run.path / rundir.EVAL_DIR / f"{stem}-{stamp}-{re.sub(r'[^a-z]+', '-', name).strip('-')}"
        target = cfg.model.name if is_base else str(run.path)
        result = run_eval(target, data, metrics, console=console, out=out, retrieval=retrieval,
                          like=str(run.path) if is_base else None, **options)
        summary = result.summary
        variants.append({"name": name, "target": target, "retrieval": summary["retrieval"], "eval": out.name,
                         "metrics": summary["metrics"], "generate_seconds": summary["generate_seconds"],
                         "prompt_tokens_mean": summary["prompt_tokens_mean"]})
    table = {"run": str(run.path), "data": str(data), "rows": summary["rows"], "created": stamp, "variants": variants}
    write_json_atomic(run.path / rundir.EVAL_DIR / f"{stem}-{stamp}-retrieval.json", table)
    return table


def print_ablation(table: dict, console) -> None:
    from rich.table import Table

    names = list(dict.fromkeys(n for v in table["variants"] for n in v["metrics"]))
    out = Table(title=f"retrieval ablation of {table['run']} on {table['data']} ({table['rows']} rows)")
    for column in ("model", *names, "prompt tokens", "generate s"):
        out.add_column(column, justify="left" if column == "model" else "right")
    for v in table["variants"]:
        out.add_row(v["name"], *[f"{v['metrics'].get(n, float('nan')):.4f}" for n in names],
                    f"{v['prompt_tokens_mean']:.1f}", f"{v['generate_seconds']:.1f}")
    console.print(out)
