"""`make bench` / `python -m bench`: seed 000's recipe vs TRL defaults vs chattune, side by side.

Each contender trains in its own subprocess on the same huanhuan subset (same rows, one
epoch, so the same trained tokens) with LoRA r 8 on the same seven projections; its peak
RSS is read from the child's rusage. Prints a table with ratios vs the recipe and writes
bench/results/<date>.json and .png. `--seeds 3` repeats recipe and chattune for the spread
of the held-out loss. Runs bench/predict_speed.py too when it exists.
`python -m bench serve-load [--seconds 60 --clients 50 ...]` load-tests `chattune serve`
instead (bench/serve_load.py); `python -m bench data-prepare` times data preparation (bench/data_prepare.py);
`python -m bench scale` measures peak memory on a 1.1B model (bench/scale.py); `python -m bench retrieval`
seed 002 with retrieval (bench/retrieval.py); `python -m bench preference` base/SFT/DPO/ORPO/KTO (bench/preference.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.common import REPO

RESULTS = REPO / "bench" / "results"
LABELS = {"recipe": "(a) seed 000 recipe", "trl": "(b) TRL SFTTrainer defaults", "chattune": "(c) chattune defaults",
          "base": "base model, untrained"}


def run_child(name: str, seed: int, args, work: Path) -> dict:
    """Run one contender; its whole-process peak RSS comes from wait4's rusage."""
    out = work / f"{name}-{seed}"
    cmd = [sys.executable, "-m", "bench.child", name, "--seed", str(seed), "--train", str(args.train_examples),
           "--eval", str(args.eval_examples), "--out", str(out), *[f"--set={item}" for item in args.set]]
    started = time.perf_counter()
    log = (work / f"{name}-{seed}.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} (seed {seed}) failed with exit {proc.returncode}; see {log.name}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process_peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(f"  {LABELS[name]} seed {seed}: {result['wall_seconds']} s wall", file=sys.stderr, flush=True)
    return result


def add_ratios(rows: list[dict]) -> None:
    ref = next(r for r in rows if r["name"] == "recipe" and r["seed"] == rows[0]["seed"])
    for r in rows:
        if not r["tokens"]:
            continue
        r["speed_vs_recipe"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2)
        r["rss_vs_recipe"] = round(r["train_peak_rss_mb"] / ref["train_peak_rss_mb"], 2)


def table(rows: list[dict]) -> str:
    head = ("| contender | seed | precision | real tok/s | trained tok/s | peak RSS MB (train / process) | held-out loss "
            "| tokens / trained | speed vs (a) | RSS vs (a) |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {LABELS[r['name']]} | {r['seed']} | {r.get('precision', '-')} | {r['tokens_per_s'] or '-'} "
            f"| {r['trained_tokens_per_s'] or '-'} "
            f"| {r['train_peak_rss_mb']:.0f} / {r['process_peak_rss_mb']:.0f} | {r['heldout_loss']:.4f} "
            f"| {r['tokens']} / {r['trained_tokens']} | {r.get('speed_vs_recipe', '-')} | {r.get('rss_vs_recipe', '-')} |"
        )
    return "\n".join(lines)


def spread(rows: list[dict]) -> dict:
    out = {}
    for name in ("recipe", "chattune"):
        losses = [r["heldout_loss"] for r in rows if r["name"] == name]
        if len(losses) > 1:
            out[name] = {"mean": round(statistics.mean(losses), 5), "stdev": round(statistics.stdev(losses), 5),
                         "min": min(losses), "max": max(losses), "n": len(losses)}
    return out


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in rows if r["seed"] == rows[0]["seed"] and r["tokens"]]
    names = [LABELS[r["name"]].split(" ", 1)[0] + " " + r["name"] for r in first]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(axes, ("tokens_per_s", "train_peak_rss_mb", "heldout_loss"),
                              ("real tokens/s (higher is better)", "peak RSS MB (lower)", "held-out loss (lower)"), strict=True):
        ax.bar(names, [r[key] for r in first], color=["#999", "#6a9fd4", "#e07b39"][: len(first)])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predict_speed(work: Path) -> dict | None:
    if not (REPO / "bench" / "predict_speed.py").is_file():
        return None
    done = subprocess.run([sys.executable, "-m", "bench.predict_speed"], cwd=REPO, capture_output=True, text=True)
    return {"exit": done.returncode, "stdout": done.stdout[-4000:], "stderr": done.stderr[-2000:]}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def cpu_generation() -> str:
    """`family F model M` and the bf16 flags from /proc/cpuinfo: "AMD EPYC" alone names several generations."""
    cpuinfo = Path("/proc/cpuinfo")
    fields = {}
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = [f for f in fields.get("flags", "").split() if f in ("avx512_bf16", "amx_bf16", "avx2")]
    return f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {' '.join(flags) or 'no avx2'}"


def machine() -> dict:
    """What the numbers depend on: the CPU, its core count, whether it has fast bf16, torch."""
    import torch

    from chattune.model.load import cpu_has_fast_bf16

    return {"cpu": cpu_name(), "cpu_generation": cpu_generation(), "cores": os.cpu_count(),
            "fast_bf16": cpu_has_fast_bf16(), "torch": torch.__version__}


SUBCOMMANDS = {"serve-load": "serve_load", "data-prepare": "data_prepare", "scale": "scale", "gguf": "gguf_fidelity",
               "retrieval": "retrieval", "quality": "quality", "preference": "preference"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:  # python -m bench NAME ...: that bench module's main
        import importlib

        return importlib.import_module(f"bench.{SUBCOMMANDS[argv[0]]}").main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                     epilog="python -m bench serve-load --help: the server load test")
    # sized for the slowest machine seen (AVX2-only EPYC, fp32: the recipe trains ~27 tok/s there), so
    # the whole bench with 3 seeds of the recipe stays near 20 minutes; use more rows where time allows
    parser.add_argument("--train-examples", type=int, default=24, help="huanhuan rows trained on, one epoch")
    parser.add_argument("--eval-examples", type=int, default=16, help="held-out huanhuan rows scored")
    parser.add_argument("--seeds", type=int, default=3, help="repeat recipe and chattune over this many seeds")
    parser.add_argument("--only", nargs="*", choices=list(LABELS), help="contenders to run (default: all)")
    parser.add_argument("--no-predict", action="store_true", help="skip bench/predict_speed.py")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="chattune config override for (c), e.g. train.micro_batch_tokens=0 (lever runs)")
    args = parser.parse_args(argv)
    names = args.only or ["recipe", "trl", "chattune", "base"]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="chattune-bench-") as tmp:
        work = Path(tmp)
        for seed in range(args.seeds):
            for name in names:
                if seed == 0 or name in ("recipe", "chattune"):
                    rows.append(run_child(name, seed, args, work))
        predict = None if args.no_predict else predict_speed(work)
    if "recipe" in names:
        add_ratios(rows)
    report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(), "args": vars(args), "rows": rows,
              "heldout_loss_spread": spread(rows), "predict_speed": predict,
              "total_seconds": round(time.perf_counter() - started, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / datetime.now().strftime("%Y-%m-%d-%H%M")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if any(r["tokens"] for r in rows):
        chart(rows, stem.with_suffix(".png"))
    print(f"machine: {json.dumps(report['machine'])}")
    print(table(rows))
    if report["heldout_loss_spread"]:
        print("held-out loss over seeds:", json.dumps(report["heldout_loss_spread"]))
    if predict:
        print("predict_speed:", predict["stdout"].strip()[-1500:])
    print(f"total {report['total_seconds']} s; wrote {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
