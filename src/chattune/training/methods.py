"""Pre-flight checks and Trainer hooks for adapter methods, quantization and optimizers.

`preflight` runs after the data is read and before any weights load: bitsandbytes is present
when asked for, train.optim steps on this device, explicit lora.targets exist in the model's
module tree (read from its config on the meta device), and AdaLoRA's schedule fits the run's
optimizer steps. AdaLoRA then needs `update_and_allocate(step)` after every optimizer step and
before the gradients are zeroed; transformers' Trainer does not call it, `AdaLoraBudget` does.
`start_from_adapter` gives model.adapter: an earlier run's adapter, trained further (DPO after SFT).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from transformers import TrainerCallback

from chattune.config import ConfigError, LoraConfig, RunConfig, TrainConfig
from chattune.model.quant import require_bitsandbytes

TORCH_OPTIMIZERS = {"adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop"}


def total_optimizer_steps(train_cfg: TrainConfig, n_examples: int, world_size: int | None = None) -> int:
    """Optimizer steps of a run, counted the way transformers' Trainer counts them."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    batches = math.ceil(n_examples / (train_cfg.batch_size * world))
    per_epoch = max(batches // train_cfg.grad_accum + int(batches % train_cfg.grad_accum > 0), 1)
    return train_cfg.max_steps if train_cfg.max_steps > 0 else math.ceil(train_cfg.epochs * per_epoch)


def preflight(cfg: RunConfig, device: str, n_examples: int, console=None) -> int | None:
    """Refuse what cannot run before weights load; returns AdaLoRA's total steps (else None)."""
    if cfg.model.quantize != "none":
        require_bitsandbytes(f"model.quantize={cfg.model.quantize}")
    note = check_optimizer(cfg.train.optim, device)
    if note and console:
        console.print(f"[yellow]note[/]: {note}")
    if cfg.lora.targets != "all-linear":
        from chattune.model.adapters import refuse_tied_embedding_targets, resolve_targets
        from chattune.model.load import model_skeleton

        skeleton = model_skeleton(cfg.model)
        try:
            refuse_tied_embedding_targets(skeleton, resolve_targets(skeleton, cfg.lora.targets))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.lora.method != "adalora":
        return None
    steps = total_optimizer_steps(cfg.train, n_examples)
    check_adalora_schedule(cfg.lora, steps)
    return steps


def check_adalora_schedule(lora_cfg: LoraConfig, steps: int) -> None:
    if lora_cfg.adalora_tinit >= steps - lora_cfg.adalora_tfinal:
        raise ConfigError(
            f"lora.adalora_tinit={lora_cfg.adalora_tinit} + lora.adalora_tfinal={lora_cfg.adalora_tfinal} leave no "
            f"step of this run's {steps} optimizer steps for AdaLoRA to reallocate ranks; lower them or train longer"
        )


def check_optimizer(name: str, device: str) -> str | None:
    """Step train.optim once on a small tensor on `device`; a note for paged optimizers on CPU."""
    if name in TORCH_OPTIMIZERS:
        return None
    require_bitsandbytes(f"train.optim={name}")
    import torch
    from transformers import Trainer, TrainingArguments

    try:
        args = TrainingArguments(output_dir="unused", optim=name, use_cpu=device == "cpu", report_to="none")
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
        param = torch.nn.Parameter(torch.zeros(64, 128, device=device))  # >= 4096 values: the 8-bit path
        optimizer = optimizer_cls([param], **kwargs)
        param.grad = torch.ones_like(param)
        optimizer.step()
    except Exception as err:  # bitsandbytes raises many kinds; all mean "not on this device"
        raise ConfigError(
            f"train.optim={name} cannot run on {device} with the installed bitsandbytes "
            f"({type(err).__name__}: {err}); use adamw_torch"
        ) from None
    if "paged" in name and device == "cpu":
        return f"train.optim={name}: paging only exists on CUDA; on CPU bitsandbytes runs it unpaged"
    return None


class AdaLoraBudget(TrainerCallback):
    """Calls AdaLoRA's `update_and_allocate` after each optimizer step, before zero_grad."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        config = model.peft_config[model.active_adapter]
        if state.max_steps and state.max_steps != config.total_step:  # the Trainer's count wins
            if config.tinit >= state.max_steps - config.tfinal:
                raise ValueError(
                    f"AdaLoRA: the run has {state.max_steps} optimizer steps, too few for "
                    f"lora.adalora_tinit={config.tinit} and lora.adalora_tfinal={config.tfinal}"
                )
            model.base_model.rankallocator.set_total_step(state.max_steps)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)  # global_step: steps done before this one


def method_callbacks(lora_cfg: LoraConfig) -> list:
    return [AdaLoraBudget()] if lora_cfg.method == "adalora" else []


def adalora_orth_penalty(model):
    """AdaLoRA's orthogonality penalty: the mean over its P (lora_A) and Q (lora_B) of ||P P^T - I||_F.

    peft's AdaLoraModel.forward adds `orth_reg_weight` times this to the model's loss whenever
    labels are passed, so the logged and evaluated "loss" was cross-entropy plus a penalty of
    ~2.2 at init (P and Q start at std 0.02, far from orthonormal). chattune passes no labels to
    an AdaLoRA model, computes the cross-entropy itself and adds this term to the training loss
    only, so the cross-entropy is logged, compared and ranked (best / patience) on its own.
    """
    import torch

    name = model.base_model.trainable_adapter_name
    total, count = 0.0, 0
    for param_name, param in model.base_model.model.named_parameters():
        if ("lora_A" in param_name or "lora_B" in param_name) and name in param_name and param.numel():
            cov = param @ param.T if "lora_A" in param_name else param.T @ param
            total = total + torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype))
            count += 1
    return total / max(count, 1)


@dataclass
class PenaltyLog:
    """The penalty each micro-batch added to the logged loss, by optimizer step, since the last log."""

    terms: dict[int, float] = field(default_factory=dict)

    def add(self, step: int, value: float) -> None:
        self.terms[step] = self.terms.get(step, 0.0) + value

    def __bool__(self) -> bool:
        return bool(self.terms)

    def mean_per_step(self) -> float:
        mean = sum(self.terms.values()) / len(self.terms)
        self.terms.clear()
        return mean


def adalora_penalty_weight(model) -> float:
    return float(model.peft_config[model.base_model.trainable_adapter_name].orth_reg_weight)


def adalora_loss(trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
    """No labels reach peft (it would add its penalty to the loss): the cross-entropy is computed
    here, and the orthogonality penalty joins the training loss only, weighted once per optimizer step."""
    from chattune.training.distributed import token_average_scale
    from chattune.training.loss import masked_lm_loss, shifted_lm_loss

    if not model.training or return_outputs:
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        loss = shifted_lm_loss(outputs.logits, inputs["labels"])
        return (loss, outputs) if return_outputs else loss
    scaled = trainer.loss_is_scaled_for_ga = num_items_in_batch is not None  # else the Trainer divides by GA
    loss = masked_lm_loss(model, inputs, num_items_in_batch) * token_average_scale(trainer, num_items_in_batch)
    micro_batches = trainer.current_gradient_accumulation_steps
    share = adalora_orth_penalty(model) * adalora_penalty_weight(model) / micro_batches  # this micro-batch's part
    trainer.adalora_penalties.add(trainer.state.global_step, float(share.detach()))
    return loss + (share if scaled else share * micro_batches)  # unscaled: the Trainer divides by the micro-batches


def start_from_adapter(base, cfg):
    """The adapter of model.adapter (a run dir or an adapter folder) on `base`, trainable: DPO after SFT.

    Its base must be the run's model.name (checked before it loads), its files intact; lora.* does not
    apply (the adapter keeps its own rank and targets)."""
    from pathlib import Path

    from chattune import rundir
    from chattune.adapter_base import check_adapter_base
    from chattune.models import resolve_model

    source = Path(cfg.model.adapter)
    folder = source / rundir.ADAPTER if rundir.is_run_dir(source) else source
    if not (folder / "adapter_config.json").is_file():
        raise rundir.RunDirError(f"{cfg.model.adapter}: model.adapter is neither a run dir nor an adapter folder "
                                 "(no adapter_config.json)")
    check_adapter_base(folder, resolve_model(cfg.model.name, cfg.model.revision))
    return rundir.attach_adapter(base, folder, trainable=True)
