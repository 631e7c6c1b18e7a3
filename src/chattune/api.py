"""The public Python API: train, load, evaluate, export and inspect_data, as a notebook calls them.

Each function takes what the CLI takes (a config file or mapping, the same dotted override keys,
paths) plus what only a Python caller has: rows in memory (a list of dicts, a pandas DataFrame, a
datasets.Dataset) and a `Run` object. The CLI's subcommands call these functions; this module
holds no training, data or inference logic of its own, only the translation. Bad input that is
not chattune's own error (a path that is not a folder, no permission, a full or read-only disk,
a library's value range) comes out of every function as one located line: errors.InputError.

    import chattune
    run = chattune.train("configs/demo.yaml", data=rows, **{"train.epochs": 2})
    bot = chattune.load(run)
    bot.chat("Who are you?")
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chattune.errors import located

if TYPE_CHECKING:
    from chattune.config import RunConfig
    from chattune.data.prepare import Prepared
    from chattune.eval.runner import EvalResult
    from chattune.infer.chat import ChatModel

__all__ = ["Run", "evaluate", "export", "inspect_data", "inspection", "load", "resolve_config", "train"]

SECTIONS = ("model", "data", "lora", "train")


@dataclass(frozen=True)
class Run:
    """A run dir written by `train`: its files read through rundir.RunDir."""

    path: Path

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def config(self) -> RunConfig:
        return self._dir().config()

    def summary(self) -> dict:
        return self._dir().summary()

    def metrics(self) -> list[dict]:
        return self._dir().metrics()

    @property
    def loss_plot(self) -> Path:
        return self._dir().loss_plot

    def load(self, device: str = "auto", dtype: str = "auto") -> ChatModel:
        return load(self, device=device, dtype=dtype)

    def _dir(self):
        from chattune import rundir

        return rundir.RunDir(self.path)

    def _repr_html_(self) -> str:
        """A notebook shows the run dir, its final numbers and its loss curve."""
        import base64
        import html

        summary = self.summary()
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_short(v))}</td></tr>"
                       for k, v in summary.items() if not isinstance(v, (dict, list)))
        picture = ""
        if self.loss_plot.is_file():
            data = base64.b64encode(self.loss_plot.read_bytes()).decode()
            picture = f'<img alt="loss curve" style="max-width:480px" src="data:image/png;base64,{data}">'
        return f"<b>run</b> <code>{html.escape(str(self.path))}</code><table>{rows}</table>{picture}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@located
def resolve_config(config: str | Path | dict | RunConfig | None = None, overrides: dict | list[str] | None = None,
                   data: Any = None, eval_data: Any = None, **keyword_overrides: Any) -> RunConfig:
    """A validated RunConfig from a YAML path, a mapping or a RunConfig, then the overrides.

    Overrides use the CLI's dotted keys: a dict `{"lora.r": 16}`, a list `["lora.r=16"]` (parsed as
    on the command line), keyword arguments `**{"train.epochs": 2}`, `train__epochs=2` or a whole
    section `lora={"r": 16}`. `data` / `eval_data`: a path or rows in memory (data/inline.py), as
    data.path / data.eval_path.
    """
    from chattune.config import (
        RunConfig,
        load_config,
        read_config_file,
        set_dotted,
        validate_config,
    )
    from chattune.data.inline import inline_data_path

    if isinstance(config, RunConfig) and not (overrides or keyword_overrides) and data is None and eval_data is None:
        return config
    if isinstance(overrides, list):
        if not isinstance(config, (str, Path)) and config is not None:
            raise TypeError("overrides as 'key=value' strings go with a config path; pass a dict otherwise")
        raw = load_config(config, overrides).model_dump(mode="json", exclude_unset=True)
        overrides = {}
    elif isinstance(config, RunConfig):
        raw = config.model_dump(mode="json", exclude_unset=True)
    elif isinstance(config, dict):
        raw = copy.deepcopy(config)
    else:
        raw = read_config_file(config) if config is not None else {}
    for key, value in _dotted(overrides or {}, keyword_overrides):
        set_dotted(raw, key, value)
    if data is not None:
        set_dotted(raw, "data.path", inline_data_path(data))
        raw.get("data", {}).pop("sources", None)
    if eval_data is not None:
        set_dotted(raw, "data.eval_path", inline_data_path(eval_data))
    return validate_config(raw, source=str(config) if isinstance(config, (str, Path)) else "python")


def _dotted(overrides: dict, keywords: dict) -> list[tuple[str, Any]]:
    """(dotted key, value) pairs: a section given as a mapping is spread into its keys."""
    pairs = []
    for key, value in [*overrides.items(), *keywords.items()]:
        key = key.replace("__", ".")
        if key in SECTIONS and isinstance(value, dict):
            pairs.extend((f"{key}.{sub}", v) for sub, v in value.items())
        else:
            pairs.append((key, value))
    return pairs


def next_free_run_dir(cfg: RunConfig) -> RunConfig:
    """A notebook cell run twice gets a second run dir, not FileExistsError: NAME-TIME, NAME-TIME-2, ..."""
    path = cfg.resolved_run_dir()
    if not (path.exists() and any(path.iterdir())):
        return cfg.model_copy(update={"run_dir": str(path)})
    n = 2
    while (candidate := path.with_name(f"{path.name}-{n}")).exists() and any(candidate.iterdir()):
        n += 1
    return cfg.model_copy(update={"run_dir": str(candidate)})


@located
def train(config: str | Path | dict | RunConfig | None = None, *, data: Any = None, eval_data: Any = None,
          overrides: dict | list[str] | None = None, resume: str | Path | None = None, console=None,
          callbacks: tuple = (), if_exists: str = "next", allow_data_change: bool = False,
          **keyword_overrides: Any) -> Run:
    """Fine-tune per `config` + overrides (see resolve_config); returns the run dir written.

    `resume`: "auto" or a run dir / checkpoint to continue (then the run dir is the one resumed).
    Without it, a run dir that already holds a run is never reused: `if_exists="next"` (a notebook's
    default) takes the next free name, "error" (the CLI's) refuses with FileExistsError.
    `allow_data_change`: with `resume`, continue on training data that changed since the checkpoint
    (refused otherwise); the change is recorded in the checkpoints and summary.json.
    """
    from chattune.training.trainer import train as train_run

    if if_exists not in ("next", "error"):
        raise ValueError(f"if_exists: 'next' or 'error', got {if_exists!r}")
    if allow_data_change and resume is None:
        from chattune.config import ConfigError

        raise ConfigError("--allow-data-change continues a run on changed data: "
                          "give it with --resume")
    cfg = resolve_config(config, overrides, data, eval_data, **keyword_overrides)
    if resume is None and if_exists == "next":
        cfg = next_free_run_dir(cfg)
    outcome = train_run(cfg, console, resume=str(resume) if resume is not None else None,
                        callbacks=callbacks, allow_data_change=allow_data_change)
    return Run(Path(outcome.run_dir))


@located
def load(target: str | Path | Run, device: str = "auto", dtype: str = "auto") -> ChatModel:
    """A run dir (base + adapter), a merged export, or a base model (built-in, local, hub id) to chat with.

    `device`: auto, cpu or cuda; `dtype`: auto, fp32, bf16 or fp16 (model/load.py inference_precision).
    """
    from chattune.infer.chat import ChatModel
    from chattune.magic import remember_loaded
    from chattune.model.load import pick_device

    model = ChatModel.load(str(target), device=pick_device(device), dtype=dtype)
    remember_loaded(model)  # the model a notebook's %%chat cells talk to (chattune/magic.py)
    return model


@located
def evaluate(target: str | Path | Run, data: Any, metrics: list[str] | str = "loss", *,
             labels: list[str] | None = None, max_new_tokens: int = 64, batch_size: int = 8,
             device: str = "auto", dtype: str = "auto", out: str | Path | None = None,
             like: str | Path | Run | None = None, settings: list[str] | None = None, console=None,
             retrieval: bool = True) -> EvalResult:
    """`chattune eval`: score `target` on `data` (a path or rows in memory); writes an eval folder.

    `metrics`: names or a comma list (loss, exact, accuracy, rouge, stop_rate; chattune.metrics), or
    "preference" alone: held-out pairs, the run and its base (eval/preference.py).
    `retrieval` False: a data.retrieval run's prompts without the retrieved examples.
    """
    from chattune.data.inline import inline_data_path
    from chattune.eval.runner import run_eval
    from chattune.model.load import pick_device

    like = str(like) if like is not None else None
    if (metrics if isinstance(metrics, str) else ",".join(metrics)).strip() == "preference":
        from chattune.eval.preference import run_preference_eval
        from chattune.eval.runner import EvalResult

        with _eval_writer(target, out):
            summary = run_preference_eval(str(target), inline_data_path(data), batch_size,
                                          pick_device(device), out, like=like, dtype=dtype)
        return EvalResult(Path(summary["out_dir"]), summary, [])
    names = _metric_names(metrics, labels)
    with _eval_writer(target, out):
        return run_eval(str(target), inline_data_path(data), names, labels, max_new_tokens, batch_size,
                        pick_device(device), out, console=console, settings=settings, like=like,
                        dtype=dtype, retrieval=retrieval)


def _eval_writer(target, out):
    """The writer lock of the run dir an eval folder goes into (`out`'s, or by default the target's)."""
    from chattune import rundir, runlock

    default = Path(str(target)) if out is None and rundir.is_run_dir(str(target)) else None
    return runlock.writing_inside(out, default)


@located
def retrieval_ablation(run: str | Path | Run, data: Any, metrics: list[str] | str = "accuracy", *,
                       device: str = "auto", console=None, **options) -> dict:
    """`chattune eval RUN --retrieval-ablation`: base zero-shot, base + retrieval, fine-tuned and
    fine-tuned + retrieval on `data`, one eval folder each; returns the table (eval/ablation.py)."""
    from chattune.data.inline import inline_data_path
    from chattune.eval.ablation import retrieval_ablation as ablation
    from chattune.model.load import pick_device

    names = _metric_names(metrics, options.get("labels"))
    with _eval_writer(run, None):  # its four eval folders and its table go into the run dir
        return ablation(str(run), inline_data_path(data), names, console=console,
                        device=pick_device(device), **options)


def _metric_names(metrics: list[str] | str, labels) -> list[str]:
    from chattune.config import ConfigError
    from chattune.metrics import parse_metric_list

    try:
        names = parse_metric_list(metrics if isinstance(metrics, str) else ",".join(metrics))
    except ValueError as err:
        raise ConfigError(f"metrics (--metric): {err}") from None
    if labels and "accuracy" not in names:
        names.append("accuracy")
    return names


@located
def export(run: str | Path | Run, out: str | Path, format: str = "hf", *, dtype: str | None = None,
           gguf_dtype: str = "auto", tolerance: float | None = None, force: bool = False, ollama: bool = False,
           console=None) -> Path:
    """`chattune export`: merge the run's adapter into its base behind the fidelity gate; returns `out`.
    `gguf_dtype`: auto (the smallest type whose gate passes), f16, f32, q8_0, q4_0, or with llama-cpp-python
    q4_k_m, q5_k_m, q6_k; `ollama`: a Modelfile next to the GGUF."""
    from chattune.exporting.pipeline import export_run

    export_run(str(run), out, format, gguf_dtype, tolerance, force, console=console, dtype=dtype, ollama=ollama)
    return Path(out)


@located
def inspect_data(config: str | Path | dict | RunConfig | None = None, *, data: Any = None,
                 overrides: dict | list[str] | None = None, examples: int = 3, console=None,
                 **keyword_overrides: Any) -> Prepared:
    """`chattune data inspect`: print what training would see; return the prepared data (its
    `report` holds every lint finding with file:line:field, `stats` the counts)."""
    from rich.console import Console

    from chattune.data.inspect import inspect_data as print_inspection
    from chattune.model.load import load_tokenizer

    cfg = resolve_config(config, overrides, data, **keyword_overrides)
    return print_inspection(cfg, load_tokenizer(cfg.model), examples, console or Console())


@located
def inspection(config: str | Path | dict | RunConfig | None = None, *, data: Any = None,
               overrides: dict | list[str] | None = None, examples: int = 3, **keyword_overrides: Any) -> dict:
    """What `inspect_data` prints, as JSON-ready data: template, sources, length histogram, stats,
    every lint finding (where = file:line:field) and examples as (text, trained|context|special) runs."""
    from chattune.data.inspect import inspection_report
    from chattune.data.prepare import prepare
    from chattune.model.load import load_tokenizer

    cfg = resolve_config(config, overrides, data, **keyword_overrides)
    tokenizer = load_tokenizer(cfg.model)
    return inspection_report(prepare(cfg.data, tokenizer, cfg.seed), cfg, tokenizer, examples)
