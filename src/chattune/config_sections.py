"""The sections of a run's config (model, data, lora, train): typed fields, defaults, bounds.

Each section is a pydantic model that refuses unknown keys and checks its own values; the
whole RunConfig, YAML loading, overrides and error wording live in config.py.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_MODEL = "builtin:smollm2-135m-instruct"
BUILTIN_DATA = "builtin:self-cognition"


INT_LIMIT = 2**63 - 1  # a larger whole number overflows torch and numpy (an int64) wherever it goes


class Section(BaseModel):
    """A config section: unknown keys, wrong types, inf/nan and integers past int64 are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # lr=inf: refused

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int64(cls, value):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
            raise ValueError(f"a whole number of at most {INT_LIMIT} in size")
        return value


class ModelConfig(Section):
    """The base model, its tokenizer and how its frozen weights load."""

    name: str = Field(
        BUILTIN_MODEL, description="local folder, hub id, modelscope:ORG/NAME (extra chattune[modelscope]) or builtin:NAME"
    )
    tokenizer: str | None = Field(None, description="take the tokenizer from another model (seed 003's OpenELM)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of model.name")
    trust_remote_code: bool = Field(False, description="run the model repo's own code (custom architectures)")
    quantize: Literal["none", "4bit", "8bit"] = Field(
        "none", description="load the frozen base in 4-bit or 8-bit with bitsandbytes (QLoRA); none: full precision"
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (model.quantize=4bit)")
    double_quant: bool = Field(True, description="also quantize the 4-bit block scales (model.quantize=4bit)")
    adapter: str | None = Field(
        None, description="start from this run dir's (or adapter folder's) adapter, e.g. DPO after SFT"
    )


class DataSource(Section):
    """One file of a mix (data.sources)."""

    path: str = Field(description="JSON/JSONL/CSV/Parquet file or a datasets.save_to_disk folder")
    weight: float = Field(1.0, gt=0, description="examples taken = rows x weight (2: twice, 0.5: a seeded half)")


RETRIEVERS = ("bm25",)  # data/retrieval.py: RETRIEVER_BUILDERS


class RetrievalConfig(Section):
    """Retrieval-augmented prompts (data.retrieval): the k nearest labelled examples go into {examples}."""

    corpus: str | None = Field(None, description="labelled rows to retrieve from; default: the training file (data.path)")
    k: int = Field(3, gt=0, le=32, description="examples put into each prompt")
    field: str | None = Field(
        None, description="the text column to search with; default: the first column data.prompt names"
    )
    label: str | None = Field(None, description="the label column of the corpus; default: data.response")
    retriever: Literal["bm25"] = Field(
        "bm25", description="bm25: words and CJK character unigrams+bigrams (bench/README.md: retrieval)"
    )
    example: str = Field("{text} => {label}", description="how one retrieved example is written ({text}, {label})")
    header: str = Field("Labelled examples of similar texts:", description="the line above the examples ('' for none)")

    @field_validator("example")
    @classmethod
    def _example_names_both(cls, value: str) -> str:
        if "{text}" not in value or "{label}" not in value:
            raise ValueError("data.retrieval.example must contain {text} and {label}")
        return value


class DataConfig(Section):
    """What to train on and how rows become trained tokens (docs/data.md)."""

    path: str = Field(
        BUILTIN_DATA, description="JSON/JSONL/CSV/Parquet file, datasets.save_to_disk folder, or builtin:self-cognition"
    )
    sources: list[DataSource] | None = Field(
        None, description="several files mixed, [{path, weight}], used instead of data.path"
    )
    eval_path: str | None = Field(None, description="eval data from this file (instead of data.eval_ratio)")
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = Field("auto", description="row shape; auto detects per row")
    columns: dict[str, str] | None = Field(
        None, description="rename file columns to ours, e.g. {instruction: en_instruction, output: en_output}"
    )
    prompt: str | None = Field(None, description="task conversion: user prompt from columns, e.g. '文本:{text}'")
    response: str | None = Field(None, description="task conversion: the answer column (with data.prompt)")
    template: str = Field(
        "auto", description="'auto' (the tokenizer's own), chatml, llama2, llama3, baichuan2, plain, alpaca, or a .jinja file"
    )
    mask: Literal["assistant", "last", "all"] = Field(
        "assistant", description="train on all assistant turns, the last one only, or every token"
    )
    system: str | None = Field(None, description="system prompt added to rows that have none (seed 000 plays 甄嬛 with one)")
    max_length: int = Field(384, gt=8, description="tokens per example after templating")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="over-long examples: truncate (earliest rounds first) or drop; both counted"
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="a bad row stops training (raise) or is skipped, counted and reported (skip)"
    )
    eval_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="share of rows held out for eval loss (seeded split)")
    name: str = Field("Chattune Assistant", description="assistant name for builtin:self-cognition")
    author: str = Field("the chattune team", description="assistant author for builtin:self-cognition")
    size: int = Field(48, gt=0, description="conversations drawn for builtin:self-cognition")
    replay: int = Field(0, ge=0, description="general rows (built-in replay split, cycled past 64) mixed into training")
    retrieval: RetrievalConfig | None = Field(
        None, description="put the k most similar labelled rows into {examples} of data.prompt (docs/data.md)"
    )

    @model_validator(mode="after")
    def _task_conversion_needs_both(self):
        if bool(self.prompt) != bool(self.response):
            raise ValueError("task conversion needs both data.prompt and data.response (the answer column)")
        if self.retrieval and "{examples}" not in (self.prompt or ""):
            raise ValueError("data.retrieval needs data.prompt with an {examples} placeholder (and data.response)")
        if self.sources and self.path != BUILTIN_DATA:
            raise ValueError("give data.path or data.sources, not both")
        return self


LORA_INITS = ("default", "gaussian", "pissa", "olora")
# train.optim values: TrainingArguments optimizer names chattune passes through
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop",
    "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "lion_32bit",
    "paged_lion_8bit", "paged_lion_32bit", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
)


class LoraConfig(Section):
    """The adapter: rank, scaling, method, initialisation, target layers (docs/training.md)."""

    r: int = Field(8, gt=0, description="LoRA rank (AdaLoRA: the initial rank)")
    alpha: float = Field(32, gt=0, description="LoRA scaling: updates are scaled by alpha/r (rslora: alpha/sqrt(r))")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="dropout on the LoRA input; 0 skips peft's dropout copy of every input (1.3x faster, bench/README.md)",
    )
    targets: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' (every linear layer but the LM head, found by layer type) or module "
        "names; a name matching nothing is an error listing the model's linear layers"
    )
    method: Literal["lora", "adalora", "dora", "rslora"] = Field(
        "lora", description="lora, adalora (rank budget pruned during training), dora (weight-decomposed), "
        "rslora (scaling alpha/sqrt(r))"
    )
    init: str = Field(
        "default", description="LoRA init: default, gaussian, pissa, pissa_niter_N (fast SVD), olora"
    )
    adalora_target_r: int | None = Field(
        None, gt=0, description="AdaLoRA: average rank kept at the end (lora.r is the initial rank); default 2/3 of lora.r"
    )
    adalora_tinit: int = Field(0, ge=0, description="AdaLoRA: steps before the rank budget starts shrinking")
    adalora_tfinal: int = Field(0, ge=0, description="AdaLoRA: last steps trained with the final ranks fixed")
    adalora_delta_t: int = Field(1, gt=0, description="AdaLoRA: steps between two budget allocations")

    @field_validator("init")
    @classmethod
    def _known_init(cls, value: str) -> str:
        if value in LORA_INITS or re.fullmatch(r"pissa_niter_[1-9][0-9]*", value):
            return value
        raise ValueError(f"use one of {', '.join(LORA_INITS)} or pissa_niter_N (N >= 1)")

    @model_validator(mode="after")
    def _method_fits(self):
        fields = type(self).model_fields
        adalora_keys = [k for k in fields if k.startswith("adalora_") and getattr(self, k) != fields[k].default]
        if self.method != "adalora" and adalora_keys:
            raise ValueError(f"{', '.join('lora.' + k for k in adalora_keys)}: AdaLoRA keys, used only with lora.method=adalora")
        if self.method == "dora" and (self.init.startswith("pissa") or self.init == "olora"):
            raise ValueError(
                f"lora.method=dora with lora.init={self.init}: peft cannot convert such an adapter back to one "
                "for the original base weights (its magnitudes are lost); use lora or rslora with this init"
            )
        if self.method == "adalora":
            if self.init != "default":
                raise ValueError("lora.method=adalora has its own initialisation; leave lora.init=default")
            if self.adalora_target_r is not None and self.adalora_target_r > self.r:
                raise ValueError(
                    f"lora.adalora_target_r={self.adalora_target_r} exceeds lora.r={self.r} (AdaLoRA's initial rank)"
                )
        return self

    def final_rank(self) -> int:
        """AdaLoRA's target average rank: the set value, else 2/3 of the initial rank (peft's 12 -> 8)."""
        return self.adalora_target_r or max(1, self.r * 2 // 3)


class TrainConfig(Section):
    """How the adapter is trained: schedule, precision, speed, evaluation, checkpoints, processes."""

    stage: Literal["sft", "dpo", "orpo", "kto"] = Field(
        "sft", description="sft, or preference tuning by TRL's trainers: dpo, orpo, kto (docs/preference.md)"
    )
    beta: float = Field(0.1, gt=0, description="dpo/kto: strength of the reference-model penalty; orpo: its lambda")
    epochs: float = Field(3, gt=0, description="passes over the training data (fractions allowed)")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: use epochs)")
    lr: float | Literal["auto"] = Field(
        "auto", description="learning rate; auto: by model size, 2e-3 at 135M (measured) to 2e-4 at 7B (training/defaults.py)"
    )
    batch_size: int = Field(4, gt=0, description="examples per micro-batch and process")
    grad_accum: int = Field(4, gt=0, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="share of the steps with the lr warming up")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="lr schedule after warmup"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the adapter weights")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping by global norm")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CPUs with AMX/AVX512-BF16 and bf16 GPUs, fp16 on older GPUs, else fp32"
    )
    logging_steps: int = Field(1, gt=0, description="log loss, lr, grad norm and tokens/s every N steps (metrics.jsonl)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward (seed 000's setting): less memory, slower steps"
    )
    optim: str = Field(
        "adamw_torch", description="TrainingArguments optimizer, e.g. adamw_torch, adamw_bnb_8bit, paged_adamw_8bit, "
        "paged_adamw_32bit, lion_8bit; "
        "stepped once on the device before the model loads"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU")
    # speed (issue 6; measured in bench/README.md)
    packing: bool = Field(True, description="padding-free batches (one row, position_ids); false: pad each batch")
    skip_prompt_logits: bool = Field(
        True, description="compute LM-head logits only where the next token is trained (same loss, less work)"
    )
    micro_batch_tokens: int | Literal["auto"] = Field(
        "auto", description="run each micro-batch as pieces of whole examples of at most this many tokens: same "
        "gradients, peak memory bounded by the budget (training/token_budget.py); 0: no limit; auto: 384 on CPU, 0 on GPU"
    )
    base_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="dtype of the frozen base weights; auto: bf16 when train.precision is bf16, else fp32 "
        "(LoRA weights stay fp32)"
    )
    compile: bool = Field(False, description="torch.compile the model (pays minutes of compile; long runs only)")
    mmap_threshold_kb: int | Literal["auto"] = Field(
        "auto", description="glibc: tensors above this many KiB get their own mapping, so freed activations leave RSS "
        "(lower peak RSS, fewer tokens/s: training/memory.py); 0 keeps the C library's default; auto: 1024 for a "
        "quantized base (model.quantize), else 0"
    )
    # tracking and in-training evaluation (issue 5)
    tracking: Literal["none", "swanlab", "tensorboard"] | list[Literal["none", "swanlab", "tensorboard"]] = Field(
        "none", description="experiment tracker(s), logged inside the run dir: none, swanlab, tensorboard or a list"
    )
    swanlab_mode: Literal["auto", "local", "offline", "cloud"] = Field(
        "auto", description="auto: cloud if SWANLAB_API_KEY is set, else local (with swanboard) or offline"
    )
    swanlab_project: str = Field("chattune", description="SwanLab project name")
    eval_every: int | None = Field(
        None, gt=0, description="evaluate train.metric every N steps (needs eval data; null: eval loss each epoch when "
        "there is eval data); the deprecated train.eval_steps is read as this key"
    )
    metric: Literal["loss", "exact", "accuracy", "rouge", "stop_rate"] = Field(
        "loss", description="metric that picks the best adapter and drives patience: loss or a generation metric"
    )
    eval_samples: int = Field(32, gt=0, description="held-out conversations scored by generation metrics")
    eval_max_new_tokens: int = Field(64, gt=0, description="longest generated answer during in-training eval")
    labels: list[str] | None = Field(None, description="allowed labels for accuracy (default: the distinct eval answers)")
    patience: int | None = Field(None, gt=0, description="stop after N evaluations without improvement of train.metric")
    forgetting: bool = Field(True, description="score base vs fine-tuned on built-in general rows (training/forgetting.py)")
    # checkpoints and resume (issues 7, 8)
    save_every: int | None = Field(
        50, gt=0, description="resumable checkpoint every N steps and at the end (null: only on Ctrl-C/SIGTERM)"
    )
    keep_checkpoints: int = Field(2, gt=0, description="newest complete checkpoints kept in RUN_DIR/checkpoints")
    # several processes (issue 7): presets in configs/distributed/, used under torchrun / accelerate launch
    fsdp: str | None = Field(
        None, description="FSDP config file (YAML/JSON, e.g. configs/distributed/fsdp.yaml): shard weights over processes"
    )
    deepspeed: str | None = Field(
        None, description="DeepSpeed config JSON (e.g. configs/distributed/zero2.json, zero3.json); needs deepspeed"
    )

    @model_validator(mode="before")
    @classmethod
    def _eval_steps_is_eval_every(cls, data):
        """train.eval_steps (deprecated: train.eval_every alone sets the interval) is read as train.eval_every."""
        if not isinstance(data, dict) or "eval_steps" not in data:
            return data
        data = dict(data)
        steps = data.pop("eval_steps")
        if steps is None:  # every config.yaml a run dir kept before this change holds eval_steps: null
            return data
        if data.get("eval_every") is None:
            data["eval_every"] = steps
            message = (f"train.eval_steps is deprecated and read as train.eval_every={steps}; write train.eval_every "
                       "(it evaluates train.metric, keeps the best adapter and needs held-out data)")
        else:
            message = (f"train.eval_steps={steps} is deprecated and ignored: train.eval_every="
                       f"{data['eval_every']} sets the evaluation interval")
        warnings.warn(message, FutureWarning, stacklevel=2)
        return data

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("give a positive number of optimizer steps, or -1 to train by train.epochs")
        return value

    @field_validator("lr", mode="before")
    @classmethod
    def _positive_lr_or_auto(cls, value):
        """One clear error for the float-or-auto union, not one per member."""
        if value == "auto":
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError("give a learning rate (a number greater than 0) or auto") from None
        if not (math.isfinite(number) and number > 0):
            raise ValueError("a learning rate must be a finite number greater than 0 (or auto)")
        return number

    @field_validator("optim")
    @classmethod
    def _known_optim(cls, value: str) -> str:
        if value not in OPTIMIZERS:
            raise ValueError(f"use one of {', '.join(OPTIMIZERS)}")
        return value

    @field_validator("micro_batch_tokens", "mmap_threshold_kb")
    @classmethod
    def _auto_or_not_negative(cls, value, info):
        if value != "auto" and value < 0:
            unit = {"micro_batch_tokens": "a token count (0: no limit)",
                    "mmap_threshold_kb": "a size in KiB (0: the C library's default)"}[info.field_name]
            raise ValueError(f"use {unit} or auto")
        return value

    @model_validator(mode="after")
    def _one_engine(self):
        if self.fsdp and self.deepspeed:
            raise ValueError("give train.fsdp or train.deepspeed, not both")
        return self

    @model_validator(mode="after")
    def _preference_scores_loss(self):
        if self.stage != "sft" and self.metric != "loss":
            raise ValueError(f"train.stage={self.stage} evaluates its loss and rewards on held-out pairs; "
                             f"train.metric={self.metric} is a generation metric of SFT (use train.metric=loss)")
        return self
