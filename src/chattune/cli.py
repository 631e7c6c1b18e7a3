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


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), >0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chattune",
        description="Fine-tune chat LLMs with LoRA, then talk to the result.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser(
        "train", help="fine-tune a model with LoRA; writes a run dir",
        description="Fine-tune with LoRA. CONFIG is a YAML file; key=value pairs override it "
        "(dotted keys: train.epochs=2 lora.r=16 data.path=my.json). Writes runs/NAME-TIMESTAMP/.",
    )
    train.epilog = config_reference()
    train.formatter_class = argparse.RawDescriptionHelpFormatter
    train.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")

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
    demo.add_argument("config", nargs="?", default="configs/demo.yaml", help="default: configs/demo.yaml")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")

    config = sub.add_parser(
        "config", help="print the fully resolved config (defaults + file + overrides)",
        description="Validate a config and print it fully resolved, as `train` would use it and "
        "save it in the run dir. Unknown keys and bad values are reported with what is allowed.",
        epilog=config_reference(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    config.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
