"""`make bench-preference`: held-out preference accuracy of base, SFT, DPO, ORPO and KTO, with time and memory per step.

On the built-in model: SFT is the demo recipe (builtin:self-cognition, shortened to --sft-steps);
DPO and KTO start from its adapter (model.adapter); ORPO starts from the base. Each trains on
builtin:identity-pairs (configs/preference/*.yaml) in its own `chattune train` process, whose peak
RSS comes from wait4's rusage. Each run is scored with `--metric preference` on held-out pairs whose
questions no training row asks (chattune.data.builtin_pairs.held_out_pairs); the base is the SFT
run's adapter-off score. Writes bench/results/<date>-preference.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.common import REPO, save_report

NAME, AUTHOR = "Tuna", "Chattune Labs"  # configs/demo.yaml's identity


def train_child(config: str, run_dir: Path, overrides: list[str], log: Path) -> dict:
    """`chattune train` in a child process: its summary.json, wall time and peak RSS."""
    cmd = [sys.executable, "-m", "chattune", "train", config, f"run_dir={run_dir}", *overrides]
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"steps": summary["steps"], "seconds": summary["seconds"],
            "seconds_per_step": round(summary["seconds"] / max(summary["steps"], 1), 2),
            "tokens_per_s": summary["tokens_per_s"], "train_loss": summary["train_loss"],
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_seconds": round(time.perf_counter() - started, 1)}


def score(run_dir: Path, pairs: Path) -> dict:
    from chattune.api import evaluate

    return evaluate(run_dir, pairs, "preference", device="cpu", out=run_dir / "eval" / "pairs").summary


def main(argv=None) -> int:
    from bench.__main__ import machine
    from chattune.data.builtin_pairs import held_out_pairs, write_jsonl

    parser = argparse.ArgumentParser(prog="python -m bench preference", description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=32, help="SFT steps of the demo recipe (default 32)")
    parser.add_argument("--steps", type=int, default=16, help="steps of each preference stage (default 16)")
    args = parser.parse_args(argv)
    report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(), "stages": {}}
    with tempfile.TemporaryDirectory(prefix="chattune-pref-") as tmp:
        work = Path(tmp)
        pairs = write_jsonl(held_out_pairs(NAME, AUTHOR), work / "test-pairs.jsonl")
        report["held_out_pairs"] = sum(1 for _ in pairs.open())
        sft = work / "sft"
        plan = [("sft", "configs/demo.yaml", [f"train.max_steps={args.sft_steps}", "train.forgetting=false"]),
                ("dpo", "configs/preference/dpo-identity.yaml", [f"model.adapter={sft}"]),
                ("orpo", "configs/preference/orpo-identity.yaml", []),
                ("kto", "configs/preference/kto-identity.yaml", [f"model.adapter={sft}"])]
        for stage, config, overrides in plan:
            steps = [] if stage == "sft" else [f"train.max_steps={args.steps}"]
            print(f"training {stage} ...", file=sys.stderr, flush=True)
            entry = train_child(config, work / stage, [*overrides, *steps], work / f"{stage}.log")
            scored = score(work / stage, pairs)
            entry.update(preference_accuracy=scored["metrics"]["preference_accuracy"],
                         margin_mean=round(scored["metrics"]["margin_mean"], 3))
            if stage == "sft":
                report["stages"]["base"] = {k: round(v, 3) for k, v in scored["base_metrics"].items()}
            report["stages"][stage] = entry
    path = save_report(report, "preference")
    print(markdown(report))
    print(f"wrote {path}")
    return 0


def markdown(report: dict) -> str:
    lines = [f"held-out pairs: {report['held_out_pairs']} ({report['machine'].get('cpu', '?')})", "",
             "| model | preference accuracy | mean margin (nats) | steps | s/step | peak RSS (MB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | {s['preference_accuracy']:.2f} | {s['margin_mean']} | {s.get('steps', '-')} | "
                     f"{s.get('seconds_per_step', '-')} | {s.get('peak_rss_mb', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
