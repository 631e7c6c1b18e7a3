"""`chattune export`: load a run, measure base + adapter, merge, gate, write HF or GGUF.

The gate compares the artefact that will be shipped (the merged model, or the GGUF file
loaded back with transformers) against base + adapter. A failed gate raises ExportError
before anything reaches OUT, unless `force` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from chattune.export import fidelity
from chattune.export.merge import (
    REPORT,
    ExportError,
    LoadedRun,
    held_out_conversations,
    load_run,
    merge,
    training_tokenizer,
    write_hf_folder,
)
from chattune.io import save_dir_atomic, write_json_atomic

# Default max |logit diff| per artefact: fp32 merges differ only by float rounding; f16
# weights round every weight to 11 significant bits.
DEFAULT_TOLERANCE = {"hf": 1e-3, "gguf-f32": 1e-3, "gguf-f16": 0.5}


@dataclass
class Check:
    """The held-out set and base + adapter's outputs on it, measured before merging."""

    conversations: list
    full: list
    prompts: list
    reference: fidelity.Outputs
    source: str

    def run(self, loaded: LoadedRun, model, tolerance: float) -> fidelity.FidelityReport:
        outputs = fidelity.measure(model, self.full, self.prompts, loaded.stop_ids, loaded.tokenizer.pad_token_id)
        return fidelity.compare(self.reference, outputs, tolerance, self.source)


def export_run(run_path, out, fmt: str = "hf", gguf_dtype: str = "f16", tolerance: float | None = None,
               force: bool = False, console: Console | None = None) -> list[fidelity.FidelityReport]:
    """Export `run_path` to the folder `out`; returns the fidelity reports that were printed."""
    console = console or Console(stderr=True)
    out = Path(out)
    if fmt not in ("hf", "gguf"):
        raise ExportError(f"unknown export format {fmt!r}; use hf or gguf")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: already exists and is not empty; choose another --out or add --force")
    loaded = load_run(run_path)
    if fmt == "gguf":
        from chattune.export.gguf_writer import check_supported

        check_supported(loaded.model.get_base_model(), loaded.tokenizer)  # fail before the slow part
    check = _measure_reference(loaded, console)
    merge(loaded)
    merge_tol = DEFAULT_TOLERANCE["hf"] if tolerance is None or fmt == "gguf" else tolerance
    merged = check.run(loaded, loaded.model, merge_tol)
    _print(console, "merged", merged)
    _gate(merged, force)  # a GGUF of a broken merge is broken too
    if fmt == "hf":
        write_hf_folder(loaded, out, {"merged": merged.to_dict(), "forced": force and not merged.passed})
        console.print(f"[green]wrote[/] {out} (merged HF model)")
        return [merged]
    gguf_tol = DEFAULT_TOLERANCE[f"gguf-{gguf_dtype}"] if tolerance is None else tolerance
    return [merged, _export_gguf(loaded, check, out, gguf_dtype, gguf_tol, merged, force, console)]


def _measure_reference(loaded: LoadedRun, console: Console) -> Check:
    convs, source = held_out_conversations(loaded.cfg, console)
    full, prompts = fidelity.encode_texts(loaded.tokenizer, convs)
    console.print(f"measuring base + adapter on {len(convs)} held-out prompts ({source})")
    reference = fidelity.measure(loaded.model, full, prompts, loaded.stop_ids, loaded.tokenizer.pad_token_id)
    return Check(convs, full, prompts, reference, source)


def gguf_filename(dtype: str) -> str:
    return f"model-{dtype}.gguf"


def _export_gguf(loaded, check: Check, out: Path, dtype: str, tolerance: float, merged, force, console):
    """Write the GGUF into a temp folder, load it back, gate it, then rename the folder to `out`."""
    from chattune.export.gguf_writer import write_gguf

    name = gguf_filename(dtype)
    reports = []

    def write(tmp: Path) -> None:
        tokenizer = training_tokenizer(loaded)
        write_gguf(loaded.model, tokenizer, tmp / name, dtype,
                   name=f"chattune export of {loaded.run.path.name}", stop_ids=loaded.stop_ids)
        model, gguf_tokenizer = load_gguf(tmp, name)
        report = check.run(loaded, model, tolerance)
        report.tokenizer_agreement = fidelity.tokenizer_agreement(tokenizer, gguf_tokenizer, check.conversations)
        reports.append(report)
        _print(console, f"gguf {dtype}", report)
        _gate(report, force)
        forced = force and not (merged.passed and report.passed)
        write_json_atomic(tmp / REPORT, {"merged": merged.to_dict(), "gguf": report.to_dict(), "forced": forced})

    save_dir_atomic(out, write)
    console.print(f"[green]wrote[/] {out / name}")
    return reports[0]


def load_gguf(folder: Path, name: str):
    """A GGUF file as (fp32 transformers model, tokenizer), the way `from_pretrained` reads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


def _print(console: Console, label: str, report: fidelity.FidelityReport) -> None:
    colour = "green" if report.passed else "red"
    console.print(f"[{colour}]{label}[/] {report.describe()}", highlight=False)


def _gate(report: fidelity.FidelityReport, force: bool) -> None:
    if report.passed:
        return
    if force:
        Console(stderr=True).print("[yellow]warning[/]: fidelity gate failed; writing anyway (--force)")
        return
    raise ExportError(
        "fidelity gate failed: the export does not reproduce base + adapter "
        f"({report.describe()}); nothing was written. Use --force to write it anyway."
    )
