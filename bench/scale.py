"""`python -m bench scale` (`make bench-scale`): peak memory of train, export and chat on a model of real size.

Builds a random-initialised Llama of about 1.1B parameters from a config (TinyLlama's shape
with the built-in model's tokenizer and vocabulary; nothing is downloaded), saves it in bf16
as safetensors shards, then runs each step as its own `chattune` process and reads that
process's peak RSS from wait4's rusage (the tree's largest process, as /usr/bin/time -v):
LoRA training 2 steps, QLoRA (4-bit) training 2 steps, export of the LoRA run (HF folder and
GGUF q8_0, each behind its gate), chat with the LoRA run and with the export. `--model NAME` runs
the same steps on a real model instead (e.g. builtin:qwen2.5-coder-0.5b-instruct), whose gates
then decide (no --force). Targets (issue 15): export and chat peak RSS at most 1.3x the
bf16 checkpoint's size, QLoRA training at most 0.6x LoRA's. Writes
bench/results/<date>-scale.json and prints a markdown table. Not a test: nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.common import REPO

RESULTS = REPO / "bench" / "results"
SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
         "num_key_value_heads": 4, "max_position_embeddings": 2048, "tie_word_embeddings": False}  # TinyLlama-1.1B
TRAIN = ["train.max_steps=2", "train.batch_size=1", "train.grad_accum=1", "data.max_length=128",
         "train.save_every=null", "train.forgetting=false"]
TARGETS = {"export": 1.3, "chat (run dir)": 1.3, "chat (export)": 1.3}


def build_model(out: Path, layers: int) -> int:
    """The random bf16 model folder (weights and the built-in tokenizer); returns its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from chattune.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"))
    config = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers}, vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size="500MB")
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def base_model(args, folder: Path, env: dict, log: Path) -> tuple[dict | None, Path]:
    """(the build step's row or None, the model folder): the named real model, or the random one built once."""
    if args.model is not None:
        from chattune.models import resolve_model

        return None, Path(resolve_model(args.model))
    if (folder / "config.json").exists():
        return None, folder
    build = [sys.executable, "-m", "bench.scale", "--build", str(folder), str(args.layers)]
    return measured("build model", build, env, log), folder


def parameter_count(folder: Path) -> int:
    """Parameters stored in the folder's safetensors files (read from their headers)."""
    import math

    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            names = weights.keys()
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
    return total


def measured(name: str, cmd: list[str], env: dict, log: Path) -> dict:
    """Run `cmd`; its wall seconds and the peak RSS of its largest process (wait4)."""
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n===== {name}: {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{name} exited {code}; see {log}")
    row = {"step": name, "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    print(f"  {name}: {row['seconds']} s, peak RSS {row['peak_rss_mb']} MB", file=sys.stderr, flush=True)
    return row


def steps(model: Path, work: Path, random_weights: bool) -> list[tuple[str, list[str]]]:
    chattune = [sys.executable, "-m", "chattune"]
    lora, qlora, export = work / "run-lora", work / "run-qlora", work / "export"
    base = [f"model.name={model}", *TRAIN]
    force = ["--force"] if random_weights else []
    return [
        ("train LoRA", [*chattune, "train", *base, f"run_dir={lora}"]),
        ("train QLoRA 4-bit", [*chattune, "train", *base, "model.quantize=4bit", f"run_dir={qlora}"]),
        # --force: a random model's next-token scores are near ties, so greedy agreement is noise here (the gate
        # still runs and its line is in the log); the merge itself is checked by tests/test_export_shards.py
        ("export", [*chattune, "export", str(lora), "--out", str(export), *force]),
        ("export GGUF q8_0", [*chattune, "export", str(lora), "--format", "gguf", "--gguf-type", "q8_0",
                              "--out", str(work / "export-gguf"), *force]),
        # bf16 explicitly: on a CPU `auto` loads fp32 (model/load.py inference_precision); the target is bf16's
        ("chat (run dir)", [*chattune, "chat", str(lora), "--dtype", "bf16", "--prompt", "Who are you?",
                            "--max-new-tokens", "8"]),
        ("chat (export)", [*chattune, "chat", str(export), "--dtype", "bf16", "--prompt", "Who are you?",
                           "--max-new-tokens", "8"]),
    ]


def verdicts(rows: dict[str, dict], checkpoint_mb: float) -> dict:
    out = {name: {"ratio_to_checkpoint": round(rows[name]["peak_rss_mb"] / checkpoint_mb, 3), "target": limit,
                  "met": rows[name]["peak_rss_mb"] <= limit * checkpoint_mb} for name, limit in TARGETS.items()}
    ratio = rows["train QLoRA 4-bit"]["peak_rss_mb"] / rows["train LoRA"]["peak_rss_mb"]
    out["QLoRA vs LoRA training"] = {"ratio": round(ratio, 3), "target": 0.6, "met": ratio <= 0.6}
    return out


def table(rows: list[dict], checkpoint_mb: float, judged: dict) -> str:
    lines = [f"checkpoint on disk: {checkpoint_mb:.0f} MB", "",
             "| step | seconds | trained tokens/s | peak RSS MB | x checkpoint | target | met |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = judged.get(r["step"], {})
        step = f"{r['step']} ({r['precision']})" if "precision" in r else r["step"]
        lines.append(f"| {step} | {r['seconds']} | {r.get('tokens_per_s') or ''} | {r['peak_rss_mb']} "
                     f"| {r['peak_rss_mb'] / checkpoint_mb:.2f} "
                     f"| {verdict.get('target', '')} | {verdict.get('met', '')} |")
    qlora = judged["QLoRA vs LoRA training"]
    lines.append(f"\nQLoRA / LoRA training peak RSS: {qlora['ratio']} (target <= 0.6: {qlora['met']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"], help="decoder layers (22: ~1.1B)")
    parser.add_argument("--keep", type=Path, help="keep the model, runs and log in this folder")
    parser.add_argument("--model", help="a real model (name or folder) instead of the random 1.1B Llama")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from bench.__main__ import machine

    work = args.keep or Path(tempfile.mkdtemp(prefix="chattune-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    log, model = work / "steps.log", work / "model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        built, model = base_model(args, model, env, log)
        checkpoint_mb = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**20
        rows = [measured(name, cmd, env, log) for name, cmd in steps(model, work, args.model is None)]
        for row, run in zip(rows, (work / "run-lora", work / "run-qlora"), strict=False):  # the two training steps
            summary = json.loads((run / "summary.json").read_text())
            row["precision"], row["tokens_per_s"] = summary["precision"], summary.get("tokens_per_s")
        judged = verdicts({r["step"]: r for r in rows}, checkpoint_mb)
        params = parameter_count(model)
        report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(), "parameters": params,
                  "model": args.model or {"random Llama": {**SHAPE, "num_hidden_layers": args.layers}},
                  "checkpoint_mb": round(checkpoint_mb),
                  "build": built, "rows": rows, "verdicts": judged, "train_settings": TRAIN}
        RESULTS.mkdir(parents=True, exist_ok=True)
        tag = "" if args.model is None else "-" + args.model.split(":")[-1].rstrip("/").split("/")[-1]
        out = RESULTS / f"{datetime.now():%Y-%m-%d}-scale{tag}.json"
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(table(rows, checkpoint_mb, judged))
        print(f"wrote {out}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        out_dir = Path(sys.argv[2])
        count = build_model(out_dir, int(sys.argv[3]))
        (out_dir / "chattune-bench.json").write_text(json.dumps({"parameters": count}))
        sys.exit(0)
    sys.exit(main())
