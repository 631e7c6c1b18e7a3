"""Contender (c): `chattune train` with its defaults; only data, epochs, seed and the shared LoRA r/alpha/targets are set."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import LORA_ALPHA, LORA_R, MODEL, SYSTEM, TARGETS


def run(model_path: str, train_rows: list[dict], out_dir: str, seed: int, overrides=(), epochs: float = 1,
        callbacks=()) -> dict:
    from rich.console import Console

    from chattune.config import load_config
    from chattune.training.trainer import train

    data = Path(out_dir) / "train.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(train_rows, ensure_ascii=False), encoding="utf-8")
    cfg = load_config(None, [
        f"model.name={MODEL}", f"data.path={data}", f"data.system={SYSTEM}", f"run_dir={Path(out_dir) / 'run'}",
        f"lora.r={LORA_R}", f"lora.alpha={LORA_ALPHA}",
        f"lora.targets={json.dumps(TARGETS)}", f"train.epochs={epochs}", f"seed={seed}", *overrides,
    ])
    outcome = train(cfg, console=Console(stderr=True, quiet=True), callbacks=tuple(callbacks))
    from chattune.model.load import load_tokenizer

    s = outcome.summary
    return {"seconds": s["seconds"], "tokens": s["tokens"], "trained_tokens": s["trained_tokens"],
            "precision": s["precision"], "model": outcome.model, "tokenizer": load_tokenizer(cfg.model)}
