"""`python -m bench gguf` (`make bench-gguf`): GGUF fidelity per type on the built-in model's demo run.

Trains configs/demo.yaml (or takes --run), exports it as GGUF f32, f16, q8_0 and q4_0 (q4_0 with the
Ollama Modelfile), and tabulates for each type the file size, greedy agreement with base + adapter,
mean KL of next-token distributions and max |logit diff| on the same held-out prompts (the export
gate's own measurement, exporting/fidelity.py), whether the gate passed, and, where llama-cpp-python
is installed, the same numbers computed by llama.cpp; then what the default `--gguf-type auto` writes. Writes
bench/results/<date>-gguf.json; not a test, nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime
from pathlib import Path

from bench.common import REPO, save_report

TYPES = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")  # K-quants where llama-cpp-python is installed


def train_demo(work: Path, overrides: list[str]) -> Path:
    from chattune.config import load_config
    from chattune.training.trainer import train

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run_dir={work / 'demo'}", *overrides])
    return train(cfg).run_dir


def export_row(run: Path, work: Path, dtype: str) -> dict:
    from chattune.exporting.pipeline import export_run, gguf_filename

    out = work / f"gguf-{dtype}"
    report = export_run(str(run), out, fmt="gguf", gguf_dtype=dtype, force=True, ollama=dtype == "q4_0")[-1]
    row = {"type": dtype, "mb": round((out / gguf_filename(dtype)).stat().st_size / 2**20, 1),
           "greedy_agreement": report.greedy_agreement, "mean_kl": report.mean_kl,
           "max_logit_diff": report.max_logit_diff, "gate": report.gate, "tolerance": report.tolerance,
           "passed": report.passed, "prompts": report.prompts, "source": report.source}
    ran = json.loads((out / "export_report.json").read_text(encoding="utf-8")).get("llama_cpp", {})
    if ran.get("installed") and "error" not in ran:  # the same prompts run by llama.cpp itself (exporting/llamacpp.py)
        row["llama_cpp"] = {key: ran[key] for key in ("greedy_agreement", "mean_kl", "max_logit_diff",
                                                       "tokenizer_agreement")}
    if (out / "Modelfile").is_file():
        row["modelfile"] = (out / "Modelfile").read_text(encoding="utf-8")
    return row


def auto_choice(run: Path, work: Path) -> dict:
    """What the default `--gguf-type auto` writes for this run, and the types its gates refused."""
    from chattune.exporting.pipeline import export_run

    export_run(str(run), work / "gguf-auto", fmt="gguf", ollama=True)
    written = json.loads((work / "gguf-auto" / "export_report.json").read_text(encoding="utf-8"))
    return {"type": written["type"], "refused": written["auto"]["refused"],
            "modelfile": (work / "gguf-auto" / "Modelfile").read_text(encoding="utf-8")}


def table(rows: list[dict]) -> str:
    lines = ["| type | file (MB) | greedy agreement | mean KL (nats) | max abs logit diff | gate "
             "| llama.cpp: greedy / mean KL / tokens |", "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        bound = "KL" if r["gate"] == "kl" else "logit diff"
        ran = r.get("llama_cpp")
        runtime = (f"{ran['greedy_agreement']:.0%} / {ran['mean_kl']:.2e} / {ran['tokenizer_agreement']:.0%}"
                   if ran else "not installed")
        lines.append(f"| {r['type']} | {r['mb']} | {r['greedy_agreement']:.0%} | {r['mean_kl']:.2e} | "
                     f"{r['max_logit_diff']:.3g} | {'pass' if r['passed'] else 'FAIL'} ({bound} <= {r['tolerance']:g}) "
                     f"| {runtime} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from bench.__main__ import machine

    parser = argparse.ArgumentParser(prog="python -m bench gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing run dir (default: train configs/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for the demo run, e.g. train.epochs=1 where the CPU is slow")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chattune-gguf-") as tmp:
        work = Path(tmp)
        run = Path(args.run) if args.run else train_demo(work, args.set)
        from chattune.exporting.pipeline import gguf_types_here

        rows = [export_row(run, work, dtype) for dtype in TYPES if dtype in gguf_types_here()]
        auto = auto_choice(run, work)
    report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(), "run": str(run),
              "overrides": args.set, "rows": rows, "auto": auto}
    path = save_report(report, "gguf")
    print(table(rows))
    print(f"--gguf-type auto wrote {auto['type']} (refused: {', '.join(r['type'] for r in auto['refused']) or 'none'})")
    print(auto["modelfile"])
    print(f"wrote {path}")
    return 0
