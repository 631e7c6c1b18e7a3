"""`chattune report RUN_DIR`: one self-contained report.html (inline CSS, base64 PNGs, no links out).

Sections: configuration, data, curves, metrics (training summary, in-training best, every
saved eval side by side, e.g. base model vs fine-tuned), and a sample of predictions next
to their references with mismatches highlighted.
"""

from __future__ import annotations

import base64
import difflib
import re
from html import escape
from pathlib import Path

from chattune.io import write_text_atomic
from chattune.metrics import normalize
from chattune.report.plots import run_curves_png
from chattune.report.runinfo import RunInfo, read_run
from chattune.rundir import REPORT

SAMPLE_ROWS = 30

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.miss{background:#fff0f0}td.hit{background:#f0fff0}mark{background:#ffc7c7}
img{max-width:100%}.muted{color:#777}pre{white-space:pre-wrap;background:#f8f8f8;padding:.6em}
"""

CONFIG_KEYS = [
    ("model", "name"), ("model", "quantize"), ("data", "path"), ("data", "eval_path"), ("data", "eval_ratio"),
    ("data", "max_length"), ("data", "system"), ("data", "replay"), ("lora", "method"), ("lora", "r"), ("lora", "alpha"),
    ("lora", "dropout"), ("lora", "targets"), ("train", "epochs"), ("train", "max_steps"),
    ("train", "lr"), ("train", "batch_size"), ("train", "grad_accum"), ("train", "scheduler"),
    ("train", "metric"), ("train", "eval_every"), ("train", "patience"), ("train", "tracking"),
]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f"<td class=\"num\">{escape(_fmt(v))}</td>" if i >= numeric_from else f"<td>{escape(_fmt(v))}</td>"
            for i, v in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def config_section(info: RunInfo) -> str:
    rows = [[f"{s}.{k}", (info.config.get(s) or {}).get(k)] for s, k in CONFIG_KEYS]
    return "<h2>Configuration</h2>" + _table(["key", "value"], rows, numeric_from=9)


def data_section(info: RunInfo) -> str:
    keys = ["examples", "replay", "tokens", "trained_tokens", "truncated", "dropped", "max_tokens"]
    rows = [[split, *[stats.get(k) for k in keys]] for split, stats in info.data_stats.items()]
    return "<h2>Data</h2>" + (_table(["split", *keys], rows) if rows else "<p class=muted>no data_stats.json</p>")


def curves_section(info: RunInfo) -> str:
    if not info.records:
        return "<h2>Curves</h2><p class=muted>no metrics.jsonl</p>"
    png = base64.b64encode(run_curves_png(info.records, info.name)).decode("ascii")
    return f'<h2>Curves</h2><img alt="loss and eval curves" src="data:image/png;base64,{png}">'


def metrics_section(info: RunInfo) -> str:
    keys = ["steps", "train_loss", "final_loss", "final_eval_loss", "seconds", "tokens_per_s", "trained_tokens"]
    parts = ["<h2>Metrics</h2>", _table(["training", *keys], [["run", *[info.summary.get(k) for k in keys]]])]
    parts.append(forgetting_table(info.summary.get("forgetting")))
    parts.append(spikes_table(info.summary.get("loss_spikes")))
    best = info.summary.get("in_training_eval")
    if best:
        parts.append(_table(["in-training metric", "best", "best step", "evaluations", "stopped early at", "adapter"],
                            [[best.get("metric"), best.get("best"), best.get("best_step"), best.get("evaluations"),
                              best.get("stopped_early_at"), best.get("adapter")]], numeric_from=1))
    if info.evals:
        names = list(dict.fromkeys(n for e in info.evals for n in e.summary.get("metrics", {})))
        rows = [[e.path.name, e.summary.get("target"), "yes" if e.summary.get("retrieval") else "no",
                 e.summary.get("data"), e.summary.get("rows"), *[e.summary.get("metrics", {}).get(n) for n in names],
                 len(e.summary.get("unparseable") or [])] for e in info.evals]
        parts.append("<h3>Saved evaluations</h3>"
                     + _table(["eval", "model", "retrieval", "data", "rows", *names, "unparseable"], rows,
                              numeric_from=4))
    else:
        parts.append("<p class=muted>no saved evaluations (chattune eval RUN_DIR --data FILE)</p>")
    return "".join(parts)


def forgetting_table(entry: dict | None) -> str:
    """The forgetting guard (training/forgetting.py): base vs fine-tuned on the built-in general rows."""
    if not entry:
        return "<p class=muted>forgetting guard: not run (train.forgetting=false)</p>"
    if "skipped" in entry:
        return f"<p class=muted>forgetting guard: {escape(str(entry['skipped']))}</p>"
    keys = ["rows", "base_loss", "tuned_loss", "loss_change", "kl_to_base", "threshold_kl"]
    table = _table(["forgetting guard", *keys], [["general rows", *[entry.get(k) for k in keys]]])
    if entry.get("warning"):
        table += ("<p><mark>warning: KL to the base is above the threshold; the fine-tuned model drifted on "
                  "general questions. Mix general rows in (data.replay) or train less (train.lr, train.epochs).</mark></p>")
    return table


def spikes_table(entry: dict | None) -> str:
    """Loss spikes noticed during training (training/spikes.py), with the likely cause."""
    if not entry:
        return "<p class=muted>loss spikes: none</p>"
    rows = [[s.get("step"), s.get("loss"), s.get("level"), s.get("grad_norm"), "yes" if s.get("persists") else "no"]
            for s in entry.get("spikes", [])]
    table = _table(["loss spike at step", "loss", "running level", "grad norm", "persisted"], rows)
    mark = "warning: a spike persisted; " if entry.get("persisting") else ""
    return table + f"<p><mark>{escape(mark + str(entry.get('advice', '')))}</mark></p>"


_PIECES = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]+|\s+|[^\w\s]")


def highlight(prediction: str, reference: str) -> str:
    """Escaped prediction with the words (CJK: characters) not matching the reference in <mark>."""
    pred, ref = _PIECES.findall(prediction), _PIECES.findall(reference)
    matcher = difflib.SequenceMatcher(a=ref, b=pred, autojunk=False)
    out = []
    for tag, _, _, j1, j2 in matcher.get_opcodes():
        piece = escape("".join(pred[j1:j2]))
        out.append(piece if tag == "equal" or not piece.strip() else f"<mark>{piece}</mark>")
    return "".join(out)


def _is_hit(record: dict) -> bool:
    for key in ("accuracy", "exact"):
        if key in record:
            return bool(record[key])
    return normalize(record.get("prediction") or "") == normalize(record.get("reference") or "")


def _cell(record: dict | None, reference: str) -> str:
    if record is None:
        return "<td class=muted>-</td>"
    hit = _is_hit(record)
    mark = highlight(record.get("prediction") or "", reference)
    return f'<td class="{"hit" if hit else "miss"}">{mark}</td>'


def predictions_section(info: RunInfo) -> str:
    """The latest eval's rows; every other eval of the same data file gets its own column."""
    with_rows = [e for e in info.evals if e.predictions]
    if not with_rows:
        return "<h2>Predictions</h2><p class=muted>no saved predictions</p>"
    latest = with_rows[-1]
    same_data = [e for e in with_rows if e.summary.get("data") == latest.summary.get("data")]
    by_source = [{r.get("source"): r for r in e.predictions} for e in same_data]
    head = "<tr><th>prompt</th><th>reference</th>" + "".join(
        f"<th>{escape(str(e.summary.get('target')))}<br><span class=muted>{escape(e.path.name)}</span></th>"
        for e in same_data) + "</tr>"
    rows = []
    for record in latest.predictions[:SAMPLE_ROWS]:
        reference = record.get("reference") or ""
        cells = "".join(_cell(lookup.get(record.get("source")), reference) for lookup in by_source)
        row_class = "hit" if _is_hit(record) else "miss"
        rows.append(f'<tr class="{row_class}"><td>{escape(record.get("prompt") or "")}</td>'
                    f"<td>{escape(reference)}</td>{cells}</tr>")
    misses = ", ".join(f"{escape(e.path.name)}: {sum(not _is_hit(r) for r in e.predictions)} of {len(e.predictions)}"
                       for e in same_data)
    caption = (f"<p>First {len(rows)} rows of {escape(str(latest.summary.get('data')))}. Mismatches ({misses}) "
               "are shaded red; words that differ from the reference are <mark>marked</mark>.</p>")
    return "<h2>Predictions</h2>" + caption + f"<table>{head}{''.join(rows)}</table>"


def render_report(info: RunInfo) -> str:
    sections = [config_section(info), data_section(info), curves_section(info), metrics_section(info),
                predictions_section(info)]
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>chattune report: {escape(info.name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>chattune report: {escape(info.name)}</h1>"
            + "".join(sections) + "</body></html>\n")


def write_report(run_path: str | Path, out: str | Path | None = None) -> Path:
    info = read_run(run_path)
    target = Path(out) if out else Path(run_path) / REPORT
    write_text_atomic(target, render_report(info))
    return target
