"""`make bench` / `python -m bench quality`: wall time to a target held-out loss, per contender and seed.

The MLPerf Training idea on the seeds' job: every contender (seed 000's recipe, TRL's
defaults, chattune's defaults; chattune in fp32 as well where the CPU has fast bf16) trains
the built-in model on the same huanhuan rows for the same epochs under the same training-time
budget, and the same scorer (bench/quality_scorer.py) reads the held-out loss every `--every`
trained examples. The target is fixed by rule before any contender but the recipe runs: the
mean of the recipe's final held-out losses at the end of its budget. Reported per run: the
training seconds (scoring excluded) until the held-out loss first reached the target (null:
never), the final loss and the peak RSS of the training process. Writes
bench/results/<date>-quality.json and a PNG of the held-out loss against training seconds and
against trained tokens. It measures; it changes no default (bench/README.md says which it set).
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

from bench.common import MODEL, REPO

RESULTS = REPO / "bench" / "results"
TARGET_RULE = "mean final held-out loss of the recipe's seeds at the end of its training-time budget"


def run_child(name: str, seed: int, args, work: Path) -> dict:
    out = work / f"{name}-{seed}"
    cmd = [sys.executable, "-m", "bench.quality_child", name, "--seed", str(seed), "--train", str(args.train_examples),
           "--eval", str(args.eval_examples), "--epochs", str(args.epochs), "--budget-s", str(args.budget_s),
           "--every", str(args.every), "--out", str(out), *[f"--set={item}" for item in args.set]]
    started = time.perf_counter()
    with (work / f"{name}-{seed}.log").open("w") as log:
        done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} (seed {seed}) failed with exit {done.returncode}; see {log.name}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(f"  {name} seed {seed}: final {result['final_loss']:.4f} after {result['train_seconds']} s of training, "
          f"{result['wall_seconds']} s wall", file=sys.stderr, flush=True)
    return result


def time_to_target(points: list[dict], target: float) -> float | None:
    """Training seconds at the first scored point whose held-out loss is at or below the target."""
    return next((p["train_seconds"] for p in points if p["heldout_loss"] <= target), None)


def summarize(runs: list[dict], target: float) -> dict:
    contenders: dict[str, dict] = {}
    for run in runs:
        entry = contenders.setdefault(run["name"], {"seeds": [], "time_to_target_s": [], "final_loss": [],
                                                    "peak_rss_mb": [], "precision": run["precision"], "curves": []})
        entry["seeds"].append(run["seed"])
        entry["time_to_target_s"].append(time_to_target(run["points"], target))
        entry["final_loss"].append(run["final_loss"])
        entry["peak_rss_mb"].append(run["peak_rss_mb"])
        entry.setdefault("train_seconds", []).append(run["train_seconds"])
        entry["curves"].append(run["points"])
    return contenders


def median_time(entry: dict) -> float | None:
    """chattune's median over seeds, a seed that never reached the target counting as infinitely slow."""
    times = [t if t is not None else float("inf") for t in entry["time_to_target_s"]]
    value = statistics.median(times)
    return None if value == float("inf") else value


def rival_time(entry: dict) -> tuple[float, bool]:
    """A rival's median over seeds, a seed that never reached the target counting its whole training time
    (the true time is longer: the ratio becomes a lower bound, flagged by the second value)."""
    times = [t if t is not None else whole for t, whole in zip(entry["time_to_target_s"], entry["train_seconds"],
                                                                strict=True)]
    return statistics.median(times), None in entry["time_to_target_s"]


def verdicts(contenders: dict) -> dict:
    """The issue's ratios: time to target vs the recipe and TRL, final loss vs the recipe's spread, RSS."""
    ours, recipe = contenders.get("chattune"), contenders.get("recipe")
    if not ours or not recipe:
        return {}
    out = {}
    mine = median_time(ours)
    for rival in ("recipe", "trl"):
        if rival in contenders and mine:
            theirs, lower_bound = rival_time(contenders[rival])
            out[f"speedup_vs_{rival}"] = round(theirs / mine, 2)
            out[f"speedup_vs_{rival}_is_lower_bound"] = lower_bound
    losses = recipe["final_loss"]
    bound = statistics.mean(losses) + 2 * (statistics.stdev(losses) if len(losses) > 1 else 0.0)
    out["recipe_final_mean_plus_2sd"] = round(bound, 5)
    out["chattune_final_within"] = max(ours["final_loss"]) <= bound
    out["rss_vs_recipe"] = round(statistics.mean(ours["peak_rss_mb"]) / statistics.mean(recipe["peak_rss_mb"]), 3)
    out["bf16_vs_fp32"] = precision_gap(contenders)
    return out


def precision_gap(contenders: dict) -> dict | None:
    """chattune's bf16 curve vs its fp32 one at the same trained examples, against the bf16 seeds' spread.

    Per scored example count that every run has: the gap (fp32 loss - mean bf16 loss) and the bf16
    seeds' range (max - min). bf16 learns like fp32 when every |gap| is within that range.
    """
    if "chattune-fp32" not in contenders or "chattune" not in contenders:
        return None
    curves = [*contenders["chattune"]["curves"], *contenders["chattune-fp32"]["curves"]]
    common = set.intersection(*[{p["examples"] for p in c} for c in curves]) - {0}
    bf16 = [{p["examples"]: p["heldout_loss"] for p in c} for c in contenders["chattune"]["curves"]]
    fp32 = {p["examples"]: p["heldout_loss"] for p in contenders["chattune-fp32"]["curves"][0]}
    rows = []
    for examples in sorted(common):
        losses = [curve[examples] for curve in bf16]
        rows.append({"examples": examples, "gap": round(fp32[examples] - statistics.mean(losses), 5),
                     "bf16_seed_range": round(max(losses) - min(losses), 5)})
    within = all(abs(r["gap"]) <= r["bf16_seed_range"] for r in rows)
    return {"points": rows, "max_abs_gap": max((abs(r["gap"]) for r in rows), default=None),
            "every_gap_within_seed_range": within}


def table(contenders: dict, target: float, rule: str) -> str:
    lines = [f"target held-out loss {target:.4f} ({rule})",
             "| contender | precision | time to target s (per seed) | final held-out loss | peak RSS MB |",
             "|---|---|---|---|---|"]
    for name, e in contenders.items():
        times = " / ".join("never" if t is None else f"{t:.0f}" for t in e["time_to_target_s"])
        finals = " / ".join(f"{x:.4f}" for x in e["final_loss"])
        rss = " / ".join(f"{x:.0f}" for x in e["peak_rss_mb"])
        lines.append(f"| {name} | {e['precision']} | {times} | {finals} | {rss} |")
    return "\n".join(lines)


def chart(contenders: dict, target: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"recipe": "#777777", "trl": "#6a9fd4", "chattune": "#e07b39", "chattune-fp32": "#8c564b"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, key, label in zip(axes, ("train_seconds", "trained_tokens"),
                              ("training seconds (scoring excluded)", "trained (answer) tokens"), strict=True):
        for name, entry in contenders.items():
            for index, curve in enumerate(entry["curves"]):
                ax.plot([p[key] for p in curve], [p["heldout_loss"] for p in curve], marker=".", alpha=0.8,
                        color=colors.get(name), label=name if index == 0 else None)
        ax.axhline(target, color="black", linestyle="--", linewidth=0.8, label="target")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out loss")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench quality", description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=128, help="huanhuan rows trained on")
    parser.add_argument("--eval-examples", type=int, default=16, help="held-out huanhuan rows scored")
    parser.add_argument("--epochs", type=float, default=3, help="epochs every contender is configured for (seed 000: 3)")
    parser.add_argument("--budget-s", type=float, default=90, help="training seconds per run (scoring excluded)")
    parser.add_argument("--every", type=int, default=16, help="score the held-out rows every this many examples")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the recipe and chattune (TRL: one)")
    parser.add_argument("--only", nargs="*", help="contenders besides the recipe (default: trl chattune "
                        "[chattune-fp32 where the CPU has fast bf16])")
    parser.add_argument("--target", type=float, help="fix the target instead of taking it from the recipe "
                        "(then the recipe is run only when named in --only)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="chattune config override (lever and default-choice runs)")
    parser.add_argument("--model", default=MODEL, help=f"the base every contender trains (default {MODEL})")
    return parser.parse_args(argv)


def plan(args, fast_bf16: bool) -> list[tuple[str, int]]:
    """(contender, seed) in run order: the recipe first, since it fixes the target."""
    names = args.only if args.only is not None else ["trl", "chattune", *(["chattune-fp32"] if fast_bf16 else [])]
    if args.target is None and "recipe" not in names:
        names = ["recipe", *names]
    many = {"recipe", "chattune"}
    return [(name, seed) for name in names for seed in range(args.seeds if name in many else 1)]


def main(argv=None) -> int:
    from bench.__main__ import machine

    args = parse_args(argv)
    os.environ["CHATTUNE_BENCH_MODEL"] = args.model  # read by bench.common in every child process
    started, box = time.perf_counter(), machine()
    runs = []
    with tempfile.TemporaryDirectory(prefix="chattune-quality-") as tmp:
        for name, seed in plan(args, box["fast_bf16"]):
            runs.append(run_child(name, seed, args, Path(tmp)))
    recipe_finals = [r["final_loss"] for r in runs if r["name"] == "recipe"]
    target = args.target if args.target is not None else statistics.mean(recipe_finals)
    contenders = summarize(runs, target)
    report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": box, "args": vars(args),
              "target_loss": round(target, 5), "target_rule": TARGET_RULE if args.target is None else "fixed by --target",
              "base_loss": runs[0]["points"][0]["heldout_loss"], "contenders": contenders,
              "verdicts": verdicts(contenders), "total_seconds": round(time.perf_counter() - started, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "" if args.model == MODEL else "-" + args.model.split(":")[-1].rstrip("/").split("/")[-1]
    stem = RESULTS / (datetime.now().strftime("%Y-%m-%d-%H%M") + "-quality" + tag)  # the tag may hold dots
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    chart(contenders, target, Path(f"{stem}.png"), f"{args.model}: {box['cpu']} ({box['cpu_generation']}), {box['cores']} cores, "
          f"fast bf16 {box['fast_bf16']}, torch {box['torch']}")
    print(f"machine: {json.dumps(box)}")
    print(table(contenders, target, report["target_rule"]))
    print("verdicts:", json.dumps(report["verdicts"]))
    print(f"total {report['total_seconds']} s; wrote {stem}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
