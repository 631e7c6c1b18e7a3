"""Attach the run's adapter with peft: LoRA, rsLoRA, DoRA or AdaLoRA, on the targets it names.

Targets: 'all-linear' finds every linear layer but the output head by module type (nn.Linear,
bitsandbytes Linear4bit / Linear8bitLt), so no architecture's layer names are assumed; explicit
names are checked against the model, and a name that matches nothing is an error listing the
model's linear layers. PiSSA and OLoRA rewrite the base weights at init (W_res = W - BA), so
the initial adapter is kept (`init_adapter/`) and every adapter saved for the run dir is
converted by peft into a plain LoRA adapter (rank 2r) that applies to the original base.
Not here: AdaLoRA's per-step budget update (training/methods.py) and quantization (quant.py).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from chattune.io import save_dir_atomic, write_checksums

if TYPE_CHECKING:
    from chattune import config

HEAD_NAMES = {"lm_head", "output", "embed_out", "score", "classifier"}
LINEAR_TYPES = ("Linear4bit", "Linear8bitLt")  # bitsandbytes' layers (no import needed)


def find_linear_targets(model) -> list[str]:
    """Short names of every linear layer except the output head (seed 001's idea, any model).

    Kept instead of passing peft's target_modules="all-linear" (peft 0.21): both adapt the same
    layers (measured on tiny Llama, Qwen2 and GPT-NeoX, tied and untied: no head adapted), but
    peft records full module names in the adapter config when a model has fewer than 20 linear
    layers (model.layers.0.mlp.down_proj, ...; short names from 20 up), which
    tests/test_architectures.py::test_trains_with_discovered_and_explicit_targets checks against;
    and an explicit name that matches nothing is answered with this list (resolve_targets).
    """
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


def refuse_tied_embedding_targets(model, targets: list[str]) -> None:
    """A LoRA on the input embedding of a model whose LM head shares that weight cannot be exported.

    Training adapts the embedding lookup only, while merging adds the delta to the one shared
    weight, so the merged head changes too: on the built-in model (tied) the export gate measured
    max |logit diff| 5.86 and 67% greedy agreement. Refused before training, with the reason.
    """
    import torch

    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
        or bool(getattr(model.config, "tie_word_embeddings", False)))
    if not tied:
        return
    embeddings = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Embedding)
                  and any(name == t or name.endswith("." + t) for t in targets)]
    if embeddings:
        raise ValueError(
            f"lora.targets: {', '.join(embeddings)} is the input embedding of {type(model).__name__}, whose LM head "
            "shares its weight (tie_word_embeddings); a LoRA there trains the lookup only, but a merged export "
            "would change the head as well. Leave it out of lora.targets (the linear layers learn the task)"
        )


def rewrites_base(lora_cfg: config.LoraConfig) -> bool:
    return lora_cfg.init.startswith("pissa") or lora_cfg.init == "olora"


def peft_config(lora_cfg: config.LoraConfig, targets: list[str], total_steps: int | None = None,
                token_rows: dict[str, list[int]] | None = None):
    """peft's config for lora.method / lora.init; AdaLoRA needs the run's optimizer steps.
    `token_rows`: embedding rows trained whole (model/vocab.py: markers a template added)."""
    from peft import AdaLoraConfig, LoraConfig, TaskType

    common = {
        "task_type": TaskType.CAUSAL_LM,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        "target_modules": targets,
        **({"trainable_token_indices": token_rows} if token_rows else {}),
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


def attach_lora(model, lora_cfg: config.LoraConfig, total_steps: int | None = None,
                init_dir: Path | None = None, new_token_ids: list[int] | None = None):
    """The PeftModel to train; with PiSSA/OLoRA the initial adapter is saved to `init_dir`.
    `new_token_ids`: tokens a template added, their rows trained as TrainableTokens (vocab.py)."""
    from peft import get_peft_model

    from chattune.model.vocab import save_without_embeddings, token_targets

    targets = resolve_targets(model, lora_cfg.targets)
    rows = token_targets(model, list(new_token_ids or []))
    model = get_peft_model(model, peft_config(lora_cfg, targets, total_steps, rows))
    save_without_embeddings(model)
    if rewrites_base(lora_cfg) and init_dir is not None:
        save_initial_adapter(model, Path(init_dir))
    return model


def save_initial_adapter(model, init_dir: Path) -> None:
    config = model.peft_config["default"]
    chosen, config.init_lora_weights = config.init_lora_weights, True  # load back as weights, no new SVD
    try:
        save_dir_atomic(init_dir, model.save_pretrained)
    finally:
        config.init_lora_weights = chosen
    model.chattune_init_adapter = str(init_dir)


def adapter_writer(model):
    """`write(folder)` saving the adapter for the run dir: a plain LoRA adapter on the original base."""
    from chattune.model.vocab import saves_token_rows

    init_dir = getattr(model, "chattune_init_adapter", None)
    conversion = {"path_initial_model_for_weight_conversion": init_dir} if init_dir is not None else {}
    if saves_token_rows(model):  # new rows are saved as TrainableTokens, not as embedding copies
        conversion["save_embedding_layers"] = False

    def write(folder, **kwargs):
        with warnings.catch_warnings(), quiet_pruned_ranks(model):
            # "PiSSA changes the base weights": peft's warning while it converts
            warnings.filterwarnings("ignore", message=r"(PiSSA|OLoRA) changes the base weights")
            model.save_pretrained(folder, **conversion, **kwargs)
        write_checksums(Path(folder))  # chat, eval, export and serve check them before loading

    return write


@contextlib.contextmanager
def quiet_pruned_ranks(model):
    """peft's save warns "ZeRO-3 / FSDP shards were not gathered" at every zero-sized LoRA tensor;
    an AdaLoRA module whose rank was pruned to 0 is one (2-D, [0, in]) and saves whole, so the
    warning is silenced when AdaLoRA pruned some module to 0. Other zero-sized tensors still warn."""
    with warnings.catch_warnings():
        if ranks_pruned_to_zero(model):
            warnings.filterwarnings("ignore", message=r"Adapter .* LoRA tensor\(s\) have invalid shape")
        yield


def ranks_pruned_to_zero(model) -> int:
    """AdaLoRA modules whose rank the budget pruned to 0 (saved as [0, in] tensors); 0 for other methods."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    pattern = getattr(config, "rank_pattern", None) if type(config).__name__ == "AdaLoraConfig" else None
    return sum(1 for kept in (pattern or {}).values() if isinstance(kept, list) and not any(kept))


@contextlib.contextmanager
def quiet_adalora_rank_pattern():
    """Silence peft's ~10 KB warning that an AdaLoRA adapter's rank_pattern keys match no module.

    AdaLoRA's rank_pattern is keyed by `...lora_E` parameter names, not module names, so peft's
    generic target check warns about every key although AdaLoRA applies the pattern itself when
    the weights load (the reloaded adapter gives the trained outputs: tests/test_adapters.py).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The following rank_pattern keys did not match")
        yield


