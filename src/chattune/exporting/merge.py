"""Export a run dir: load base + adapter, merge them as one model, write the HF folder's files.

The whole-model merge (`merge_and_unload`, as seed 001 does) holds the base in fp32; pipeline.py
uses it where shards.py cannot merge shard by shard (QLoRA, AdaLoRA, ...). A QLoRA run's base is
loaded in 4/8 bits as in training and dequantized to fp32 before the adapter goes on, so the
merge lands there. Both paths write the same non-weight files (write_model_files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chattune import rundir
from chattune.data.templates import stop_token_ids
from chattune.exporting import fidelity
from chattune.io import save_dir_atomic, write_json_atomic

HELD_OUT_LIMIT = 8  # prompts used by the gate
REPORT = "export_report.json"


class ExportError(ValueError):
    """An export that cannot or must not be written."""


@dataclass
class LoadedRun:
    run: rundir.RunDir
    cfg: object
    tokenizer: object
    model: object  # PeftModel (base + adapter); a plain model after merge()
    stop_ids: set[int] = field(default_factory=set)


def is_quantized_run(cfg) -> bool:
    """True for a QLoRA run: model.quantize loaded the base in 4 or 8 bits."""
    return cfg.model.quantize != "none"


def load_run(run_path: str | Path, dtype=None) -> LoadedRun:
    """Base + adapter on the CPU in `dtype` (default fp32); a QLoRA run's base quantized as in
    training, then dequantized to fp32."""
    import torch

    loaded = rundir.load_for_inference(run_path, device="cpu", dtype=dtype or torch.float32, dequantized=True)
    base = loaded.model.get_base_model()
    stops = stop_token_ids(loaded.tokenizer, getattr(base, "generation_config", None))
    return LoadedRun(loaded.run, loaded.cfg, loaded.tokenizer, loaded.model, stops)


def held_out_conversations(cfg, console=None) -> tuple[list[list[dict]], str]:
    """The run's eval data (re-derived from its config and seed) or the built-in prompt set."""
    from chattune.data.dataset import load_splits
    from chattune.data.formats import DataError

    if cfg.data.eval_ratio > 0 or getattr(cfg.data, "eval_path", None):
        try:
            _, eval_convs = load_splits(cfg.data, cfg.seed)
        except DataError as err:
            eval_convs = []
            if console:
                console.print(f"[yellow]note[/]: eval data not readable ({err}); using built-in prompts")
        if eval_convs:
            where = getattr(cfg.data, "eval_path", None) or cfg.data.path
            return [c.messages for c in eval_convs[:HELD_OUT_LIMIT]], f"the run's eval data ({where})"
    convs = fidelity.builtin_conversations()
    if cfg.data.system:
        convs = [[{"role": "system", "content": cfg.data.system}, *c] for c in convs]
    return convs, "built-in prompts"


def merge(loaded: LoadedRun) -> None:
    """Fold the adapter into the base weights in place (seed 001: merge_and_unload)."""
    loaded.model = loaded.model.merge_and_unload()
    loaded.model.eval()


def generation_config_for(model, tokenizer, stop_ids: set[int]):
    """The model's generation config with every end-of-turn id as EOS and a pad id."""
    import copy

    gen = copy.deepcopy(model.generation_config)
    ids = sorted(stop_ids)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    return gen


def training_tokenizer(loaded: LoadedRun):
    """The run's tokenizer carrying the exact chat template used in training."""
    template_file = loaded.run.path / rundir.TEMPLATE
    if template_file.is_file() and template_file.read_text(encoding="utf-8").strip():
        loaded.tokenizer.chat_template = template_file.read_text(encoding="utf-8")
    return loaded.tokenizer


def write_hf_folder(loaded: LoadedRun, out_dir: Path, report: dict) -> None:
    """Save merged weights (safetensors, sharded like save_pretrained), tokenizer, training chat
    template, generation config."""
    model, tokenizer = loaded.model, training_tokenizer(loaded)
    model.generation_config = generation_config_for(model, tokenizer, loaded.stop_ids)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        write_model_files(tmp, tokenizer)
        write_json_atomic(tmp / REPORT, report)

    save_dir_atomic(out_dir, write)


def write_model_files(folder: Path, tokenizer, config=None, generation_config=None) -> None:
    """Tokenizer and training chat template, plus config.json / generation_config.json if given
    (save_pretrained writes those two with the weights)."""
    if config is not None:
        config.save_pretrained(folder)
    if generation_config is not None:
        generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / rundir.TEMPLATE).write_text(tokenizer.chat_template or "", encoding="utf-8")
