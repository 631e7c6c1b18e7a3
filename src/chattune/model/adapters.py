"""Attach the run's adapter with peft: LoRA, rsLoRA, DoRA or AdaLoRA, on the targets it names.

Targets: 'all-linear' finds every linear layer but the output head by module type (nn.Linear,
bitsandbytes Linear4bit / Linear8bitLt), so no architecture's layer names are assumed; explicit
names are checked against the model, and a name that matches nothing is an error listing the
model's linear layers. PiSSA and OLoRA rewrite the base weights at init (W_res = W - BA), so
the initial adapter is kept (`init_adapter/`) and every adapter saved for the run dir is
converted by peft into a plain LoRA adapter (rank 2r) that applies to the original base.
Not here: AdaLoRA's per-step budget update (train/methods.py) and quantization (quant.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from chattune import rundir

HEAD_NAMES = {"lm_head", "output", "embed_out", "score", "classifier"}
LINEAR_TYPES = ("Linear4bit", "Linear8bitLt")  # bitsandbytes' layers (no import needed)
INIT_ADAPTER = "init_adapter"


def find_linear_targets(model) -> list[str]:
    """Short names of every linear layer except the output head (seed 001's idea, any model)."""
    import torch

    names = set()
    head = model.get_output_embeddings()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in LINEAR_TYPES:
            short = full_name.rsplit(".", 1)[-1]
            if short not in HEAD_NAMES and module is not head:
                names.add(short)
    if not names:
        raise ValueError("no linear layers found to adapt; set lora.targets explicitly")
    return sorted(names)


def resolve_targets(model, targets) -> list[str]:
    """The module names to adapt; an explicit name must match a module the way peft matches it."""
    if targets == "all-linear":
        return find_linear_targets(model)
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(
            f"lora.targets: {', '.join(missing)} match no module of {type(model).__name__}; "
            f"its linear layers are: {', '.join(find_linear_targets(model))}"
        )
    return list(targets)


def rewrites_base(lora_cfg) -> bool:
    return lora_cfg.init.startswith("pissa") or lora_cfg.init == "olora"


def peft_config(lora_cfg, targets: list[str], total_steps: int | None = None):
    """peft's config for lora.method / lora.init; AdaLoRA needs the run's optimizer steps."""
    from peft import AdaLoraConfig, LoraConfig, TaskType

    common = {
        "task_type": TaskType.CAUSAL_LM,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        "target_modules": targets,
    }
    if lora_cfg.method == "adalora":
        return AdaLoraConfig(
            **common, init_r=lora_cfg.r, target_r=lora_cfg.final_rank(), tinit=lora_cfg.adalora_tinit,
            tfinal=lora_cfg.adalora_tfinal, deltaT=lora_cfg.adalora_delta_t, total_step=total_steps,
        )
    return LoraConfig(
        **common, r=lora_cfg.r, use_dora=lora_cfg.method == "dora", use_rslora=lora_cfg.method == "rslora",
        init_lora_weights=True if lora_cfg.init == "default" else lora_cfg.init,
    )


def attach_lora(model, lora_cfg, total_steps: int | None = None, init_dir: Path | None = None):
    """The PeftModel to train; with PiSSA/OLoRA the initial adapter is saved to `init_dir`."""
    from peft import get_peft_model

    targets = resolve_targets(model, lora_cfg.targets)
    model = get_peft_model(model, peft_config(lora_cfg, targets, total_steps))
    if rewrites_base(lora_cfg) and init_dir is not None:
        save_initial_adapter(model, Path(init_dir))
    return model


def save_initial_adapter(model, init_dir: Path) -> None:
    config = model.peft_config["default"]
    chosen, config.init_lora_weights = config.init_lora_weights, True  # load back as weights, no new SVD
    try:
        rundir.save_dir_atomic(init_dir, model.save_pretrained)
    finally:
        config.init_lora_weights = chosen
    model.chattune_init_adapter = str(init_dir)


def adapter_writer(model):
    """`write(folder)` saving the adapter for the run dir: a plain LoRA adapter on the original base."""
    init_dir = getattr(model, "chattune_init_adapter", None)
    if init_dir is None:
        return model.save_pretrained

    def write(folder, **kwargs):
        with warnings.catch_warnings():  # "PiSSA changes the base weights": peft's warning while it converts
            warnings.filterwarnings("ignore", message=r"(PiSSA|OLoRA) changes the base weights")
            model.save_pretrained(folder, path_initial_model_for_weight_conversion=init_dir, **kwargs)

    return write


def count_parameters(model) -> tuple[int, int]:
    def size(p) -> int:  # DeepSpeed ZeRO-3 leaves an empty tensor per rank and keeps the real size aside
        return getattr(p, "ds_numel", None) or p.numel()

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for p in model.parameters())
    return trainable, total
