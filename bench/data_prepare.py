"""`python -m bench data-prepare`: huanhuan xN prepared by the old per-row path and by prepare(), cold and warm.

The file is /work/shared/data/huanhuan.json (3,729 rows) repeated N times as JSONL. Each
measurement runs in a fresh subprocess; it reports the seconds of the data step itself
(tokenizer loaded before the clock starts), and its whole-process peak RSS comes from
wait4's rusage. Modes: `legacy` (bench/data_prepare_legacy.py: lint tokenizes each row,
then tokenize_conversations again), `cold` (prepare() with an empty cache) and `warm`
(the same again: a cache hit). The tokenizer is the built-in smollm2-135m-instruct's.
Writes bench/results/<date>-data-prepare.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from bench.common import REPO

HUANHUAN = Path("/work/shared/data/huanhuan.json")
RESULTS = REPO / "bench" / "results"
SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"  # seed 000's system prompt
SETTINGS = [f"data.system={SYSTEM}", "data.eval_ratio=0.01"]


def write_repeated(source: Path, times: int, out: Path) -> int:
    rows = json.loads(source.read_text(encoding="utf-8"))
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with out.open("w", encoding="utf-8") as handle:
        for _ in range(times):
            handle.write(lines)
    return len(rows) * times


def child(mode: str, data: str, tokenizer_dir: str) -> dict:
    """One measurement, in this (fresh) process."""
    from transformers import AutoTokenizer

    from chattune.config import load_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = load_config(None, [f"data.path={data}", *SETTINGS])
    started = time.perf_counter()
    if mode == "legacy":
        from bench.data_prepare_legacy import legacy_prepare

        out = legacy_prepare(cfg.data, tokenizer, cfg.seed)
        stats, from_cache = out["stats"], False
    else:
        from chattune.data import prepare

        prepared = prepare(cfg.data, tokenizer, cfg.seed, cache_mode=True)
        stats, from_cache = prepared.stats, prepared.from_cache
    seconds = time.perf_counter() - started
    return {"mode": mode, "seconds": round(seconds, 2), "from_cache": from_cache,
            "train_examples": stats["train"]["examples"], "train_tokens": stats["train"]["tokens"],
            "eval_examples": stats.get("eval", {}).get("examples", 0)}


def measure(mode: str, data: Path, tokenizer_dir: str, home: Path, log: Path) -> dict:
    env = {**os.environ, "CHATTUNE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bench.data_prepare", "--child", mode, str(data), tokenizer_dir]
    started, peak_pss = time.perf_counter(), [0]
    with log.open("a") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        sampler = threading.Thread(target=_sample_pss, args=(proc.pid, peak_pss), daemon=True)
        sampler.start()
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        sampler.join(timeout=5)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{mode} on {data.name} failed; see {log}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(process_wall_seconds=round(time.perf_counter() - started, 1),
                  peak_rss_mb=round(usage.ru_maxrss / 1024), peak_pss_all_mb=round(peak_pss[0] / 2**20))
    print(f"  {data.name} {mode}: {result['seconds']} s, peak RSS {result['peak_rss_mb']} MB "
          f"(all processes, PSS: {result['peak_pss_all_mb']} MB)", file=sys.stderr, flush=True)
    return result


def _sample_pss(pid: int, peak: list) -> None:
    """Peak of the summed PSS of the child and its encoding workers (rusage gives only the largest one)."""
    import psutil

    try:
        root = psutil.Process(pid)
        while root.status() != psutil.STATUS_ZOMBIE:
            total = 0
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_full_info().pss
            peak[0] = max(peak[0], total)
            time.sleep(0.3)
    except psutil.Error:
        return


def table(rows: list[dict], legacy_x100: float | None) -> str:
    lines = ["| data | rows | path | prepare s | peak RSS MB (largest process) | peak PSS MB (all processes) "
             "| train examples | train tokens | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| huanhuan x{r['repeat']} | {r['rows']:,} | {r['mode']} | {r['seconds']} | {r['peak_rss_mb']} "
                     f"| {r['peak_pss_all_mb']} | {r['train_examples']:,} | {r['train_tokens']:,} | {r.get('note', '')} |")
    if legacy_x100 is not None:
        lines.append(f"| huanhuan x100 | - | legacy, extrapolated (x10 time x 10) | {legacy_x100:.0f} | - | - | - | - "
                     "| not measured |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(*argv[1:4])))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench data-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100, help="huanhuan copies for prepare() cold and warm")
    parser.add_argument("--legacy-repeat", type=int, default=10, help="copies for the per-row path (and a cold/warm "
                        "pair at the same size); the x100 per-row time is extrapolated unless this is 100")
    args = parser.parse_args(argv)
    from bench.__main__ import machine
    from chattune.models import ensure_builtin

    tokenizer_dir = str(ensure_builtin("smollm2-135m-instruct"))
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chattune-data-bench-") as tmp:
        work, log = Path(tmp), Path(tmp) / "children.log"
        plan = [(args.legacy_repeat, ("legacy", "cold", "warm"))]
        plan += [(args.repeat, ("cold", "warm"))] if args.repeat != args.legacy_repeat else []
        for repeat, modes in plan:
            data = work / f"huanhuan-x{repeat}.jsonl"
            count = write_repeated(HUANHUAN, repeat, data)
            home = work / f"home-x{repeat}"  # an empty cache for `cold`, the one it wrote for `warm`
            for mode in modes:
                rows.append({"repeat": repeat, "rows": count, **measure(mode, data, tokenizer_dir, home, log)})
        children_log = log.read_text(errors="replace")[-4000:]
    by = {(r["repeat"], r["mode"]): r for r in rows}
    legacy = by.get((args.legacy_repeat, "legacy"))
    for r in rows:
        if legacy and r["mode"] == "cold" and r["repeat"] == args.legacy_repeat:
            r["note"] = f"{legacy['seconds'] / r['seconds']:.1f}x faster than legacy"
        if r["mode"] == "warm" and (r["repeat"], "cold") in by:
            r["note"] = f"{100 * r['seconds'] / by[(r['repeat'], 'cold')]['seconds']:.1f}% of cold"
    legacy_x100 = legacy["seconds"] * args.repeat / args.legacy_repeat if legacy and args.legacy_repeat != args.repeat else None
    cold = by.get((args.repeat, "cold"))
    if legacy_x100 and cold:
        cold["note"] = f"{legacy_x100 / cold['seconds']:.1f}x faster than legacy (extrapolated)"
    report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(), "args": vars(args),
              "settings": SETTINGS, "rows": rows, "legacy_extrapolated_seconds": legacy_x100,
              "total_seconds": round(time.perf_counter() - started, 1), "children_log_tail": children_log}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.now():%Y-%m-%d}-data-prepare.json"
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"machine: {json.dumps(report['machine'])}")
    print(table(rows, legacy_x100))
    print(f"total {report['total_seconds']} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
