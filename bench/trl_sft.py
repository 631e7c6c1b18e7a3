"""Contender (b): TRL SFTTrainer with its defaults plus a peft LoRA of seed 000's shape.

Defaults of TRL 1.16's SFTConfig are kept (lr 2e-5, batch 8, bf16, gradient checkpointing,
padding, no packing, max_length 1024); only the output, the epoch count, the seed and
logging/saving are set, and one thing the CPU forces: TRL's bf16 default assumes bf16
hardware, so on a CPU without AMX/AVX512-BF16 (where chattune picks fp32) bf16 is turned
off too (as shipped it trained at ~5 tok/s on an AVX2-only EPYC, see bench/README.md);
`CHATTUNE_BENCH_TRL_AS_SHIPPED=1` keeps bf16 on regardless. Rows are given as
conversational prompt/completion pairs, so TRL's default loss covers the completion (the
answer and its end-of-turn) like the others.
"""

from __future__ import annotations

import os
import time

from bench.common import LORA_ALPHA, LORA_DROPOUT, LORA_R, SYSTEM, TARGETS


def to_prompt_completion(row: dict) -> dict:
    return {
        "prompt": [{"role": "system", "content": SYSTEM},
                   {"role": "user", "content": row["instruction"] + row.get("input", "")}],
        "completion": [{"role": "assistant", "content": row["output"]}],
    }


def run(model_path: str, train_rows: list[dict], out_dir: str, seed: int, epochs: float = 1, callbacks=()) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from chattune.model.load import cpu_has_fast_bf16

    bf16 = cpu_has_fast_bf16() or os.environ.get("CHATTUNE_BENCH_TRL_AS_SHIPPED") == "1"
    args = SFTConfig(output_dir=out_dir, num_train_epochs=epochs, seed=seed, data_seed=seed,
                     save_strategy="no", report_to="none", use_cpu=True, bf16=bf16)
    peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                             target_modules=TARGETS, task_type="CAUSAL_LM")
    dataset = Dataset.from_list([to_prompt_completion(r) for r in train_rows])
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=dataset, peft_config=peft_config,
                         callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    data = trainer.train_dataset
    if "labels" in data.column_names:
        trained = sum(sum(t != -100 for t in x) for x in data["labels"])
    else:  # no mask column: TRL trains every token
        trained = sum(len(x) for x in data["input_ids"])
    return {
        "seconds": seconds,
        "tokens": sum(len(x) for x in data["input_ids"]),
        "trained_tokens": trained,
        "model": trainer.model, "tokenizer": trainer.processing_class, "precision": "bf16" if bf16 else "fp32",
    }
