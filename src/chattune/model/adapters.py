"""Attach LoRA adapters with peft; discover target modules when asked for all-linear."""

from __future__ import annotations

HEAD_NAMES = {"lm_head", "output", "embed_out", "score", "classifier"}


def find_linear_targets(model) -> list[str]:
    """Short names of every linear layer except the output head (seed 001's idea, any model)."""
    import torch

    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            short = full_name.rsplit(".", 1)[-1]
            if short not in HEAD_NAMES and module is not model.get_output_embeddings():
                names.add(short)
    if not names:
        raise ValueError("no linear layers found to adapt; set lora.targets explicitly")
    return sorted(names)


def attach_lora(model, lora_cfg):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = find_linear_targets(model) if lora_cfg.targets == "all-linear" else list(lora_cfg.targets)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
    )
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
