"""The run dir API: every file name a run dir holds, one typed reader, and one way to load a run.

Layout of a run dir (each name is a constant below; no other module spells one):
    config.yaml          CONFIG: the fully resolved RunConfig
    adapter/             ADAPTER: PEFT adapter (loads with plain PeftModel.from_pretrained)
    tokenizer/           TOKENIZER: tokenizer files, including the chat template used in training
    chat_template.jinja  TEMPLATE: the exact chat template used (also inside tokenizer/)
    data_stats.json      DATA_STATS: examples, tokens, trained tokens, truncated/dropped with reasons
    metrics.jsonl        METRICS: one JSON object per logged step (step, loss, lr, tokens/s, ...)
    loss.png             LOSS_PLOT: the loss curve
    summary.json         SUMMARY: final numbers of the run
    retrieval_index.json RETRIEVAL_INDEX: data.retrieval only, the labelled rows prompts retrieve from
    init_adapter/        INIT_ADAPTER: lora.init=pissa/olora only, the initial adapter (model/adapters.py)
    last_adapter/        LAST_ADAPTER: in-training eval only, the final weights when adapter/ is the best
    checkpoints/         CHECKPOINTS: checkpoint-STEP/ folders (training/checkpoints.py), each with
                         BEST_ADAPTER (eval_best_adapter.safetensors) when in-training eval keeps a best
    eval/NAME-TIME/      EVAL_DIR: one `chattune eval`, PREDICTIONS (predictions.jsonl) and
                         EVAL_SUMMARY (summary.json)
    report.html          REPORT: `chattune report`
    .chattune.lock       LOCK: held (flock) by the one process writing the run dir (runlock.py)
Files are written with chattune.io (temporary name, then rename), so a reader never sees half a
file. RunDir reads a run dir and writes it (its write_* methods, each atomic; write_eval_folder
for an eval folder anywhere); load_for_inference loads its base + adapter for chat, predict,
eval, export and serve (torch, transformers and peft are imported only when it runs).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chattune.io import checksum_problems, save_dir_atomic, write_json_atomic, write_text_atomic

CONFIG = "config.yaml"
ADAPTER = "adapter"
TOKENIZER = "tokenizer"
TEMPLATE = "chat_template.jinja"
DATA_STATS = "data_stats.json"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
SUMMARY = "summary.json"
RETRIEVAL_INDEX = "retrieval_index.json"
INIT_ADAPTER = "init_adapter"
LAST_ADAPTER = "last_adapter"
CHECKPOINTS = "checkpoints"
BEST_ADAPTER = "eval_best_adapter.safetensors"  # inside a checkpoint
EVAL_DIR = "eval"
PREDICTIONS = "predictions.jsonl"  # inside an eval folder
EVAL_SUMMARY = "summary.json"  # inside an eval folder
REPORT = "report.html"
LOCK = ".chattune.lock"

# What training writes atomically at the top of a run dir, for io.clean_temporaries
TEMPORARY_OF = (CONFIG, ADAPTER, TOKENIZER, TEMPLATE, DATA_STATS, METRICS, LOSS_PLOT, SUMMARY, RETRIEVAL_INDEX)

SPACE_MARGIN = 32 * 2**20  # tokenizer, template, metrics, plots, tracker logs


class RunDirError(ValueError):
    """A folder that is not a usable run dir."""


@contextlib.contextmanager
def removed_if_left_empty(path: Path):
    """On an error inside the block, remove `path` if it is still an empty folder (but for the
    writer's own lock file); re-raise."""
    try:
        yield
    except BaseException:
        if path.is_dir() and all(p.name == LOCK for p in path.iterdir()):
            (path / LOCK).unlink(missing_ok=True)  # its flock ends when the holder closes it
            path.rmdir()
        raise


def estimated_size(trainable_params: int, checkpoints: int) -> int:
    """Bytes a run dir may hold at its fullest: the fp32 adapter three times (adapter/, its
    atomic replacement, last_adapter/) and each checkpoint's adapter plus AdamW's two moments."""
    adapter = 4 * trainable_params
    return 3 * adapter + checkpoints * 3 * adapter + SPACE_MARGIN


def check_free_space(path: Path, need: int) -> None:
    free = shutil.disk_usage(path).free
    if free < need:
        raise RunDirError(
            f"{path}: only {free / 2**20:.1f} MiB free on this disk, but the run needs about {need / 2**20:.0f} MiB "
            "(adapter, checkpoints, logs); free some space or choose another output_dir or run_dir"
        )


@dataclass
class SavedEval:
    """One RUN_DIR/eval/NAME-TIME/ folder: its summary and its predictions."""

    path: Path
    summary: dict
    predictions: list[dict] = field(default_factory=list)


def _json(path: Path, default):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_eval_folder(out_dir: Path, summary: dict, records: list[dict]) -> None:
    """One eval folder (EVAL_SUMMARY + PREDICTIONS), appearing whole (temp + rename); RunDir.evals reads it."""
    def write(tmp: Path) -> None:
        (tmp / PREDICTIONS).write_text(_jsonl_text(records), encoding="utf-8")
        (tmp / EVAL_SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    save_dir_atomic(Path(out_dir), write)


@dataclass
class RunDir:
    """Typed reads and writes of one run dir; a missing optional file reads as empty, every write is
    atomic (chattune.io: temporary name, then rename)."""

    path: Path

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER

    @property
    def tokenizer(self) -> Path:
        return self.path / TOKENIZER

    @property
    def metrics_file(self) -> Path:
        """Training appends a line per logged step (training/metrics.py); write_metrics replaces it whole."""
        return self.path / METRICS

    @property
    def loss_plot(self) -> Path:
        return self.path / LOSS_PLOT

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def write_adapter(self, save: Callable[[Path], None]) -> None:
        """`save(folder)` writes the adapter files (peft's save_pretrained, with checksums)."""
        save_dir_atomic(self.adapter, save)

    def write_tokenizer(self, tokenizer) -> None:
        save_dir_atomic(self.tokenizer, tokenizer.save_pretrained)

    def write_template(self, template: str | None) -> None:
        write_text_atomic(self.path / TEMPLATE, template or "")

    def write_config(self, cfg) -> None:
        """The resolved RunConfig as YAML (config() reads it back validated)."""
        write_text_atomic(self.path / CONFIG, cfg.to_yaml())

    def write_data_stats(self, stats: dict) -> None:
        write_json_atomic(self.path / DATA_STATS, stats)

    def write_metrics(self, records: list[dict]) -> None:
        """metrics.jsonl replaced whole (resume trims it to the checkpoint's step)."""
        write_text_atomic(self.metrics_file, _jsonl_text(records))

    def write_retrieval_index(self, retriever) -> None:
        """The index data.retrieval built prompts from (data/retrieval.Retriever), so inference uses the same."""
        write_json_atomic(self.path / RETRIEVAL_INDEX, retriever.to_json())

    def retriever(self, data_cfg=None):
        """The saved retriever for `data_cfg` (default: the run's), None without data.retrieval; an index
        built with another retriever or corpus is refused with both named (data/retrieval.load_index)."""
        data_cfg = data_cfg or self.config().data
        if not data_cfg.retrieval:
            return None
        from chattune.data.retrieval import load_index

        index = self.path / RETRIEVAL_INDEX
        if not index.is_file():
            raise RunDirError(f"{self.path}: trained with data.retrieval but {RETRIEVAL_INDEX} is missing")
        return load_index(index, data_cfg)

    def write_summary(self, summary: dict) -> None:
        """summary.json: training writes it last, since it marks the run finished."""
        write_json_atomic(self.path / SUMMARY, summary)

    def config(self):
        """The validated RunConfig the run was trained with."""
        from chattune.config import load_config

        return load_config(self.path / CONFIG)

    def config_dict(self) -> dict:
        """config.yaml as written, unvalidated (a report shows it even from another chattune version)."""
        import yaml

        return yaml.safe_load((self.path / CONFIG).read_text(encoding="utf-8")) or {}

    def summary(self) -> dict:
        return _json(self.path / SUMMARY, {})

    def data_stats(self) -> dict:
        return _json(self.path / DATA_STATS, {})

    def metrics(self) -> list[dict]:
        return _jsonl(self.path / METRICS)

    def evals(self) -> list[SavedEval]:
        """Every RUN_DIR/eval/*/summary.json with its predictions, oldest first."""
        found = []
        for folder in sorted((self.path / EVAL_DIR).glob("*/")):
            summary = _json(folder / EVAL_SUMMARY, None)
            if summary is not None:
                found.append(SavedEval(folder, summary, _jsonl(folder / PREDICTIONS)))
        return sorted(found, key=lambda e: e.summary.get("created", ""))


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / ADAPTER).is_dir()


def holds_a_run(path: str | Path) -> bool:
    """A run dir finished or still training: a finished run's files, checkpoints, metrics or a lock."""
    path = Path(path)
    return is_run_dir(path) or (path / CHECKPOINTS).is_dir() or (path / METRICS).is_file() \
        or (path / LOCK).is_file()


def enclosing_run_dir(path: str | Path) -> Path | None:
    """The run dir that `path` is or lies inside (the nearest), None when it is in none."""
    path = Path(path).resolve()  # '..' and links as the write will follow them
    return next((p for p in (path, *path.parents) if p.is_dir() and holds_a_run(p)), None)


def open_run_dir(path: str | Path) -> RunDir:
    run = RunDir(Path(path))
    missing = [name for name in (CONFIG, ADAPTER, TOKENIZER) if not (run.path / name).exists()]
    if missing:
        raise RunDirError(f"{run.path}: not a complete run dir (missing {', '.join(missing)})")
    return run


@dataclass
class Loaded:
    """A run loaded for inference: base + adapter in eval mode, its tokenizer and its config."""

    run: RunDir
    cfg: object  # RunConfig
    model: object  # PeftModel
    tokenizer: object  # the run's tokenizer/, with the chat template used in training


def load_for_inference(path: str | Path, device: str = "cpu", dtype=None, *, dequantized: bool = False) -> Loaded:
    """Load a run as chat, predict, eval and export use it: the base its config names, the adapter on it.

    The adapter's recorded base is checked before any weights load, its checksums and tensor shapes
    after. `dtype` is a torch dtype, or a --dtype choice (auto, fp32, bf16, fp16); None is auto
    (model.load.inference_precision: the precision the run trained in, where `device` runs it natively),
    except with `dequantized`, where None is fp32. A QLoRA run's base loads quantized as in training,
    computing in that dtype; with `dequantized` (export) it becomes fp32 copies of those exact weights
    before the adapter goes on, so a merge lands there. The adapter's weights stay fp32 (peft upcasts
    them), each adapted input cast to fp32 and the sum back to the base's dtype.
    """
    from chattune.adapter_base import check_adapter_base
    from chattune.model.load import load_base_model
    from chattune.models import resolve_model

    run = open_run_dir(path)
    cfg = run.config()
    check_adapter_base(run.adapter, resolve_model(cfg.model.name, cfg.model.revision))
    tokenizer = run_tokenizer(run, cfg)
    base = load_base_model(cfg.model, dtype=_base_dtype(run, cfg, device, dtype, dequantized), device=device)
    if dequantized and cfg.model.quantize != "none":
        from chattune.model.quant import dequantize

        # fp32 copies of the exact weights the 4/8-bit layers computed with: base + adapter on them is the
        # trained model (bitsandbytes' 4-bit matmul is x @ dequantize(W)), and the merge adds the delta in
        # fp32 (peft's merge into a 4-bit layer would re-quantize the sum)
        base = dequantize(base)
    model = attach_adapter(base, run.adapter)
    model.eval()
    return Loaded(run, cfg, model, tokenizer)


def _base_dtype(run: RunDir, cfg, device: str, dtype, dequantized: bool):
    """load_for_inference's `dtype` as a torch dtype (None: auto, or fp32 for a dequantized export)."""
    if dtype is None and dequantized:
        import torch

        return torch.float32
    if dtype is None or isinstance(dtype, str):
        from chattune.model.load import inference_dtype

        return inference_dtype(cfg, device, dtype, recorded=run.summary().get("precision"))
    return dtype


def join_for_inference(path: str | Path, model, adapter_name: str, base: str | None = None) -> Loaded:
    """Add a run's adapter to `model`, a loaded PeftModel over the same base, as `adapter_name`
    (serve: run dirs over one base share one model). `base` names it in a shape mismatch."""
    from chattune.adapter_base import check_adapter_shapes
    from chattune.model.adapters import quiet_adalora_rank_pattern

    run = open_run_dir(path)
    check_adapter_shapes(run.adapter, model, base)
    check_adapter_intact(run.adapter)
    with quiet_adalora_rank_pattern():
        model.load_adapter(str(run.adapter), adapter_name=adapter_name)
    model.eval()
    cfg = run.config()
    return Loaded(run, cfg, model, run_tokenizer(run, cfg))


def attach_adapter(base, adapter_path: Path, adapter_name: str = "default", trainable: bool = False):
    """A run's adapter attached to `base` with peft, after its checksums and tensor shapes are checked
    (`trainable`: to train it further, model.adapter); a base whose vocabulary the run grew
    (markers a template added, model/vocab.py) is grown to the trained size first."""
    from peft import PeftModel

    from chattune.adapter_base import check_adapter_shapes
    from chattune.model.adapters import quiet_adalora_rank_pattern
    from chattune.model.vocab import fit_for_adapter, save_without_embeddings

    check_adapter_intact(adapter_path)
    fit_for_adapter(base, adapter_path)
    check_adapter_shapes(adapter_path, base)
    with quiet_adalora_rank_pattern():
        model = PeftModel.from_pretrained(base, str(adapter_path), adapter_name=adapter_name,
                                          is_trainable=trainable)
    return save_without_embeddings(model)


def check_adapter_intact(adapter_path: Path) -> None:
    """Refuse an adapter whose files changed since training wrote them (a flipped byte loads silently)."""
    if problems := checksum_problems(Path(adapter_path)):
        raise RunDirError(f"{adapter_path}: the adapter is damaged ({'; '.join(problems)}); "
                          "use another run, or its last checkpoint (chattune train ... --resume auto)")


def run_tokenizer(run: RunDir, cfg=None):
    """The tokenizer a run trained with (its tokenizer folder: chat template and specials as in training)."""
    from chattune.model.load import open_tokenizer

    cfg = cfg or run.config()
    return open_tokenizer(str(run.tokenizer), trust_remote_code=cfg.model.trust_remote_code)
