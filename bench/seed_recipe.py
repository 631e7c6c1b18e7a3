"""Contender (a): seed 000's recipe (Qwen1.5-7B-chat LoRA + SwanLab notebook), reproduced on CPU.

Faithful to seed 000: its `process_func` (hand-written ChatML prompt, answer + pad_token_id
appended as the "EOS" label, cut at MAX_LENGTH=384 which can cut that EOS off), its
LoraConfig (r 8, alpha 32, dropout 0.1, the seven projection names), HF Trainer with
per_device_train_batch_size=4, gradient_accumulation_steps=4, learning_rate=1e-4,
gradient_checkpointing=True (+ enable_input_require_grads, as the seed says), and
DataCollatorForSeq2Seq(padding=True). Departures, all forced by this machine or the bench:
fp32 weights (no GPU; the seed's bf16 load targets CUDA), no SwanLab callback, no
checkpoint saving, 1 epoch on the bench subset, and AutoTokenizer's default (fast)
tokenizer since transformers 5 has no separate slow one for this model.
"""

from __future__ import annotations

import time

from bench.common import LORA_ALPHA, LORA_DROPOUT, LORA_R, TARGETS


def process_func_factory(tokenizer):
    def process_func(example):  # seed 000, verbatim apart from the closure
        MAX_LENGTH = 384  # noqa: N806
        input_ids, attention_mask, labels = [], [], []
        instruction = tokenizer(
            f"<|im_start|>system\n现在你要扮演皇帝身边的女人--甄嬛<|im_end|>\n<|im_start|>user\n"
            f"{example['instruction'] + example['input']}<|im_end|>\n<|im_start|>assistant\n",
            add_special_tokens=False,
        )
        response = tokenizer(f"{example['output']}", add_special_tokens=False)
        input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.pad_token_id]
        attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.pad_token_id]
        if len(input_ids) > MAX_LENGTH:
            input_ids = input_ids[:MAX_LENGTH]
            attention_mask = attention_mask[:MAX_LENGTH]
            labels = labels[:MAX_LENGTH]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    return process_func


def run(model_path: str, train_rows: list[dict], out_dir: str, seed: int, epochs: float = 1, callbacks=()) -> dict:
    """Train; `epochs` (the quality bench: seed 000's 3) and extra TrainerCallbacks are the bench's."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    ds = Dataset.from_list(train_rows)
    tokenized_id = ds.map(process_func_factory(tokenizer), remove_columns=ds.column_names)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.enable_input_require_grads()  # the seed: needed with gradient_checkpointing
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules=TARGETS, inference_mode=False,
                        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT)
    model = get_peft_model(model, config)
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=4, gradient_accumulation_steps=4, logging_steps=10,
        num_train_epochs=epochs, learning_rate=1e-4, save_strategy="no", gradient_checkpointing=True,
        use_cpu=True, report_to="none", seed=seed, data_seed=seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=tokenized_id,
                      data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True), callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "tokens": sum(len(x) for x in tokenized_id["input_ids"]),
        "trained_tokens": sum(sum(t != -100 for t in x) for x in tokenized_id["labels"]),
        "precision": "fp32", "model": model, "tokenizer": tokenizer,  # seed 000 sets neither bf16 nor fp16
    }
