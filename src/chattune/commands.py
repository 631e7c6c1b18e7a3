"""One entry function per CLI subcommand; user-facing errors become a message and exit code 2."""

from __future__ import annotations

import sys
from argparse import Namespace

from rich.console import Console


def _user_errors() -> tuple[type[BaseException], ...]:
    from chattune.config import ConfigError
    from chattune.data.formats import DataError
    from chattune.data.templates import TemplateError
    from chattune.models import ModelSourceError
    from chattune.rundir import RunDirError

    return (ConfigError, DataError, TemplateError, ModelSourceError, RunDirError, FileExistsError)


def run_command(args: Namespace) -> int:
    import warnings

    # peft asks transformers for a renamed attribute on every load; not actionable for users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    handler = HANDLERS[args.command]
    try:
        return handler(args) or 0
    except _user_errors() as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        return 2


def cmd_config(args: Namespace) -> int:
    from chattune.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def cmd_train(args: Namespace) -> int:
    from chattune.config import load_config
    from chattune.train.trainer import train

    cfg = load_config(args.config, args.overrides)
    train(cfg)
    return 0


def _settings(args: Namespace):
    from chattune.infer.chat import GenerationSettings

    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def cmd_chat(args: Namespace) -> int:
    from chattune.infer.chat import ChatModel, repl
    from chattune.model.load import pick_device

    chat = ChatModel.load(args.target, device=pick_device(args.device))
    if args.system:
        chat.system = args.system
    settings = _settings(args)
    if args.prompt is not None:
        for piece in chat.stream([{"role": "user", "content": args.prompt}], settings):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    repl(chat, settings)
    return 0


def cmd_demo(args: Namespace) -> int:
    from chattune.demo import run_demo

    return run_demo(args.config, args.overrides)


HANDLERS = {"train": cmd_train, "chat": cmd_chat, "demo": cmd_demo, "config": cmd_config}
