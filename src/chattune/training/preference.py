"""Build TRL's preference trainers (DPOTrainer, KTOTrainer, ORPOTrainer) on chattune's encoded pairs.

The losses, reference log-probabilities and reward metrics are TRL's own. Two things are ours:
the rows arrive tokenized by data/preference_encode.py (SFT's template, mask and truncation rules),
so each trainer's own tokenization is bypassed; and the trainers count tokens like SFT's, so
metrics.jsonl has the same throughput fields. The reference model is the policy's own adapter
setting: TRL keeps a frozen copy of the starting adapter ("ref", a few MB; the base itself when the
adapter starts at zero), so no second model is loaded. Not here: data, run dir, callbacks.
"""

from __future__ import annotations

from chattune.training.speed import batch_tokens

STAGES = ("dpo", "orpo", "kto")
REFERENCE_ADAPTER = "ref"  # TRL's name for the frozen copy of the starting adapter


def trl_classes(stage: str):
    """(trainer class, its TrainingArguments subclass) for `stage`, with chattune's counting mixed in."""
    if stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        return _pretokenized(DPOTrainer, _passthrough), DPOConfig
    if stage == "kto":
        from trl import KTOConfig, KTOTrainer

        return _pretokenized(KTOTrainer, _with_kl_completions), KTOConfig
    if stage == "orpo":
        import warnings

        with warnings.catch_warnings():  # "experimental": the only place TRL 1.x keeps ORPO
            warnings.simplefilter("ignore")
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        trainer = type("ChattuneORPOTrainer", (_Counting, ORPOTrainer), {"tokenize_row": _orpo_row})
        return trainer, ORPOConfig
    raise ValueError(f"unknown preference stage {stage!r}; allowed: {', '.join(STAGES)}")


def stage_arguments(train_cfg, max_length: int) -> tuple[type, dict]:
    """(TRL's TrainingArguments subclass of train.stage, its own fields): beta, and max_length, which
    the encoded rows already fit (data/preference_encode.py), so TRL's truncation never cuts."""
    fields = {"beta": train_cfg.beta, "max_length": max_length}
    if train_cfg.stage != "orpo":
        fields["precompute_ref_log_probs"] = False  # the reference adapter runs beside the policy
    return trl_classes(train_cfg.stage)[1], fields


class _Counting:
    """Token counts and the loss path as CountingTrainer has them: real tokens, trained (completion) tokens."""

    counter = None  # a training.counting_trainer.TokenCounter, set after construction

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.counter is not None:
            self.counter.local[0] += _real_tokens(inputs)
            self.counter.local[1] += _completion_tokens(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self.counter is not None:
            from chattune.training import distributed

            self.counter.sync(distributed.sum_over_ranks)
        super().log(logs, *args, **kwargs)


def _real_tokens(inputs: dict) -> int:
    """Non-pad tokens of the sequences trained on: DPO/KTO's attention_mask, ORPO's chosen_ and rejected_ ones."""
    if "attention_mask" in inputs:
        return batch_tokens(inputs)
    return int(sum(inputs[f"{side}_attention_mask"].sum() for side in ("chosen", "rejected")))


def _completion_tokens(inputs: dict) -> int:
    """Answer tokens scored: DPO/KTO's completion_mask, ORPO's labelled positions."""
    if "completion_mask" in inputs:
        return int(inputs["completion_mask"].sum())
    return int(sum((inputs[f"{side}_labels"] != -100).sum() for side in ("chosen", "rejected")))


def _pretokenized(trainer_class, prepare):
    return type(f"Chattune{trainer_class.__name__}", (_Counting, trainer_class), {"_prepare_dataset": prepare})


def _passthrough(self, dataset, processing_class, args, dataset_name):
    """DPO: the rows are TRL's `prompt_ids` / `chosen_ids` / `rejected_ids` already."""
    return dataset


def _with_kl_completions(self, dataset, processing_class, args, dataset_name):
    """KTO: TRL's KL estimate pairs each prompt with another row's completion, rotated by one within each
    batch, as KTOTrainer._prepare_dataset does after its tokenization."""
    if not self.calculate_KL:
        return dataset

    def rotate(batch):
        batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
        return batch

    return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


def _orpo_row(self, feature, model=None) -> dict:
    """ORPO: the fields its tokenize_row would make, from chattune's ids (prompt positions unlabelled)."""
    prompt = feature["prompt_ids"]
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        ids = prompt + feature[f"{side}_ids"]
        row.update({f"{side}_input_ids": ids, f"{side}_attention_mask": [1] * len(ids),
                    f"{side}_labels": [-100] * len(prompt) + feature[f"{side}_ids"]})
    return row


def as_datasets(rows: list[dict]):
    """A datasets.Dataset of the TRL columns (the `source` of each row stays in data_stats, not here)."""
    from datasets import Dataset

    return Dataset.from_list([{k: v for k, v in row.items() if k != "source"} for row in rows]) if rows else None


def build_preference_trainer(cfg, model, args, data, tokenizer, callbacks: list, counter):
    """TRL's trainer for cfg.train.stage on the encoded rows; `args` is already the stage's config class."""
    trainer_class, _ = trl_classes(cfg.train.stage)
    trainer = trainer_class(model=model, args=args, train_dataset=as_datasets(data.train),
                            eval_dataset=as_datasets(data.eval), processing_class=tokenizer, callbacks=callbacks)
    trainer.counter = counter
    return trainer


def without_reference_adapter(model):
    """The trained adapter alone, as SFT leaves it: TRL's frozen "ref" copy is dropped before saving."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)
        model.set_adapter("default")
    return model
