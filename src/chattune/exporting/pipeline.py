"""`chattune export`: load a run, measure base + adapter, merge, gate, write HF or GGUF.

An HF export merges shard by shard where it can (shards.py: the base is read one safetensors
shard at a time and the output keeps its shards and dtype); otherwise (QLoRA, AdaLoRA, ...:
the reason is printed) the whole model is merged in fp32 (merge.py). The gate compares the
artefact that will be shipped (the merged shards loaded back in their dtype, the merged model,
or the GGUF file loaded back with transformers) against base + adapter, both computed in fp32.
A failed gate raises ExportError before anything reaches OUT, unless `force` is set. OUT itself
is checked first (target.py: never a run dir or the base model, writable, a folder).
"""

from __future__ import annotations

import copy
import gc
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from chattune import rundir
from chattune.exporting import fidelity
from chattune.exporting.gguf_readback import load_gguf, merged_again, release_merged
from chattune.exporting.merge import (
    REPORT,
    ExportError,
    LoadedRun,
    generation_config_for,
    held_out_conversations,
    is_quantized_run,
    load_run,
    merge,
    training_tokenizer,
    write_hf_folder,
    write_model_files,
)
from chattune.exporting.shards import NotShardable, ShardPlan, merge_shards, plan_merge
from chattune.exporting.target import check_target, writing
from chattune.io import save_dir_atomic, write_json_atomic
from chattune.training.memory import trim_heap

# Default max |logit diff| per artefact: fp32 merges differ only by float rounding; f16
# weights round every weight to 11 significant bits; a bf16/fp16 HF export rounds each merged
# weight (W + dW) to 8 / 11 bits.
DEFAULT_TOLERANCE = {"hf": 1e-3, "hf-16": 0.5, "gguf-f32": 1e-3, "gguf-f16": 0.5}
# Quantized GGUF types are gated on the mean KL divergence (nats per position) of next-token
# distributions instead. Measured (bench/gguf_fidelity.py, built-in model, demo recipe 1 epoch, AMX
# Xeon 2026-12-03): q8_0 1.7e-3 (passes with 12x margin), q4_0 0.50 (refused: a 135M model loses too
# much in 4-bit blocks; larger models lose far less, and 0.15 still lets a clearly degraded file fail).
# K-quants (llama.cpp's quantizer, when installed) sit between them by bits per weight: the 4-bit types
# share q4_0's bar, 5 and 6 bits get bars between it and q8_0's.
KL_TOLERANCE = {"gguf-q8_0": 0.02, "gguf-q6_k": 0.05, "gguf-q5_k_m": 0.1, "gguf-q4_k_m": 0.15, "gguf-q4_0": 0.15}
# --gguf-type auto: smallest file first; the first type whose gate passes is written. K-quants join
# when llama-cpp-python is installed (exporting/llamacpp.py).
AUTO_ORDER = ("q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "f32")
DTYPES = ("fp32", "bf16", "fp16")  # --dtype of an HF export; default: the base's


@dataclass
class Check:
    """The held-out set and base + adapter's outputs on it, measured before merging."""

    conversations: list
    full: list
    prompts: list
    reference: fidelity.Outputs
    source: str

    def run(self, loaded: LoadedRun, model, tolerance: float, gate: str = "logits") -> fidelity.FidelityReport:
        outputs = fidelity.measure(model, self.full, self.prompts, loaded.stop_ids, loaded.tokenizer.pad_token_id)
        return fidelity.compare(self.reference, outputs, tolerance, self.source, gate)


def export_run(run_path, out, fmt: str = "hf", gguf_dtype: str = "auto", tolerance: float | None = None,
               force: bool = False, console: Console | None = None,
               dtype: str | None = None, ollama: bool = False) -> list[fidelity.FidelityReport]:
    """Export `run_path` to the folder `out`; returns the fidelity reports that were printed.

    `dtype` (fp32, bf16, fp16; HF only) is the output's weight type, default the base's.
    `ollama` (GGUF only): also write a Modelfile whose TEMPLATE renders as the training template.
    """
    console = console or Console(stderr=True)
    out = Path(out)
    if fmt not in ("hf", "gguf"):
        raise ExportError(f"unknown export format {fmt!r}; use hf or gguf")
    if fmt == "gguf":
        check_gguf_type(gguf_dtype)
    if ollama and fmt != "gguf":
        raise ExportError("--ollama writes a Modelfile for a GGUF file: add --format gguf")
    if dtype is not None and (fmt != "hf" or dtype not in DTYPES):
        raise ExportError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}, with --format hf "
                          "(GGUF: --gguf-dtype)")
    check_target(run_path, out, force)  # not a run dir or the base, writable: before the gate
    with writing(out):  # one export to OUT at a time; an interrupted one's temporaries removed
        if fmt == "hf":
            plan, why_whole = shard_plan(run_path)
            if plan is not None:
                return [_export_shards(run_path, plan, out, _torch_dtype(dtype), tolerance, force,
                                       console)]
            console.print(f"merging the whole model in fp32: {why_whole}", highlight=False)
        loaded = load_run(run_path)
        if fmt == "gguf":
            from chattune.exporting.gguf_writer import check_supported

            check_supported(loaded.model.get_base_model(), loaded.tokenizer)  # before the slow part
        check = _measure_reference(loaded, console)
        merge(loaded)
        if fmt == "hf":
            return [_write_whole_model(loaded, check, out, _torch_dtype(dtype), tolerance, force,
                                       console, why_whole)]
        merged = check.run(loaded, loaded.model, DEFAULT_TOLERANCE["hf"])
        _print(console, "merged", merged)
        _gate(merged, force)  # a GGUF of a broken merge is broken too
        if gguf_dtype == "auto":
            return [merged, _export_gguf_auto(loaded, check, out, tolerance, merged, force, console,
                                              ollama)]
        bar = _gguf_tolerance(gguf_dtype, tolerance)
        return [merged, _export_gguf(loaded, check, out, gguf_dtype, bar, merged, force, console, ollama)]


def check_gguf_type(dtype: str) -> None:
    """Refuse an unknown type, and a K-quant where llama.cpp's quantizer is not installed, before any work."""
    from chattune.exporting import llamacpp
    from chattune.exporting.gguf_writer import DTYPES

    if dtype in llamacpp.K_QUANTS and not llamacpp.available():
        raise ExportError(f"GGUF type {dtype} is made by llama.cpp's own quantizer: pip install "
                          "llama-cpp-python==0.3.36 (it compiles llama.cpp), or use q8_0 / q4_0")
    if dtype not in (*DTYPES, *llamacpp.K_QUANTS, "auto"):
        raise ExportError(f"GGUF type {dtype!r}: use auto or one of {', '.join([*DTYPES, *llamacpp.K_QUANTS])}")


def gguf_types_here() -> tuple[str, ...]:
    """AUTO_ORDER less the K-quants when llama-cpp-python is not installed."""
    from chattune.exporting import llamacpp

    return tuple(t for t in AUTO_ORDER if t not in llamacpp.K_QUANTS or llamacpp.available())


def _gguf_tolerance(dtype: str, tolerance: float | None) -> float:
    return {**DEFAULT_TOLERANCE, **KL_TOLERANCE}[f"gguf-{dtype}"] if tolerance is None else tolerance


def _export_gguf_auto(loaded, check: Check, out: Path, tolerance, merged, force, console, ollama):
    """--gguf-type auto: each type of AUTO_ORDER behind its own gate until one passes (with `force`, the
    last is written even when it fails); the types tried and why they were refused go in the report."""
    tried, order = [], gguf_types_here()
    for dtype in order:
        last = dtype == order[-1]
        try:
            return _export_gguf(loaded, check, out, dtype, _gguf_tolerance(dtype, tolerance), merged,
                                force and last, console, ollama, tried)
        except ExportError as err:
            if last:
                raise
            tried.append({"type": dtype, "refused": str(err).split("; nothing was written")[0]})
            console.print(f"[yellow]auto[/]: {dtype} refused by its gate; trying {order[order.index(dtype) + 1]}",
                          highlight=False)
    raise AssertionError("unreachable")


def _write_whole_model(loaded: LoadedRun, check: Check, out: Path, dtype, tolerance, force, console,
                       why: str) -> fidelity.FidelityReport:
    """The merged model cast to `dtype` (default the base's stored dtype), gated, then saved."""
    out_dtype = dtype or _stored_dtype(loaded.cfg)
    if out_dtype is not None:
        loaded.model.to(out_dtype)
    merged = check.run(loaded, loaded.model, _tolerance(tolerance, out_dtype))
    _print(console, "merged", merged)
    _gate(merged, force, out_dtype)
    write_hf_folder(loaded, out, {"merged": merged.to_dict(), "forced": force and not merged.passed,
                                  "merge": {"path": "whole model", "reason": why}})
    console.print(f"[green]wrote[/] {out} (merged HF model)")
    return merged


def shard_plan(run_path) -> tuple[ShardPlan | None, str]:
    """(plan, "") when the run's HF export can merge shard by shard, else (None, the reason)."""
    from chattune.models import resolve_model

    run = rundir.open_run_dir(run_path)
    rundir.check_adapter_intact(run.adapter)  # before its tensors are read
    cfg = run.config()
    if is_quantized_run(cfg):
        return None, "a QLoRA run merges into the dequantized weights its 4/8-bit layers computed with"
    if cfg.model.trust_remote_code:
        return None, "a remote-code model is saved with its code by save_pretrained"
    try:
        source = resolve_model(cfg.model.name, cfg.model.revision)
        return plan_merge(source, cfg.model.revision, run.adapter, tied_modules(cfg.model)), ""
    except NotShardable as err:
        return None, str(err)


def tied_modules(model_cfg) -> frozenset[str]:
    """Names of the input embedding and LM head when they share one weight (from a meta skeleton)."""
    from chattune.model.load import model_skeleton

    skeleton = model_skeleton(model_cfg)
    inputs, outputs = skeleton.get_input_embeddings(), skeleton.get_output_embeddings()
    if outputs is None or inputs is None or outputs.weight is not inputs.weight:
        return frozenset()
    return frozenset(name for name, module in skeleton.named_modules() if module is inputs or module is outputs)


def _export_shards(run_path, plan: ShardPlan, out: Path, dtype, tolerance, force, console) -> fidelity.FidelityReport:
    """Reference on the base in its own dtype, then merge shard by shard into a temp folder, load
    that back in the output dtype, gate it, and rename the folder to `out`."""
    loaded = load_run(run_path, dtype=plan.dtype)  # the base's exact weights, one model in memory
    check = _measure_reference(loaded, console)
    out_dtype = dtype or plan.dtype
    base, tokenizer = loaded.model.get_base_model(), training_tokenizer(loaded)
    config, generation = copy.deepcopy(base.config), generation_config_for(base, tokenizer, loaded.stop_ids)
    config.dtype = out_dtype
    loaded.model = base = None  # freed before the merge: it reads the shards instead
    gc.collect()
    console.print(f"merging shard by shard: {len(plan.deltas)} adapted weights in {len(plan.shards)} shard(s)")
    reports = []

    def write(tmp: Path) -> None:
        merge_shards(plan, tmp, dtype)
        write_model_files(tmp, tokenizer, config, generation)
        trim_heap()  # the merge's freed shard buffers: ~300 MB of RSS under the merged model otherwise (1.1B, bf16)
        report = check.run(loaded, load_merged(tmp, out_dtype), _tolerance(tolerance, out_dtype))
        reports.append(report)
        _print(console, "merged", report)
        _gate(report, force, out_dtype)
        write_json_atomic(tmp / REPORT, {"merged": report.to_dict(), "forced": force and not report.passed,
                                         "merge": {"path": "shards", "shards": len(plan.shards)}})

    save_dir_atomic(out, write)
    console.print(f"[green]wrote[/] {out} (merged HF model, {len(plan.shards)} shard(s), {str(out_dtype)[6:]})")
    return reports[0]


def load_merged(folder: Path, dtype):
    """The merged HF folder as a model in `dtype` (the gate measures it computing in fp32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()


def _torch_dtype(name: str | None):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(name)


def _stored_dtype(cfg):
    """The dtype the base's safetensors hold most bytes in; None (fp32) when unknown."""
    from chattune.model.checkpoint import stored_dtype
    from chattune.models import resolve_model

    return stored_dtype(resolve_model(cfg.model.name, cfg.model.revision))


def _tolerance(tolerance: float | None, dtype) -> float:
    import torch

    if tolerance is not None:
        return tolerance
    return DEFAULT_TOLERANCE["hf"] if dtype in (None, torch.float32, torch.float64) else DEFAULT_TOLERANCE["hf-16"]


def _measure_reference(loaded: LoadedRun, console: Console) -> Check:
    convs, source = held_out_conversations(loaded.cfg, console)
    full, prompts = fidelity.encode_texts(loaded.tokenizer, convs)
    console.print(f"measuring base + adapter on {len(convs)} held-out prompts ({source})")
    reference = fidelity.measure(loaded.model, full, prompts, loaded.stop_ids, loaded.tokenizer.pad_token_id)
    return Check(convs, full, prompts, reference, source)


def gguf_filename(dtype: str) -> str:
    return f"model-{dtype}.gguf"


def _export_gguf(loaded, check: Check, out: Path, dtype: str, tolerance: float, merged, force, console,
                 ollama: bool = False, auto_tried: list | None = None):
    """Write the GGUF into a temp folder, load it back, gate it, then rename the folder to `out`;
    `auto_tried`: --gguf-type auto's refused types, recorded in the report."""

    name = gguf_filename(dtype)
    reports = []

    def write(tmp: Path) -> None:
        tokenizer = training_tokenizer(loaded)
        report = _written_and_read_back(loaded, check, tokenizer, tmp / name, dtype, tolerance,
                                        console)
        reports.append(report)
        _print(console, f"gguf {dtype}", report)
        _gate(report, force)
        forced = force and not (merged.passed and report.passed)
        record = {"merged": merged.to_dict(), "gguf": report.to_dict(), "forced": forced, "type": dtype,
                  "llama_cpp": _llamacpp_report(loaded, check, tmp / name, tokenizer, tolerance, report.gate, console)}
        if auto_tried is not None:
            record["auto"] = {"order": list(gguf_types_here()), "refused": auto_tried}
        write_json_atomic(tmp / REPORT, record)
        if ollama:
            from chattune.exporting.modelfile import write_modelfile

            checked = write_modelfile(tmp, name, tokenizer, loaded.stop_ids, loaded.cfg.data.system, check.conversations)
            console.print(f"Modelfile: TEMPLATE renders the training template's tokens on {checked} conversations")

    save_dir_atomic(out, write)
    console.print(f"[green]wrote[/] {out / name}")
    return reports[0]


def _written_and_read_back(loaded, check: Check, tokenizer, path: Path, dtype: str,
                           tolerance: float, console) -> fidelity.FidelityReport:
    """Write the file from the merged model, free that model, load the file back and gate it: the
    merged fp32 model and the loaded-back one never coexist (gguf_readback.py)."""
    merged_again(loaded, console)
    _write_gguf_file(loaded, tokenizer, path.parent, path.name, dtype)
    release_merged(loaded)
    model, gguf_tokenizer = load_gguf(path.parent, path.name)
    gate = "kl" if f"gguf-{dtype}" in KL_TOLERANCE else "logits"
    report = check.run(loaded, model, tolerance, gate)
    del model  # before llama.cpp (when installed) maps the file for its own check
    report.tokenizer_agreement = fidelity.tokenizer_agreement(tokenizer, gguf_tokenizer,
                                                              check.conversations)
    return report


def _write_gguf_file(loaded, tokenizer, folder: Path, name: str, dtype: str) -> None:
    """gguf-py writes f32/f16/q8_0/q4_0 itself; a K-quant is an f32 file quantized by llama.cpp."""
    from chattune.exporting import llamacpp
    from chattune.exporting.gguf_writer import write_gguf

    label = f"chattune export of {loaded.run.path.name}"
    if dtype not in llamacpp.K_QUANTS:
        write_gguf(loaded.model, tokenizer, folder / name, dtype, name=label, stop_ids=loaded.stop_ids)
        return
    source = folder / gguf_filename("f32-unquantized")
    write_gguf(loaded.model, tokenizer, source, "f32", name=label, stop_ids=loaded.stop_ids)
    llamacpp.quantize(source, folder / name, dtype)
    source.unlink()


def _llamacpp_report(loaded, check: Check, path: Path, tokenizer, tolerance: float, gate: str, console) -> dict:
    """The same comparison run by llama.cpp itself when llama-cpp-python is installed (reported, not
    gated: its kernels round differently from torch's); {"installed": False} otherwise."""
    from chattune.exporting import llamacpp

    if not llamacpp.available():
        return {"installed": False}
    try:
        llm = llamacpp.open_gguf(path, n_ctx=max(t.shape[1] for t in check.full) + 32)
        try:
            outputs = llamacpp.outputs(llm, check.full, check.prompts, loaded.stop_ids)
            report = fidelity.compare(check.reference, outputs, tolerance, check.source, gate)
            report.tokenizer_agreement = llamacpp.tokenizer_agreement(llm, tokenizer, check.conversations)
        finally:
            llm.close()
    except Exception as err:  # noqa: BLE001 - an optional check; the transformers gate stands, the failure is kept
        console.print(f"[yellow]warning[/]: llama.cpp could not run the file: {err}", highlight=False)
        return {"installed": True, "error": repr(err)}
    _print(console, "llama.cpp", report)
    return {"installed": True, **report.to_dict()}


def _print(console: Console, label: str, report: fidelity.FidelityReport) -> None:
    colour = "green" if report.passed else "red"
    console.print(f"[{colour}]{label}[/] {report.describe()}", highlight=False)


def _gate(report: fidelity.FidelityReport, force: bool, dtype=None) -> None:
    """Raise ExportError on a failed gate (a warning with `force`); `dtype` is an HF export's."""
    if report.passed:
        return
    if force:
        Console(stderr=True).print("[yellow]warning[/]: fidelity gate failed; writing anyway (--force)")
        return
    raise ExportError(
        "fidelity gate failed: the export does not reproduce base + adapter "
        f"({report.describe()}); nothing was written.{_rounding_hint(dtype)} Use --force to write it anyway."
    )


def _rounding_hint(dtype) -> str:
    import torch

    if dtype not in (torch.bfloat16, torch.float16):
        return ""
    name = str(dtype)[6:]
    return (f" A {name} export rounds each merged weight W + dW to {name}, which drops the parts of dW smaller "
            "than its rounding step (a small or short-trained adapter loses much of its effect); --dtype fp32 "
            "keeps them.")
